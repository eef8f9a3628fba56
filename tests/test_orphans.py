"""However a trainer dies, no process of its own outlives it: after kill -9 (the OOM killer's,
many schedulers'), its loader workers, the fork server and the resource tracker are gone within
seconds, on both loaders (bot.data.workers.leave_fork_server). Real processes and a real kill."""

import contextlib
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from conftest import ROOT, same_threads

TINY = ["data.image_size=16", "model.width=0.0625", "data.batch_size=16", "data.workers=2", "schedule.epochs=3",
        "schedule.warmup_epochs=0", "run.log_every=1"]


def trained_a_step(folder) -> bool:
    log = folder / "metrics.jsonl"
    return log.exists() and '"loss"' in log.read_text()


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running: a zombie has died, and is_running() compares the start time in
    /proc/PID/stat, so a reused pid is not taken for the process."""
    left = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
    return left


def command(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):  # it may have ended since
        return " ".join(process.cmdline())
    return "(ended)"


def kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def wait_gone(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """Those of `processes` still alive after up to `seconds`."""
    deadline = time.monotonic() + seconds
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(processes)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_kill_9_of_a_trainer_leaves_none_of_its_processes(toy, tmp_path, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    out = tmp_path / "run"
    argv = [sys.executable, "train.py", "recipes/demo.yaml", f"data.root={toy}", f"run.out={out}", *TINY,
            f"data.backend={backend}"]
    # a file, not a pipe: a process left behind would hold a pipe open, and its reader with it
    with open(tmp_path / "stderr", "w") as err:
        trainer = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=same_threads())
    helpers = []
    try:
        deadline = time.monotonic() + 300
        while not trained_a_step(out):  # the train loader's workers are up
            assert trainer.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()[-2000:]
            time.sleep(0.05)
        helpers = psutil.Process(trainer.pid).children(recursive=True)
        commands = {p.pid: command(p)[-80:] for p in helpers}
        if backend == "torch":  # the fork server, the resource tracker and 2 workers
            assert len(helpers) == 4, commands
        # DALI runs threads only (its own, the feeder's): nothing outlives the process, and any
        # process it came to start would be checked here
        trainer.kill()
        trainer.wait()
        left = wait_gone(helpers, 10)
        assert not left, [(p.pid, commands[p.pid]) for p in left]
        if backend == "torch":  # the tracker ended by itself, and unlinked the semaphores of the killed run
            assert "leaked semaphore objects to clean up" in (tmp_path / "stderr").read_text()
    finally:  # what a failing test found alive is not left behind
        if trainer.poll() is None:
            trainer.kill()
        # the resource tracker last: it unlinks the run's semaphores once the others are gone
        tracker = [p for p in alive(helpers) if "resource_tracker" in command(p)]
        kill([p for p in alive(helpers) if p not in tracker])
        kill(wait_gone(tracker, 5))


def test_a_forked_process_dies_with_its_parent_and_at_once_if_the_parent_is_already_gone():
    """bot.data.workers.die_with_parent, which each process the fork server forks calls: the
    parent-death signal, and the case it misses, a parent that ended before the call."""
    script = textwrap.dedent("""
        import os, time
        from bot.data.workers import die_with_parent
        parent = os.getpid()
        child = os.fork()
        if child == 0:
            die_with_parent(parent)
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = []
    try:
        child = [psutil.Process(int(parent.stdout.readline()))]
        assert alive(child)
        parent.kill()
        parent.wait()
        assert not wait_gone(child, 5)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        kill(alive(child))
    gone = subprocess.run([sys.executable, "-c", "from bot.data.workers import die_with_parent; die_with_parent(0)"],
                          cwd=ROOT, capture_output=True, text=True)  # its parent is not pid 0: gone
    assert gone.returncode == -signal.SIGKILL, gone.stderr
