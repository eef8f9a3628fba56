"""A scheduler's notice (SIGTERM, SIGUSR1) ends a run after a step with last.pt, and the same
command then ends where an uninterrupted run ends, bit for bit: one process with loader
workers (signalled as SLURM does, the whole process group), and 2 processes under torchrun.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, run_cli
from test_faults import assert_same, cli_args, records, steps_logged, weights

from bot import config
from bot.data.workers import ignore_stop_signals
from bot.files import checkpoint
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


def test_sigterm_to_the_process_group_stops_after_the_step_then_the_same_command_matches(toy, tmp_path):
    extra = ["data.workers=2", "run.max_steps=9"]  # workers: SLURM signals them too; they must not die of it
    whole = run_cli(*cli_args(toy, tmp_path / "whole", *extra))
    assert whole.returncode == 0, whole.stderr
    command = [sys.executable, *map(str, cli_args(toy, tmp_path / "stopped", *extra))]
    status, out, err = signal_when_logged(command, tmp_path / "stopped", 2,
                                          lambda p: os.killpg(p.pid, signal.SIGTERM), start_new_session=True)
    assert status == REQUEUE_STATUS, err[-2000:]
    [(name, step)] = STOPPED.findall(out)
    assert name == "SIGTERM" and 2 <= int(step) < 9
    assert torch.load(tmp_path / "stopped/last.pt", weights_only=False)["step"] == int(step)  # mid epoch 1 or 2
    assert "Traceback" not in err and "exited unexpectedly" not in err

    again = run_cli(*command[1:])
    assert again.returncode == 0, again.stderr
    assert f"resuming at step {step}" in again.stdout
    assert_same(weights(tmp_path / "whole"), weights(tmp_path / "stopped"))
    assert records(tmp_path / "stopped") == records(tmp_path / "whole")


def test_two_processes_stop_at_the_same_step_and_resume_bit_exactly(toy, tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    args = ["data.image_size=32", "data.batch_size=16", "data.workers=0", "model.arch=resnet18", "model.variant=D",
            "schedule.epochs=2", "schedule.warmup_epochs=0", "run.log_every=1", "run.max_steps=6",
            f"data.root={toy}"]  # 96 images over 2 processes: 6 steps per epoch

    def launch(out):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "train.py", "recipes/demo.yaml", f"run.out={out}", *args]

    whole = subprocess.run(launch(tmp_path / "whole"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    # SIGTERM to torchrun, as srun or a spot instance gives it; torchrun passes it on to both workers
    status, out, err = signal_when_logged(launch(tmp_path / "stopped"), tmp_path / "stopped", 2,
                                          lambda p: p.send_signal(signal.SIGTERM), env=env)
    [(name, step)] = STOPPED.findall(out)  # one line: rank 0's
    assert status != 0 and name == "SIGTERM" and int(step) < 6, err[-3000:]
    assert torch.load(tmp_path / "stopped/last.pt", weights_only=False)["step"] == int(step)
    again = subprocess.run(launch(tmp_path / "stopped"), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming at step {step}" in again.stdout
    assert_same(weights(tmp_path / "whole"), weights(tmp_path / "stopped"))


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
        assert stop.agreed() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.agreed() == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN  # stopping: ignored to the process's end
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    with StopSignals(world=1) as stop:
        assert stop.agreed() is None
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # no stop: the handlers are put back



def _worker(exiting, ready):
    ignore_stop_signals(exiting)
    ready.set()
    time.sleep(60)


@pytest.mark.parametrize("main_is_exiting", [False, True])
def test_a_loader_worker_dies_of_a_stop_signal_only_once_its_main_process_exits(main_is_exiting):
    # Before (SLURM signalling the whole job step) it must live on, or the run dies before it
    # saves; after (multiprocessing's terminate() at exit) it must die, or the exit waits for ever.
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    exiting, ready = context.Event(), context.Event()
    worker = context.Process(target=_worker, args=(exiting, ready), daemon=True)
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
