"""Imported by the fork server alone (bot.data.workers.start_helpers preloads it there).

The server runs with the stop signals blocked, so that the job's SIGTERM or SIGUSR1 does not
kill it (and with it every loader worker it forked). A forked child inherits that mask; this
unblocks the signals in each child right after the fork, so the server's processes start as
any process does: a loader worker then ignores them by its worker_init_fn, and anyone else's
process from the same server can still be terminated.
"""

import os
import signal

from bot.data.workers import STOP_SIGNALS

os.register_at_fork(after_in_child=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS))
