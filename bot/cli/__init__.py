"""The command lines: `python train.py`, `scripts/*.py` and the installed `bot-*` commands
all call the `main(argv) -> exit status` of a module here.

Bad input (bot.errors.UserError) is one line on stderr and exit status 2, whichever
command met it. A run stopped by SIGTERM/SIGUSR1 after saving exits with
bot.train.preempt.REQUEUE_STATUS (75), for a scheduler to requeue.

Each command's module docstring is its --help: the first line says what it does, the rest
(usage examples first) follows the options as written (`command_parser`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from bot.errors import UserError, one_line


def run(body: Callable[[], int | None], interrupted: str = "interrupted") -> int:
    """`body()`'s exit status, with bad input turned into one line and status 2."""
    try:
        return body() or 0
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except RuntimeError as e:  # a UserError raised in a loader worker comes back as RuntimeError
        if "UserError" in str(e):
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
        raise
    except Exception as e:
        # only a training run raises Stopped, and it has imported bot.train.preempt (and torch)
        # already: a command that never trains (--help, --print-config) does not import them here
        preempt = sys.modules.get("bot.train.preempt")
        if preempt is not None and isinstance(e, preempt.Stopped):  # its line is printed (by rank 0), last.pt written
            return preempt.REQUEUE_STATUS
        raise


def command_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose --help shows `doc`'s first line above the options and the rest of `doc`
    (the usage examples and notes) below them, line breaks kept."""
    first, _, rest = doc.strip().partition("\n")
    return argparse.ArgumentParser(description=first.strip(), epilog=rest.strip("\n") or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def checkout_file(name: str):
    """A file of the source checkout this package runs from (train.py beside bot/), or None
    when bot is installed from a wheel."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / name
    return path if path.is_file() else None
