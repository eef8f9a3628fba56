"""A loader worker's stand-in for tests/test_preempt.py, in a module of its own: a spawned process
imports the module of its target, and test_preempt's would cost it the trainer's imports (seconds);
this one costs bot.data's."""

import time

from bot.data.workers import ignore_stop_signals


def ignore_then_wait(exiting, ready):
    ignore_stop_signals(exiting)
    ready.set()
    # Short sleeps, as a DataLoader worker polls its queue: a signal that the kernel hands to
    # another thread (numpy's BLAS threads, without OMP_NUM_THREADS=1) runs its Python handler only
    # when the main thread next runs Python, which one sleep(60) would put off for a minute.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
