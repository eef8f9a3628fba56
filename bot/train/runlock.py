"""One training process per run folder: rank 0 holds a lock on RUN/.lock for the run's life.

Two trainers on one run.out (an overlapping requeue, a command started twice) would write
the same last.pt and interleave metrics.jsonl. The lock is flock(2) on an open file: the
kernel drops it when its process ends, however it ends (kill -9 included), so a crashed
run never blocks the next start, and there is no stale lock file to delete. The holder's
host, pid and start time are written into the file for the refusal's message.

On NFS flock works through the lock manager (NFSv4, or v3 with lockd); on Lustre only
when the client mounts with `-o flock`, else flock fails with ENOSYS/EOPNOTSUPP and the
run stops with one line saying so (docs/reliability.md).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from bot.errors import UserError
from bot.artifacts import checkpoint

NAME = ".lock"


class RunLock:
    def __init__(self, folder: Path):
        self.path, self.file = Path(folder) / NAME, None

    def acquire(self) -> None:
        """Hold the lock, or UserError naming the process that holds it."""
        try:
            f = open(self.path, "a+")
        except OSError as e:  # a read-only or full run folder: the user's to fix, in one line
            if e.errno in checkpoint.UNWRITABLE:
                raise checkpoint.unwritable(e, self.path.parent) from None
            raise
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"run.out {self.path.parent} is in use by another training process "
                                f"({holder or 'holder unknown'}); wait for it to end or use another run.out") from None
            raise UserError(f"cannot lock run.out {self.path.parent} ({os.strerror(e.errno)}): on NFS flock needs "
                            f"the lock manager, on Lustre the mount option -o flock") from None
        f.seek(0)
        f.truncate()
        f.write(f"host {socket.gethostname()} pid {os.getpid()} started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        f.flush()
        self.file = f

    def release(self) -> None:
        if self.file is not None:  # the file stays: removing it would race with the next start
            self.file.close()
            self.file = None
