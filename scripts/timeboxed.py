"""What lets a GPU check fit a short window and keep what it measured (scripts/bench_gpu.py):

- `time_box`: a part that outlives its seconds is cut (SIGALRM; a child process it waits
  on is killed with it, as subprocess.run kills on any exception);
- `Figures`: every row is written as soon as it is measured, to one JSON file and a Markdown
  table beside it, both rewritten whole each time, so a run cut anywhere leaves both readable;
- `cuda_test_rows`: the tests marked `cuda`, run by pytest in a child process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class OutOfTime(Exception):
    pass


@contextmanager
def time_box(seconds: float):
    def cut(signum, frame):
        raise OutOfTime
    previous = signal.signal(signal.SIGALRM, cut)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Figures:
    """The rows of one check in `path` (JSON) and `path`.md (a table), written after every row."""

    def __init__(self, path: Path, meta: dict, render):
        self.path, self.meta, self.render, self.rows = path, meta, render, []
        path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        for path, text in ((self.path, json.dumps(self.meta | {"rows": self.rows}, indent=1) + "\n"),
                           (self.path.with_suffix(".md"), self.render(self.rows) + "\n")):
            partial = path.with_name(path.name + ".partial")
            partial.write_text(text)
            os.replace(partial, path)  # never a half-written file, whenever the run is cut


def cuda_test_files() -> list[str]:
    """The test files that carry the `cuda` marker: given by name, so a module that cannot be
    collected on the GPU machine (a package it lacks) cannot stop them from running."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if "pytest.mark.cuda" in p.read_text())


def cuda_test_rows(log: Path):
    """One row: pytest -m cuda's summary line and counts; its whole output in `log`, written as it
    comes (-v: each test's name as it starts), so a part cut by its time box still shows each
    result and the test it was cut in."""
    files = cuda_test_files()
    command = [sys.executable, "-m", "pytest", "-v", "-m", "cuda", "-rs", "-p", "no:cacheprovider", *files]
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    last = (log.read_text().strip().splitlines() or ["no output"])[-1].strip("= ")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}
    yield {"part": "tests", "what": "pytest -m cuda " + " ".join(files), "img_per_s": None, "note": last,
           "returncode": done.returncode, **counts}
