"""Loader workers under a scheduler's stop signal (the run's side: bot/train/preempt.py).

SLURM signals every process of a job step, DataLoader workers too. The main process saves
and stops on SIGTERM or SIGUSR1; its workers must outlive that signal, or the run dies with
"DataLoader worker exited unexpectedly" before it can save. But none of them may outlive the
main process, however it ends (kill -9, the OOM killer): see leave_fork_server.
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

    A fork-server (or spawn) child is prepared from `multiprocessing.spawn.get_preparation_data`,
    which tells it to re-import the parent's __main__ as `__mp_main__`: by path when __main__
    has a `__file__` (`init_main_from_path`, runpy.run_path), by module name when it has a
    `__spec__` (`init_main_from_name`, `python -m`). An unguarded script is then run again in
    every worker, which starts loaders while still bootstrapping and dies ("DataLoader worker
    exited unexpectedly"); a script read from stdin has `__file__ == "<stdin>"`, a file that
    does not exist; a notebook's `%run script.py` puts the script's `__file__` into __main__.
    The workers run only code from bot, torch and torchvision, found by import, and need
    nothing from __main__; so while they start, __main__ is swapped for a bare module, the
    state of `python -c`, which gives no preparation entry. The user's module is not changed,
    only looked up elsewhere for those milliseconds, and the fork server is kept.
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

    SLURM signals every process of a job step, workers too, and a worker that dies of it takes
    the run down with "DataLoader worker exited unexpectedly" before the main process can save;
    so workers ignore stop signals. But at the interpreter's exit multiprocessing terminates
    live workers (persistent ones are alive until then) with SIGTERM and joins them: a worker
    that ignored that one too would hang the exit for ever. So the main process sets an event
    at exit, before multiprocessing's atexit runs, and from then on workers die of the signal."""
    if start_method not in _EXITING:
        start_helpers(start_method)  # before the Event, which registers with the tracker
        _EXITING[start_method] = multiprocessing.get_context(start_method).Event()
        # atexit runs last-registered first: multiprocessing registered its own on import
        atexit.register(_EXITING[start_method].set)
    return functools.partial(start_worker, _EXITING[start_method])


_EXITING = {}


def start_helpers(start_method: str) -> None:
    """Start multiprocessing's helper processes with the stop signals blocked: the resource
    tracker (the fork server's workers register their semaphores with it) and, for
    "forkserver", the fork server. SLURM signals them with the job's process group.
    - The tracker ignores SIGINT and SIGTERM itself but not SIGUSR1: it died, was relaunched by
      the next register, and then printed a KeyError traceback for every semaphore unregistered
      that the new one never saw (33 on the toy run).
    - The fork server dies of both. It is its workers' parent, and torch's DataLoader workers
      quit once their parent changes (their watchdog reads os.getppid()): the next batch failed
      with "DataLoader worker exited unexpectedly" before the run could save.
    A blocked signal stays pending in them, harmlessly. The mask is inherited through exec and
    fork: the fork server preloads bot.data.forked_signals, which unblocks the signals in each
    process it forks, so its workers (and anyone's processes from it) start as any process
    does. This process's mask is restored.

    The server also preloads bot.data.torch_loader (torch, torchvision, PIL), so each worker
    starts with them imported instead of importing them itself, seconds of CPU apiece: on 2
    cores a demo loader with 8 workers took 13.2 s to its first batch and 26 s of the workers'
    CPU without it, 3.5 s and 3.7 s with it. The server imports while this process builds
    the model; it holds no thread but numpy's idle BLAS pool, which is fork-safe."""
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

    The server ends at EOF of its "alive" pipe, whose write end the main process holds and hands
    to each process the server forks. Workers that kept it kept the server alive after a kill -9
    of the main process, while they waited for their parent, the server, to end (torch's
    watchdog), and the resource tracker waited for them all: none of them, all ignoring SIGTERM,
    ever ended. A worker closes its copy: the server ends with the main process, each process it
    forked is killed with it (bot.data.forked_signals), and the tracker, at EOF of its own pipe,
    unlinks the killed run's semaphores and ends."""
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
