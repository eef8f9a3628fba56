"""What a resume must refuse before it trains a step: other data than the run was trained on, a
saved step that falls outside this data's epochs, a run folder another trainer holds."""

import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, run_here

from bot.data.folder import scan_split
from bot.artifacts import checkpoint

# 4 classes x 24 toy images at batch 16: 6 steps an epoch; 5 once an image is gone
ARGS = ["data.image_size=16", "model.width=0.0625", "data.batch_size=16", "data.workers=0", "schedule.epochs=3",
        "schedule.warmup_epochs=1", "run.log_every=1"]


@pytest.fixture
def data(toy, tmp_path):
    """A copy of the toy data this test may change."""
    copy = tmp_path / "data"
    shutil.copytree(toy, copy)
    return copy


def train(data, out, *extra, timeout=120):
    """train.py in a process of its own with a time limit: a resume that loops must fail, not hang."""
    return subprocess.run([sys.executable, "train.py", "recipes/demo.yaml", f"data.root={data}", f"run.out={out}",
                           *ARGS, *extra], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def snapshot(out):
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}


def test_a_resume_on_data_with_another_image_count_is_one_line_and_changes_nothing(data, tmp_path):
    """One image deleted: 5 steps an epoch instead of 6, so last.pt's step 9 (epoch 2, step 3 of
    6) would lie past epoch 2's end (step 9 of 10): the run evaluated and saved step 9 for ever."""
    out = tmp_path / "run"
    first = train(data, out, "run.max_steps=9")
    assert first.returncode == 0, first.stderr[-2000:]
    before = snapshot(out)
    (data / "train" / "00_circle" / "00000.jpg").unlink()
    again = train(data, out)
    assert again.returncode == 2 and again.stderr.strip() == (
        f"error: data.root {data} holds other data than the run in {out} was trained on (train: 96 samples then, "
        f"95 now); point data.root at that run's data, or use a new run.out to start another run"), again.stderr
    assert snapshot(out) == before


def test_the_same_count_of_other_samples_is_refused_unless_forced(data, toy, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_here("train.py", "recipes/demo.yaml", f"data.root={data}", f"run.out={out}", *ARGS,
                    "run.max_steps=2").returncode == 0
    one = data / "val" / "01_square"
    next(one.iterdir()).rename(one / "zz-renamed.jpg")  # the same images, one under another name
    done = run_here("train.py", "recipes/demo.yaml", f"data.root={data}", f"run.out={out}", *ARGS, "run.max_steps=3")
    assert done.returncode == 2 and "(val: the same count (32) but other samples)" in done.stderr
    assert "run.resume=force" in done.stderr and checkpoint.load(out / "last.pt")["step"] == 2
    forced = run_here("train.py", "recipes/demo.yaml", f"data.root={data}", f"run.out={out}", *ARGS, "run.max_steps=3",
                      "run.resume=force")
    assert forced.returncode == 0, forced.stderr
    assert checkpoint.load(out / "last.pt")["step"] == 3
    from bot.data.fingerprint import sample_list

    moved = tmp_path / "moved"  # a moved copy of the same data resumes as it is
    shutil.copytree(toy, moved)
    assert sample_list(scan_split(moved, "train")) == sample_list(scan_split(toy, "train"))


def test_a_saved_step_outside_this_datas_epochs_is_an_error_not_a_loop(data, tmp_path):
    """A run recorded before data records were kept has none to compare: the trainer itself must
    refuse a position past the epoch's end rather than evaluate the same step again and again."""
    out = tmp_path / "run"
    assert train(data, out, "run.max_steps=11").returncode == 0  # step 11: epoch 2, its 5th of 6 steps
    state = checkpoint.load(out / "last.pt")
    state.pop("data", None)  # as written before runs recorded their data
    torch.save(state, out / "last.pt")
    (data / "train" / "00_circle" / "00000.jpg").unlink()  # epoch 2 is now steps 5 to 9
    again = train(data, out)
    assert again.returncode == 2 and again.stderr.strip() == (
        "error: step 11 is not in epoch 2 (steps 5 to 9) of this data and config; use a new run.out"), again.stderr


def test_a_held_run_folder_is_not_read(data, tmp_path, monkeypatch):
    """An overlapping requeue waits on nothing: it stops before reading last.pt, which the holder
    may rewrite at any moment (read, then locked once the holder ended, it resumed a stale step)."""
    out = tmp_path / "run"
    assert run_here("train.py", "recipes/demo.yaml", f"data.root={data}", f"run.out={out}", *ARGS,
                    "run.max_steps=2").returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", "import time; from bot.train.runlock import RunLock; "
                               f"lock = RunLock({str(out)!r}); lock.acquire(); print('held', flush=True); time.sleep(120)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        read = []
        monkeypatch.setattr(checkpoint, "load_last", lambda folder: read.append(folder))
        done = run_here("train.py", "recipes/demo.yaml", f"data.root={data}", f"run.out={out}", *ARGS)
        assert done.returncode == 2 and "is in use by another training process" in done.stderr
        assert read == []
    finally:
        holder.kill()
        holder.wait()
