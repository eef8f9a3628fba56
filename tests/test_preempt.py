"""A scheduler's notice (SIGTERM, SIGUSR1) ends a run after a step with last.pt, and so does
kill -9 at the last checkpoint; the same command then ends where an uninterrupted run ends, bit
for bit: one process with loader workers (signalled as SLURM does, the whole process group), on
the folder and on shards with both loaders, and 4 processes under torchrun on shards (SIGTERM).
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from conftest import ROOT, run_here, same_threads
from signal_worker import ignore_then_wait
from test_faults import ARGS, RECIPE, assert_same, cli_args, records, steps_logged, weights

from bot import config
from bot.artifacts import checkpoint
from bot.train.preempt import REQUEUE_STATUS, Stopped, StopSignals
from bot.train.trainer import Run, train

STOPPED = re.compile(r"stopped by (SIG\w+) at step (\d+); run the same command to resume")


def signal_when_logged(command, folder, step, send, **popen):
    """Start `command`, call `send(process)` once `step` is in metrics.jsonl; the finished process."""
    victim = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + 300
    while max(steps_logged(folder), default=0) < step and victim.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    send(victim)
    out, err = victim.communicate(timeout=300)
    return victim.returncode, out, err


# last.pt every 4 steps and at each epoch's end (6 steps); the run ends at step 8
CAPS = ["run.checkpoint_every=4", "run.max_steps=8"]


@pytest.mark.parametrize("root, backend", [("folder", "torch"), ("shards", "dali")])  # shards + torch: 4 processes below
def test_sigterm_then_kill_9_mid_epoch_then_the_same_command_matches_an_uninterrupted_run(
        toy, toy_shards, trained, tmp_path, root, backend):
    """One run stopped twice, each time resumed by the same command: SIGTERM to the process group
    (as SLURM sends it), then kill -9 mid-epoch; it ends as an uninterrupted run ends, weights and
    log. Shards in the folder's order give the folder's batches (tests/test_shards.py), so the
    folder's uninterrupted run is the reference. (Loader workers under the group's signal, which
    must not die of it: tests/test_run_folder.py and the last test here; each worker process
    imports torch, seconds apiece.)"""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    whole = trained(RECIPE, f"data.root={toy}", *ARGS, *CAPS, f"data.backend={backend}")  # in this process
    out = tmp_path / "run"
    command = [sys.executable, *map(str, cli_args(toy if root == "folder" else toy_shards, out, *CAPS,
                                                   f"data.backend={backend}"))]
    group = {"start_new_session": True, "env": same_threads()}

    status, stdout, err = signal_when_logged(command, out, 2, lambda p: os.killpg(p.pid, signal.SIGTERM), **group)
    assert status == REQUEUE_STATUS, err[-2000:]
    [(name, step)] = STOPPED.findall(stdout)
    stopped = int(step)
    assert name == "SIGTERM" and 2 <= stopped <= 4
    assert torch.load(out / "last.pt", weights_only=False)["step"] == stopped  # mid epoch 0
    assert "Traceback" not in err and "exited unexpectedly" not in err

    status, stdout, err = signal_when_logged(command, out, 5, lambda p: os.killpg(p.pid, signal.SIGKILL), **group)
    assert status == -signal.SIGKILL, err[-2000:]
    assert f"resuming at step {stopped}" in stdout
    saved = torch.load(out / "last.pt", weights_only=False)["step"]
    assert saved in (4, 6)  # killed in step 6 or so: last.pt at step 4 (6 only if the kill came late)

    again = run_here(*command[1:])
    assert again.returncode == 0, again.stderr
    assert f"resuming at step {saved}" in again.stdout
    assert_same(weights(whole), weights(out))
    # the steps trained again after each stop replaced their lines: the log reads as one run's
    assert records(out) == records(whole)


def kill_9_all(launcher):
    """kill -9 a launcher and every process under it at once, as when a machine is lost (torchrun's
    workers run in sessions of their own: a process group's kill misses them)."""
    with contextlib.suppress(psutil.NoSuchProcess):  # it has exited
        top = psutil.Process(launcher.pid)
        for process in [top, *top.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def test_four_processes_stop_together_and_resume_bit_exactly_after_sigterm(toy, toy_shards, tmp_path):
    """torchrun, 4 processes: SIGTERM to torchrun (as srun or a spot instance gives it; torchrun
    passes it on to the workers), then the same command; the run on shards ends as the
    uninterrupted run on the folder. Four, not two: two gradients add alike in any order, four
    do not, so a launch that summed its first step in another order than the uninterrupted run
    (DDP's bucket rebuild, engine.make_accelerator) shows in the weights. (kill -9 and resume:
    the one-process test above, on both loaders.)"""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    args = ["data.image_size=32", "data.batch_size=16", "data.workers=0", "model.arch=resnet18", "model.variant=D",
            "schedule.epochs=2", "schedule.warmup_epochs=0", "run.log_every=1", "run.checkpoint_every=5",
            "run.max_steps=8"]  # 96 images over 4 processes: 6 steps per epoch

    def launch(root, out):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
                "train.py", "recipes/demo.yaml", f"data.root={root}", f"run.out={out}", *args]

    # the uninterrupted run goes on beside the stopped one: launches mostly import
    with open(tmp_path / "whole.err", "w") as log:
        whole = subprocess.Popen(launch(toy, tmp_path / "whole"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                 stderr=log)
    try:
        out = tmp_path / "stopped"
        status, stdout, err = signal_when_logged(launch(toy_shards, out), out, 2,
                                                 lambda p: p.send_signal(signal.SIGTERM), env=env)
        [(name, step)] = STOPPED.findall(stdout)  # one line: rank 0's
        stopped = int(step)
        assert status != 0 and name == "SIGTERM" and stopped <= 5, err[-3000:]
        assert torch.load(out / "last.pt", weights_only=False)["step"] == stopped

        again = subprocess.run(launch(toy_shards, out), cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"resuming at step {stopped}" in again.stdout
        assert whole.wait(timeout=300) == 0, (tmp_path / "whole.err").read_text()[-3000:]
    finally:
        if whole.poll() is None:  # the test failed before its end (a reaped pid could be another's by now)
            kill_9_all(whole)
    assert_same(weights(tmp_path / "whole"), weights(out))
    assert records(out) == records(tmp_path / "whole")


def test_a_second_signal_during_the_save_changes_nothing(toy, tmp_path, monkeypatch):
    real_save, real_after_step = checkpoint.save_last, Run.after_step

    def save_with_a_second_notice(state, folder, **kw):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while last.pt is written
        real_save(state, folder, **kw)

    def after_step(self, loss):
        real_after_step(self, loss)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(checkpoint, "save_last", save_with_a_second_notice)
    monkeypatch.setattr(Run, "after_step", after_step)
    cfg = config.load("recipes/demo.yaml", [f"data.root={toy}", f"run.out={tmp_path}", "data.image_size=32",
                                            "data.batch_size=16", "data.workers=0", "schedule.epochs=1",
                                            "schedule.warmup_epochs=0"])
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stopped:
        train(cfg)
    assert (stopped.value.signal_name, stopped.value.step) == ("SIGUSR1", 2)
    assert checkpoint.load_last(tmp_path)["step"] == 2
    # once stopping, the stop signals stay ignored to the process's end (a late one must not turn 75 into -15)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, before)  # this test process goes on


def test_one_process_stops_on_the_first_signal_only():
    with StopSignals(world=1) as stop:
        assert stop.decide() == (None, False)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.decide(save_due=True) == ("SIGUSR1", True)
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN  # stopping: ignored to the process's end
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    with StopSignals(world=1) as stop:
        assert stop.decide().stop is None
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # no stop: the handlers are put back



@pytest.mark.parametrize("main_is_exiting", [False, True])
def test_a_loader_worker_dies_of_a_stop_signal_only_once_its_main_process_exits(main_is_exiting):
    # Before (SLURM signalling the whole job step) it must live on, or the run dies before it
    # saves; after (multiprocessing's terminate() at exit) it must die, or the exit waits for ever.
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    exiting, ready = context.Event(), context.Event()
    worker = context.Process(target=ignore_then_wait, args=(exiting, ready), daemon=True)
    worker.start()
    try:
        assert ready.wait(60)
        if main_is_exiting:
            exiting.set()
        os.kill(worker.pid, signal.SIGUSR1)
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(5)
        assert worker.exitcode == (-signal.SIGUSR1 if main_is_exiting else None)
    finally:
        worker.kill()
