"""How far a long command has got: a bar on a terminal, a line every so often elsewhere.

On a terminal tqdm draws its bar on stderr. Off one (a pipe, a SLURM log, a CI job) a bar
would be nothing or a smear of carriage returns, so a plain line is printed instead each
time another tenth of the work is done, or EVERY_S seconds have passed since the last one:
`predict: 250/500 img (50%), 31.2 img/s`. Used by predict, evaluate, make_shards and
prepare_cifar; the trainer prints its own lines (bot/train/runlog.py).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

EVERY_S = 30.0  # the longest silence off a terminal


class Progress:
    def __init__(self, total: int | None, desc: str, unit: str, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.terminal = enabled and self.stream.isatty()
        self.quiet = not enabled
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=self.stream,
                        disable=not self.terminal, dynamic_ncols=True)
        self.start = self.last_time = time.perf_counter()
        self.last_tenth = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.terminal:
            self.bar.update(n)
        elif not self.quiet and self._due():
            self._line()

    def _due(self) -> bool:
        tenth = 10 * self.done // self.total if self.total else 0
        if tenth > self.last_tenth or time.perf_counter() - self.last_time >= EVERY_S:
            self.last_tenth = tenth
            return True
        return False

    def _line(self) -> None:
        now = time.perf_counter()
        self.last_time = now
        of = f"/{self.total}" if self.total else ""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        rate = self.done / max(now - self.start, 1e-9)
        print(f"{self.desc}: {self.done}{of} {self.unit}{share}, {rate:.1f} {self.unit}/s", file=self.stream,
              flush=True)

    def write(self, text: str) -> None:
        """A message (a skipped file) that does not tear the bar."""
        if self.terminal:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
