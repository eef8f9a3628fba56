"""Loader workers under a scheduler's stop signal (the run's side: bot/train/preempt.py).

SLURM signals every process of a job step, DataLoader workers too. The main process saves
and stops on SIGTERM or SIGUSR1; its workers must outlive that signal, or the run dies with
"DataLoader worker exited unexpectedly" before it can save.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def worker_init(start_method: str) -> functools.partial:
    """The worker_init_fn for DataLoader workers started with `start_method` ("forkserver").

    SLURM signals every process of a job step, workers too, and a worker that dies of it takes
    the run down with "DataLoader worker exited unexpectedly" before the main process can save;
    so workers ignore stop signals. But at the interpreter's exit multiprocessing terminates
    live workers (persistent ones are alive until then) with SIGTERM and joins them: a worker
    that ignored that one too would hang the exit for ever. So the main process sets an event
    at exit, before multiprocessing's atexit runs, and from then on workers die of the signal."""
    if start_method not in _EXITING:
        start_resource_tracker()  # before the Event, which registers with it
        _EXITING[start_method] = multiprocessing.get_context(start_method).Event()
        # atexit runs last-registered first: multiprocessing registered its own on import
        atexit.register(_EXITING[start_method].set)
    return functools.partial(ignore_stop_signals, _EXITING[start_method])


_EXITING = {}


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (the fork server's workers register their
    semaphores with it) with the stop signals blocked. It ignores SIGINT and SIGTERM itself
    but not SIGUSR1: signalled with the job's process group, it died, was relaunched by the
    next register, and then printed a KeyError traceback for every semaphore unregistered
    that the new one never saw (33 on the toy run). A blocked signal stays pending in it,
    harmlessly; the mask is inherited through fork and exec, and this process's is restored."""
    from multiprocessing import resource_tracker

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(exiting, _worker_id: int = 0) -> None:
    """Ignore stop signals in this worker until `exiting` is set (see worker_init)."""

    def on_stop(sig, _frame):
        if exiting.is_set():  # the main process is exiting: die of it, as without this init
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)
