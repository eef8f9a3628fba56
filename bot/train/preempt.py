"""A graceful stop on a scheduler's notice: SIGTERM or SIGUSR1 ends the run after a step, with last.pt.

Every process stops at the same step, agreed through an all-reduce read one step late, since
rank 0 alone saves and a process missing from the next step would hang DDP; once a stop is
under way the signals stay ignored, so the exit status stays REQUEUE_STATUS. Why each piece
is there: docs/reliability.md, "Preemption".
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from typing import NamedTuple

import torch
import torch.distributed as dist

from bot.data.workers import STOP_SIGNALS  # loader workers ignore them: bot/data/workers.py

# sysexits.h EX_TEMPFAIL, "a temporary failure; the user is invited to retry": a scheduler's
# requeue test (docs/distributed.md) reads it; 0 stays "finished", 2 "bad input".
REQUEUE_STATUS = 75


def under_single_process_launcher() -> bool:
    """`accelerate launch` with one process: its simple launcher sets ACCELERATE_USE_CPU, and
    no torchrun variables (torchrun passes SIGTERM on to its workers itself)."""
    return "ACCELERATE_USE_CPU" in os.environ and "LOCAL_RANK" not in os.environ


def stop_when_parent_dies() -> None:
    """SIGTERM to this process when its parent (the launcher) dies: prctl(PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the request: the notice is already due
        os.kill(os.getpid(), signal.SIGTERM)


class Stopped(Exception):
    """The run stopped on a signal after writing last.pt; the same command resumes it."""

    def __init__(self, signal_name: str, step: int):
        super().__init__(f"stopped by {signal_name} at step {step}; run the same command to resume")
        self.signal_name, self.step = signal_name, step


class Decision(NamedTuple):
    """What every process does after a step, agreed: stop on a signal (its name), save last.pt."""
    stop: str | None
    save: bool


class StopSignals:
    """Records the first stop signal; `decide()` after every step says, the same on every process,
    when all of them stop, and when a checkpoint that one process's clock says is due is written."""

    def __init__(self, world: int):
        self.received = 0  # the signal's number, 0 while none came
        self.previous = {}
        self.group = dist.new_group(backend="gloo") if world > 1 and dist.is_initialized() else None
        self.pending, self.flags = None, torch.zeros(2, dtype=torch.int64)
        self.stopping = False  # a stop was decided here: the process is on its way out

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self.previous = {sig: signal.signal(sig, self._record) for sig in STOP_SIGNALS}
            if under_single_process_launcher():
                stop_when_parent_dies()
        return self

    def __exit__(self, *exc) -> None:
        if self.pending is not None:  # every process started as many all-reduces: this one completes
            self.pending.wait()
            self.pending = None
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_IGN if self.stopping or self.received else handler)
        self.previous = {}

    def _record(self, signum, _frame) -> None:
        self.received = self.received or signum

    def decide(self, save_due: bool = False) -> Decision:
        """This step's decision, given whether this process thinks a checkpoint is due. Under
        several processes both flags travel in one all-reduce (MAX), started now and read after
        the next step, so no step waits on it; a saving process also waits in collectives (the
        finite check, the weight average), so all must save at the same step or none."""
        if self.group is None:
            self.stopping = bool(self.received)
            return Decision(signal.Signals(self.received).name if self.received else None, save_due)
        stop = save = 0
        if self.pending is not None:  # the all-reduce started after the previous step
            self.pending.wait()
            stop, save = (int(v) for v in self.flags)
        self.flags = torch.tensor([self.received, int(save_due)], dtype=torch.int64)
        self.pending = dist.all_reduce(self.flags, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        self.stopping = bool(stop)
        return Decision(signal.Signals(stop).name if stop else None, bool(save))
