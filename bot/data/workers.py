"""Loader workers that outlive a scheduler's stop signal but never the main process.

The run's side of the signal is bot/train/preempt.py; why each step is needed:
docs/reliability.md, "Loader workers: signals, exit and start".
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import types
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@contextmanager
def workers_without_main():
    """Start workers that do not re-run the user's __main__, whatever it is.

    A fork-server or spawn child re-imports the parent's __main__, which breaks an unguarded
    script, stdin and a notebook's `%run`; the workers need nothing from it, so while they
    start __main__ is a bare module, as under `python -c`. The user's module is not changed.
    """
    modules = sys.modules
    user_main = modules["__main__"]
    modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        modules["__main__"] = user_main


def worker_init(start_method: str) -> functools.partial:
    """The worker_init_fn for DataLoader workers started with `start_method` ("forkserver").

    Workers ignore the stop signals, so that the main process can save; at exit,
    multiprocessing terminates them with SIGTERM, so an event set at exit lets them die of it."""
    if start_method not in _EXITING:
        start_helpers(start_method)  # before the Event, which registers with the tracker
        _EXITING[start_method] = multiprocessing.get_context(start_method).Event()
        # atexit runs last-registered first: multiprocessing registered its own on import
        atexit.register(_EXITING[start_method].set)
    return functools.partial(start_worker, _EXITING[start_method])


_EXITING = {}


def start_helpers(start_method: str) -> None:
    """Start multiprocessing's resource tracker and, for "forkserver", the fork server with
    the stop signals blocked, as SLURM signals them with the job; this process's mask is restored.

    The server preloads bot.data.forked_signals, which unblocks the signals in each process it
    forks, and bot.data.torch_loader, so that workers start with torch imported."""
    from multiprocessing import forkserver, resource_tracker

    with stop_signals_blocked():  # one block each: the tracker's start unblocks SIGTERM on its way out
        resource_tracker.ensure_running()
    if start_method == "forkserver":
        preload = getattr(forkserver._forkserver, "_preload_modules", ["__main__"])  # a preload set before stays
        forkserver.set_forkserver_preload([*preload, "bot.data.forked_signals", "bot.data.torch_loader"])
        with stop_signals_blocked(), workers_without_main():  # the server would import the user's __main__ too
            forkserver.ensure_running()


@contextmanager
def stop_signals_blocked():
    """The stop signals blocked in this thread for the block; the mask before is restored."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_worker(exiting, _worker_id: int = 0) -> None:
    """A loader worker's first act (its worker_init_fn): see ignore_stop_signals, leave_fork_server."""
    ignore_stop_signals(exiting)
    leave_fork_server()


def leave_fork_server() -> None:
    """Let the fork server end with the main process, and so this worker with the server.

    The server ends at EOF of its "alive" pipe, which each process it forks inherits; a
    worker that kept its copy would keep the server, and itself, alive after a kill -9."""
    from multiprocessing import forkserver

    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if forkserver.get_inherited_fds() is not None and fd is not None:  # forked by a server
        os.close(fd)
        server._forkserver_alive_fd = None  # a server started from here would be a new one


PR_SET_PDEATHSIG = 1  # linux/prctl.h
PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None  # looked up once, not per child


def die_with_parent(parent: int) -> None:
    """SIGKILL this process as soon as `parent`, the single-threaded process that forked it, ends
    (Linux's parent-death signal; elsewhere nothing), or now if it already has: the signal comes
    only for a parent that ends after the prctl."""
    if PRCTL is None:
        return
    PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # adopted by init or a subreaper: the parent is gone
        os.kill(os.getpid(), signal.SIGKILL)


def ignore_stop_signals(exiting, _worker_id: int = 0) -> None:
    """Ignore stop signals in this worker until `exiting` is set (see worker_init)."""

    def on_stop(sig, _frame):
        if exiting.is_set():  # the main process is exiting: die of it, as without this init
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)
    # as bot.data.forked_signals does in a fork server that preloaded it (one started elsewhere did not)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
