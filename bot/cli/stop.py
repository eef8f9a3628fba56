"""evaluate and predict stopped by a signal: one line, and no partial output.

SIGTERM (kill, a scheduler's time limit, torchrun) and SIGUSR1 (`sbatch --signal`) end a
Python process at once and in silence. These commands have nothing to save, so the signal
ends the work where it is: the output not yet renamed into place is removed
(bot/artifacts/outputs.py `written_aside`), one line says what happened, and the exit status
is 128 + the signal's number, what a shell reports for a process the signal killed.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from bot.cli import run
from bot.data.workers import STOP_SIGNALS  # the loader's workers ignore them: the main process decides


class Stopped(BaseException):
    """A stop signal arrived. A BaseException, as KeyboardInterrupt: no `except Exception` on
    the way (a skipped image, a probe) takes it for an error of its own."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum, _frame) -> None:
    for sig in STOP_SIGNALS:  # a second signal must not interrupt the cleanup on the way out
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


def run_stoppable(command: str, body: Callable[[], int | None], written: list[Path]) -> int:
    """bot.cli.run(body), ended by a stop signal with one line on stderr: "nothing written", or
    the outputs `body` had put in `written` when the signal came."""
    if threading.current_thread() is not threading.main_thread():  # Python allows handlers only there
        return run(body)
    previous = {sig: signal.signal(sig, _raise) for sig in STOP_SIGNALS}
    try:
        return run(body)
    except Stopped as e:
        done = f"{', '.join(map(str, written))} written" if written else "nothing written"
        print(f"{command}: stopped by {e}; {done}", file=sys.stderr)
        return 128 + e.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
