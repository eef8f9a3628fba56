"""A graceful stop on a scheduler's notice: SIGTERM or SIGUSR1 ends the run after a step, with last.pt.

SLURM sends SIGTERM before it kills a job at its time limit or on preemption (or the signal
chosen with `sbatch --signal`, often SIGUSR1), spot instances give ~30 s after a SIGTERM,
and torchrun passes its own SIGTERM on to its workers. Without a handler Python dies at
once and every step since the last checkpoint is trained again. With it, the run finishes
the step it is in, writes last.pt (rank 0), prints one line, and exits with REQUEUE_STATUS;
running the same command resumes it bit-exactly, like any resume.

Processes must stop at the same step: rank 0 alone writes last.pt, and a process that stops
while another starts the next step would hang it in DDP's all-reduce. They need not all get
the signal (a spot instance's notice reaches one machine), nor at the same moment, so they
agree: after each step every process adds its flag to an all-reduce (a gloo group of its
own, on the CPU, so no GPU stream waits on it), started without waiting and read one step
later, when it is long done. The stop is decided at the same step everywhere: within two
steps of the signal under several processes, after the current step under one.

A second signal changes nothing (the handler only records the first), so the checkpoint
being written is finished, and it is written atomically anyway (bot/checkpoint.py).
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import signal
import threading

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# sysexits.h EX_TEMPFAIL, "a temporary failure; the user is invited to retry": a scheduler's
# requeue test (docs/distributed.md) reads it; 0 stays "finished", 2 "bad input".
REQUEUE_STATUS = 75


class Stopped(Exception):
    """The run stopped on a signal after writing last.pt; the same command resumes it."""

    def __init__(self, signal_name: str, step: int):
        super().__init__(f"stopped by {signal_name} at step {step}; run the same command to resume")
        self.signal_name, self.step = signal_name, step


def worker_init(start_method: str) -> functools.partial:
    """The worker_init_fn for DataLoader workers started with `start_method` ("forkserver").

    SLURM signals every process of a job step, workers too, and a worker that dies of it takes
    the run down with "DataLoader worker exited unexpectedly" before the main process can save;
    so workers ignore stop signals. But at the interpreter's exit multiprocessing terminates
    live workers (persistent ones are alive until then) with SIGTERM and joins them: a worker
    that ignored that one too would hang the exit for ever. So the main process sets an event
    at exit, before multiprocessing's atexit runs, and from then on workers die of the signal."""
    if start_method not in _EXITING:
        _EXITING[start_method] = multiprocessing.get_context(start_method).Event()
        # atexit runs last-registered first: multiprocessing registered its own on import
        atexit.register(_EXITING[start_method].set)
    return functools.partial(ignore_stop_signals, _EXITING[start_method])


_EXITING = {}


def ignore_stop_signals(exiting, _worker_id: int = 0) -> None:
    """Ignore stop signals in this worker until `exiting` is set (see worker_init)."""

    def on_stop(sig, _frame):
        if exiting.is_set():  # the main process is exiting: die of it, as without this init
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)


class StopSignals:
    """Records the first stop signal; `agreed()` after every step says when all processes stop."""

    def __init__(self, world: int):
        self.received = 0  # the signal's number, 0 while none came
        self.previous = {}
        self.group = dist.new_group(backend="gloo") if world > 1 and dist.is_initialized() else None
        self.pending, self.flag = None, torch.zeros(1, dtype=torch.int64)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self.previous = {sig: signal.signal(sig, self._record) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        if self.pending is not None:  # every process started as many all-reduces: this one completes
            self.pending.wait()
            self.pending = None
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _record(self, signum, _frame) -> None:
        self.received = self.received or signum

    def agreed(self) -> str | None:
        """The name of the signal to stop on, the same on every process at the same step, or None."""
        if self.group is None:
            return signal.Signals(self.received).name if self.received else None
        decided = None
        if self.pending is not None:  # the all-reduce started after the previous step
            self.pending.wait()
            decided = int(self.flag.item())
        self.flag = torch.tensor([self.received], dtype=torch.int64)
        self.pending = dist.all_reduce(self.flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return signal.Signals(decided).name if decided else None
