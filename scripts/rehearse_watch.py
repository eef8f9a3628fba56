"""The rehearsal's watch on a launch (scripts/rehearse.py): each process's role, descriptors and
memory, looked at every second, the peak of each kept per role."""

from __future__ import annotations

import contextlib
import os
import threading

import psutil


def role(p: psutil.Process, parents: dict[int, str]) -> str:
    """What a process of a launch is, from its command line and its parent's role."""
    cmd = " ".join(p.cmdline())
    parent = parents.get(p.ppid(), "")
    if parent == "fork server":  # forked without exec: it still has the server's command line
        return "loader worker"
    if "multiprocessing.forkserver" in cmd:
        return "fork server"
    if "multiprocessing.resource_tracker" in cmd:
        return "resource tracker"
    if "torch.distributed.run" in cmd:
        return "torchrun"
    if "train.py" in cmd or "evaluate.py" in cmd:
        return "trainer"
    return "other"


def descriptors(pid: int) -> tuple[int, int, int]:
    """(open file descriptors, those on a train shard, those on a val shard) of a process."""
    fd_dir = f"/proc/{pid}/fd"
    names = os.listdir(fd_dir)
    train = val = 0
    for name in names:
        with contextlib.suppress(OSError):
            target = os.readlink(f"{fd_dir}/{name}")
            if target.endswith(".tar"):
                train += "-train-" in target
                val += "-train-" not in target
    return len(names), train, val


def shared_memory(pid: int) -> tuple[int, int]:
    """(PSS, USS) of a process in bytes, from /proc/PID/smaps_rollup: about 10 ms of the kernel's
    time for a process that imported torch, so it is read less often than the rest."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Pss", "Private_Clean", "Private_Dirty"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["Pss"], fields["Private_Clean"] + fields["Private_Dirty"]


class Monitor(threading.Thread):
    """Every `interval` seconds each process under the launch: its role, descriptors and RSS, and
    every `full`-th time its PSS and USS; the peak of each per role (the largest process of the
    role), the largest sum of PSS over all processes, and the least available memory."""

    FIELDS = ("fds", "train_tars", "val_tars", "rss", "pss", "uss")

    def __init__(self, pid: int, interval: float = 1.0, full: int = 5):
        super().__init__(daemon=True)
        self.pid, self.interval, self.full, self.done = pid, interval, full, threading.Event()
        self.peaks: dict[str, dict] = {}
        self.least_available = psutil.virtual_memory().available
        self.peak_total_pss = 0

    def run(self) -> None:
        looks = 0
        while not self.done.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                self.sample(full=looks % self.full == 1)  # the first look is at second 1, mostly imports
            looks += 1

    def sample(self, full: bool) -> None:
        top = psutil.Process(self.pid)
        roles, counts, total = {}, {}, 0
        for p in [top, *top.children(recursive=True)]:  # parents before their children
            with contextlib.suppress(psutil.Error, OSError):
                r = roles[p.pid] = role(p, roles)
                values = dict(zip(self.FIELDS, (*descriptors(p.pid), p.memory_info().rss)))
                if full:
                    values["pss"], values["uss"] = shared_memory(p.pid)
                    total += values["pss"]
                peak = self.peaks.setdefault(r, dict.fromkeys(self.FIELDS, 0) | {"processes": 0})
                for field, value in values.items():
                    peak[field] = max(peak[field], value)
                counts[r] = counts.get(r, 0) + 1
        for r, n in counts.items():
            self.peaks[r]["processes"] = max(self.peaks[r]["processes"], n)
        self.peak_total_pss = max(self.peak_total_pss, total)
        self.least_available = min(self.least_available, psutil.virtual_memory().available)

    def stop(self) -> None:
        self.done.set()
        self.join()


def merge(peaks: dict, more: dict) -> None:
    for r, values in more.items():
        mine = peaks.setdefault(r, dict(values))
        for k, v in values.items():
            mine[k] = max(mine[k], v)
