"""The rehearsal's launches (scripts/rehearse.py): the project's own commands run under a
descriptor limit, watched by rehearse_watch.Monitor, stopped by SIGTERM at a given step, and read
back from their metrics.jsonl."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from rehearse_shards import say
from rehearse_watch import Monitor


def records(folder: Path) -> list[dict]:
    """metrics.jsonl's complete lines without the timing, which differs between runs."""
    path = folder / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [{k: v for k, v in json.loads(line).items() if k != "img_per_s"} for line in lines]


def last_step(folder: Path) -> int:
    return max((r["step"] for r in records(folder) if "loss" in r), default=0)


def limited(nofile: int):
    def set_limit():  # in the child, before exec: inherited by every process it starts
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))
    return set_limit


def kill_tree(pid: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        top = psutil.Process(pid)
        for p in [top, *top.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def reason(err: str) -> str:
    """One line for a failed command: EMFILE where it was that, else its last error line."""
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    for line in lines:
        if "Too many open files" in line or "EMFILE" in line:
            return "EMFILE: " + line[-120:]
    for line in reversed(lines):
        if line.startswith("error:") or re.match(r"^\w+(Error|Exception)\b", line):
            return line[:160]
    return lines[-1][:160] if lines else "no output"


class Launcher:
    def __init__(self, a, clock: float):
        self.a, self.clock = a, clock
        self.logs = a.out / "runs" / "logs"
        self.env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def torchrun(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(self.a.processes), *args]

    def run(self, name: str, command: list[str], folder: Path | None = None, stop_at: int | None = None,
            total: int | None = None, timeout: float = 3600) -> dict:
        """Run `command` in the repository; SIGTERM to it once `folder` logs step `stop_at`.
        Returns rc, stdout, stderr, wall and first-step seconds, and the monitor's peaks."""
        self.logs.mkdir(parents=True, exist_ok=True)
        out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
        start = time.monotonic()
        with open(out, "w") as o, open(err, "w") as e:
            proc = subprocess.Popen(command, cwd=self.a.repo, env=self.env, stdout=o, stderr=e,
                                    preexec_fn=limited(self.a.nofile))
        monitor = Monitor(proc.pid, self.a.interval)
        monitor.start()
        before = last_step(folder) if folder is not None else 0  # a resumed run's log has earlier steps
        first = signalled = None
        shown = start
        try:
            while proc.poll() is None and time.monotonic() - start < timeout:
                time.sleep(0.1)
                now = time.monotonic()
                if folder is not None and (first is None or (stop_at and not signalled) or now - shown > 30):
                    step = last_step(folder)
                    if step > before and first is None:
                        first = now - start
                    if stop_at and step >= stop_at and not signalled:
                        proc.send_signal(signal.SIGTERM)  # to torchrun, which passes it on, as srun gives it
                        signalled = step
                    if total and now - shown > 30:
                        say(self.clock, f"{name}: step {step}/{total}")
                        shown = now
        finally:
            monitor.stop()
            if proc.poll() is None:  # timed out, or this script was interrupted
                kill_tree(proc.pid)
                proc.wait()
        wall = time.monotonic() - start
        stderr = err.read_text() + (f"\nerror: no end after {timeout:.0f} s: killed\n" if wall >= timeout else "")
        result = {"rc": proc.returncode, "stdout": out.read_text(), "stderr": stderr, "wall": wall,
                  "first_step": first, "peaks": monitor.peaks, "least_available": monitor.least_available,
                  "peak_total_pss": monitor.peak_total_pss}
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        say(self.clock, f"{name}: {status} in {wall:.0f} s" + (f", first step after {first:.0f} s" if first else ""))
        return result
