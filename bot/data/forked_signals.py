"""Imported by the fork server alone (bot.data.workers.start_helpers preloads it there).

The server runs with the stop signals blocked, so that the job's SIGTERM or SIGUSR1 does not
kill it (and with it every loader worker it forked). A forked child inherits that mask; this
unblocks the signals in each child right after the fork, so the server's processes start as
any process does: a loader worker then ignores them by its worker_init_fn, and anyone else's
process from the same server can still be terminated.

Each child also dies with the server (bot.data.workers.die_with_parent), which ends with the
main process (bot.data.workers.leave_fork_server): no loader worker outlives a killed run.
"""

import os
import signal

from bot.data.workers import STOP_SIGNALS, die_with_parent

SERVER = os.getpid()
forking = SERVER  # the process forking now: the server, or one of its children (whose children are theirs)


def before_fork() -> None:
    global forking
    forking = os.getpid()


def after_fork_in_child() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if forking == SERVER:
        die_with_parent(SERVER)


os.register_at_fork(before=before_fork, after_in_child=after_fork_in_child)
