"""A run folder under faults: one trainer at a time, no stuck folder, nothing saved past a
divergence, one readable checkpoint more than the damaged one, one run's log after a kill.

Real processes and signals where the fault is a process's (a lock holder killed with -9, a
kill -9 after the epoch's evaluation, a late SIGTERM); tiny runs (16 px, width 1/16).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from conftest import ROOT, tmpfs

from bot.cli import train as train_cli
from bot.artifacts import checkpoint

FIXTURE = ROOT / "tests/fixtures/last-numpy-rng.pt"  # the trainer's last.pt at step 2, args below
TINY = ["data.image_size=16", "model.width=0.0625", "data.batch_size=8", "data.workers=0", "schedule.epochs=1",
        "schedule.warmup_epochs=0"]
QUICK = ["data.image_size=16", "model.width=0.0625", "data.batch_size=16", "data.workers=0", "schedule.epochs=2",
         "schedule.warmup_epochs=0", "run.log_every=1"]  # 96 toy images: 6 steps per epoch


def argv(toy, out, *extra, args=QUICK):
    return ["recipes/demo.yaml", f"data.root={toy}", f"run.out={out}", *args, *extra]


def one_error(capsys):
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error")]
    assert len(err) == 1, err
    return err[0]


def step_of(path):
    return checkpoint.load(path)["step"]


def wrapped(code: str, args: list[str]) -> subprocess.CompletedProcess:
    """train.py's main in a real process after `code` (which patches a function to inject a fault)."""
    script = "import os, signal, sys, time\n" + textwrap.dedent(code) + \
        "\nfrom bot.cli.train import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_a_second_trainer_on_the_folder_is_refused_and_a_killed_holder_blocks_nothing(toy, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from bot.train.runlock import RunLock; "
                               f"lock = RunLock({str(out)!r}); lock.acquire(); print('held', flush=True); time.sleep(120)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert train_cli.main(argv(toy, out, "run.max_steps=1")) == 2
        line = one_error(capsys)
        assert "in use by another training process" in line and f"pid {holder.pid} started" in line
        assert not (out / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # the holder dies without releasing anything
        holder.wait()
    assert train_cli.main(argv(toy, out, "run.max_steps=1")) == 0
    assert step_of(out / "last.pt") == 1


def test_an_unreadable_summary_is_written_again_not_a_stuck_folder(toy, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(argv(toy, out, "run.max_steps=1")) == 0
    summary = json.loads((out / "summary.json").read_text())
    for damaged in ("", '{"top1": 3'):  # a disk that filled during the write; a torn edit
        (out / "summary.json").write_text(damaged)
        assert train_cli.main(argv(toy, out, "run.max_steps=1")) == 0
        assert "summary.json is unreadable" in capsys.readouterr().err
        assert json.loads((out / "summary.json").read_text()) == summary
    assert train_cli.main(argv(toy, out, "run.max_steps=1")) == 0
    assert "already finished" in capsys.readouterr().out
    assert not list(out.glob("*.tmp"))


def test_a_diverging_run_saves_nothing_from_its_first_diverged_step(toy, tmp_path, capsys):
    """optim.lr=100: the loss climbs for a few steps (finite), then far above 10x the first."""
    out = tmp_path / "run"
    assert train_cli.main(argv(toy, out, "optim.lr=100", "run.checkpoint_every=1", args=TINY[:4] + [
        "schedule.epochs=3", "schedule.warmup_epochs=0", "run.log_every=1"])) == 2
    line = one_error(capsys)
    found = re.search(r"the run diverged at step (\d+): .* keeping (\S+) at step (\d+) ", line)
    assert found and found.group(2) == str(out / "last.pt"), line
    diverged, kept = int(found.group(1)), int(found.group(3))
    assert kept < diverged and step_of(out / "last.pt") == kept and step_of(out / "last.prev.pt") < kept
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    first = records[0]["loss"]
    assert all(r["loss"] <= 10 * first for r in records if "loss" in r and r["step"] <= kept)
    assert [r["loss"] > 10 * first for r in records if "loss" in r][-1]  # the step it stopped at


def test_resuming_from_last_prev_keeps_it_as_the_older_checkpoint(toy, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(FIXTURE, out / "last.prev.pt")
    (out / "last.pt").write_bytes(b"torn")
    assert train_cli.main(argv(toy, out, "run.max_steps=3", "run.checkpoint_every=1", args=TINY)) == 0
    assert "resuming from" in capsys.readouterr().err
    assert step_of(out / "last.pt") == 3 and step_of(out / "last.prev.pt") == 2  # the torn file is gone


def test_resuming_on_other_classes_is_one_line(toy, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(FIXTURE, out / "last.pt")
    other = tmp_path / "other"
    for split in ("train", "val"):  # the same images, one class named otherwise: the same count
        for k, folder in enumerate(sorted((toy / split).iterdir())):
            name = "09_hexagon" if k == 3 else folder.name
            (other / split).mkdir(parents=True, exist_ok=True)
            (other / split / name).symlink_to(folder)
    assert train_cli.main(argv(other, out, "run.max_steps=3", args=TINY)) == 2
    assert "other classes than the run" in one_error(capsys) and "'03_star' against '09_hexagon'"
    assert step_of(out / "last.pt") == 2 and not (out / "config.yaml").exists()


def test_kill_9_after_the_epoch_evaluation_logs_it_once_after_resume(toy, tmp_path, capsys):
    out = tmp_path / "run"
    killed = wrapped("""
        from bot.train import runlog
        log = runlog.RunLog.log
        def log_then_die(self, record):
            log(self, record)
            if "top1" in record:  # the epoch's evaluation is logged; its last.pt is not written yet
                os.kill(os.getpid(), signal.SIGKILL)
        runlog.RunLog.log = log_then_die
    """, argv(toy, out, "run.max_steps=7", "run.checkpoint_every=1"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert step_of(out / "last.pt") == 5 and step_of(out / "last.prev.pt") == 4
    assert train_cli.main(argv(toy, out, "run.max_steps=7", "run.checkpoint_every=1")) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["step"] for r in records if "top1" in r] == [6, 7]


def test_a_late_second_sigterm_still_exits_75(toy, tmp_path):
    out = tmp_path / "run"
    done = wrapped("""
        from bot.train import preempt, trainer
        after_step, leave = trainer.Run.after_step, preempt.StopSignals.__exit__
        def notice_at_step_2(self, loss):
            after_step(self, loss)
            if self.step == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's notice
        def leave_then_second_notice(self, *exc):
            leave(self, *exc)
            os.kill(os.getpid(), signal.SIGTERM)  # another notice while the process is on its way out
            time.sleep(0.2)
        trainer.Run.after_step, preempt.StopSignals.__exit__ = notice_at_step_2, leave_then_second_notice
    """, argv(toy, out, "run.max_steps=4"))
    assert done.returncode == 75, (done.returncode, done.stderr[-2000:])
    assert "stopped by SIGTERM at step 2" in done.stdout and step_of(out / "last.pt") == 2


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs (root only), to be filled up."""
    folder = tmp_path / "disk"
    folder.mkdir()
    with tmpfs(folder, "rw", "a small tmpfs (a disk to fill) needs root and mount"):
        yield folder


def test_a_full_disk_at_resume_is_one_line_and_leaves_no_temporary_file(toy, full_disk, capsys):
    out = full_disk / "run"
    out.mkdir()
    shutil.copy(FIXTURE, out / "last.pt")
    lines = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 400))  # past step 2: rewritten
    (out / "metrics.jsonl").write_text(lines)
    filler = full_disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, filler.stat().st_size - 8192)  # room for .lock and config.yaml, not the log's rewrite
    assert train_cli.main(argv(toy, out, "run.max_steps=3", args=TINY)) == 2
    assert "No space left on device (ENOSPC)" in one_error(capsys)
    assert (out / "config.yaml").exists()  # the failure was the log's, at resume
    assert (out / "metrics.jsonl").read_text() == lines
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_sigusr1_to_the_process_group_stops_the_run_without_helper_tracebacks(toy, tmp_path):
    """SLURM signals every process of the job step: loader workers, the fork server and
    multiprocessing's resource tracker too. The tracker must not die of SIGUSR1 (relaunched,
    it printed a KeyError traceback per semaphore it had not seen)."""
    out = tmp_path / "run"
    victim = subprocess.Popen([sys.executable, "train.py", *argv(toy, out, "data.workers=1")], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while victim.poll() is None and not (log.exists() and '"step": 2,' in log.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    helpers = {" ".join(p.cmdline()): p for p in psutil.Process(victim.pid).children()}
    [server] = [p for command, p in helpers.items() if "multiprocessing.forkserver" in command]
    [tracker] = [p for command, p in helpers.items() if "multiprocessing.resource_tracker" in command]
    # the signal stays pending in the helpers (the fork server's death ended its workers, whose
    # parent it is: the next batch failed, or not, by the race of the signal against the step)
    assert stop_signals(server.pid, "SigBlk") == STOP
    assert stop_signals(tracker.pid, "SigBlk") | stop_signals(tracker.pid, "SigIgn") == STOP  # it ignores SIGTERM
    [worker] = server.children()  # the train loader's; its handler ignores the signal
    assert stop_signals(worker.pid, "SigBlk") == set() and stop_signals(worker.pid, "SigCgt") == STOP
    os.killpg(victim.pid, signal.SIGUSR1)
    stdout, stderr = victim.communicate(timeout=300)
    assert victim.returncode == 75, stderr[-2000:]
    assert "stopped by SIGUSR1" in stdout and "Traceback" not in stderr, stderr[-2000:]


STOP = {signal.SIGTERM, signal.SIGUSR1}


def stop_signals(pid: int, mask: str) -> set:
    """The stop signals in a bit mask of /proc/PID/status: SigBlk (blocked), SigIgn (ignored) or
    SigCgt (caught by a handler)."""
    [line] = [line for line in open(f"/proc/{pid}/status") if line.startswith(mask + ":")]
    bits = int(line.split()[1], 16)
    return {sig for sig in STOP if bits >> (sig - 1) & 1}


def test_sigterm_to_a_single_process_accelerate_launcher_stops_its_trainer(toy, tmp_path):
    """accelerate's one-process launcher passes no signal on: the trainer stops when it dies."""
    out = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
                                 "train.py", *argv(toy, out, "schedule.epochs=20", "run.max_steps=40")], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while launcher.poll() is None and not (log.exists() and '"step": 2,' in log.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    launcher.terminate()  # the launcher alone, as `kill PID` does
    stdout, _ = launcher.communicate(timeout=300)  # the trainer holds the pipe until it exits
    stopped = re.search(r"stopped by SIGTERM at step (\d+)", stdout)
    assert stopped and step_of(out / "last.pt") == int(stopped.group(1))


def test_anyone_elses_process_from_the_protected_fork_server_can_still_be_terminated():
    """The fork server blocks the stop signals (bot.data.workers.start_helpers), but a process it
    forks starts with them unblocked: a user's own forkserver Pool or Process beside our loaders
    (Python 3.14's default start method) still ends on terminate() instead of hanging its join.
    And it forks them with the loader's modules already imported, so no worker imports torch."""
    script = textwrap.dedent("""
        import multiprocessing, signal, time
        from bot.data import workers
        workers.worker_init("forkserver")  # what a loader with workers does first
        context = multiprocessing.get_context("forkserver")
        # the server forks its processes with the loader's modules imported (start_helpers)
        check = "import sys; sys.exit('bot.data.torch_loader' not in sys.modules)"
        preloaded = context.Process(target=exec, args=(check,))
        preloaded.start()
        preloaded.join(60)
        print(preloaded.exitcode)
        process = context.Process(target=time.sleep, args=(60,))
        process.start()
        process.terminate()
        process.join(20)
        print(process.exitcode)
        process.kill()  # still alive (the signal blocked): not to hang this exit too
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["0", str(-signal.SIGTERM)], done.stderr[-2000:]


def test_a_diverging_run_with_the_recipes_own_settings_keeps_nothing_past_its_first_bad_step(toy, tmp_path,
                                                                                              monkeypatch, capsys):
    """optim.lr=100 with the demo recipe's own log and checkpoint settings (a line every 50 steps,
    last.pt by time): the check must see every step's loss, not only the logged ones (the first
    logged loss was the only one, and the run saved weights of 1e27 and exited 0)."""
    from bot.train import engine

    losses, step = [], engine.TrainStep.__call__

    def watched(self, *args, **kwargs):
        loss = step(self, *args, **kwargs)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(engine.TrainStep, "__call__", watched)
    out = tmp_path / "run"
    status = train_cli.main(["recipes/demo.yaml", f"data.root={toy}", f"run.out={out}", "optim.lr=100",
                             "data.workers=0", "model.width=0.25"])
    line = one_error(capsys)
    first_bad = next(i + 1 for i, loss in enumerate(losses) if not loss <= 10 * losses[0])
    assert status == 2 and len(losses) == first_bad, line  # it stopped at the first bad step
    assert re.fullmatch(rf"error: (the run diverged at step {first_bad}: loss \S+ is above 10x the first loss \S+"
                        rf"|loss is not finite since step {first_bad}); stopped, .* \(lower optim.lr.*\)", line), line
    for name in ("last.pt", "last.prev.pt", "best.pt"):  # nothing from that step or after it is kept
        assert not (out / name).exists() or step_of(out / name) < first_bad


@pytest.mark.parametrize("every, saved", [("1h", [6, 12]), ("0.001s", list(range(1, 13))), (4, [4, 6, 8, 12])])
def test_last_pt_is_written_by_wall_time_or_by_steps_and_at_each_epoch_end(toy, tmp_path, monkeypatch, every, saved):
    """run.checkpoint_every: a wall time (the default, 10min), so that a kill loses at most that much
    training at any speed; or a number of steps. Each epoch end writes last.pt once, after its evaluation."""
    from bot import config

    assert config.load("recipes/demo.yaml").run.checkpoint_every == "10min"
    steps, save = [], checkpoint.save_last
    monkeypatch.setattr(checkpoint, "save_last", lambda state, *a, **k: steps.append(state["step"]) or save(state, *a,
                                                                                                            **k))
    assert train_cli.main(argv(toy, tmp_path / "run", f"run.checkpoint_every={every}")) == 0
    assert steps == saved
