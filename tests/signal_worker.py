"""A loader worker's stand-in for tests/test_preempt.py, in a module of its own: a spawned process
imports the module of its target, and test_preempt's would cost it the trainer's imports (seconds);
this one costs bot.data's."""

import time

from bot.data.workers import ignore_stop_signals


def ignore_then_wait(exiting, ready):
    ignore_stop_signals(exiting)
    ready.set()
    time.sleep(60)
