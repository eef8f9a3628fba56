"""Runs that survive faults and bad input without losing work (through the CLI, as a user runs them).

A loss that is not finite stops the run and keeps the last good checkpoint; a truncated last.pt
falls back to last.prev.pt; bad input exits 2 with one line and leaves last.pt as it was. (kill -9
mid-epoch then the same command = an uninterrupted run, bit for bit: tests/test_preempt.py, with
the scheduler's signals.)
"""

import json
import shutil

import pytest
import torch
from conftest import run_here

from bot import config
from bot.data import sampling
from bot.data.folder import scan_dataset
from bot.errors import UserError
from bot.artifacts import checkpoint
from bot.models import build_model
from bot.train.trainer import train

RECIPE = "recipes/demo.yaml"
ARGS = ["data.image_size=32", "data.batch_size=16", "data.workers=0", "schedule.epochs=2",
        "schedule.warmup_epochs=0", "run.log_every=1"]  # 96 toy images: 6 steps per epoch


NARROW = ["model.width=0.25"]  # where only the run's control flow is tested: fp16 on the CPU is slow


def cli_args(toy, out, *extra):
    return ["train.py", RECIPE, f"data.root={toy}", f"run.out={out}", *ARGS, *extra]


def weights(folder, name="last.pt"):
    return torch.load(folder / name, weights_only=False)["model"]


def assert_same(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def records(folder):
    """metrics.jsonl's complete lines without the timing, which differs between runs."""
    path = folder / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []  # the last piece may be mid-write
    return [{k: v for k, v in json.loads(line).items() if k != "img_per_s"} for line in lines]


def steps_logged(folder):
    return [r["step"] for r in records(folder) if "loss" in r]


def test_resume_drops_the_metrics_of_steps_after_the_checkpoint(tmp_path):
    from bot.train.runlog import RunLog

    lines = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"step": 6, "lo')  # cut short by a kill
    cfg = config.load(RECIPE, [])
    RunLog(cfg, tmp_path, enabled=True, resume_step=3)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:3])
    RunLog(cfg, tmp_path, enabled=False, resume_step=1)  # not the main process: touches nothing
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:3])


def test_non_finite_loss_stops_with_exit_2_and_keeps_the_last_good_checkpoint(toy, tmp_path):
    out = tmp_path / "run"
    done = run_here(*cli_args(toy, out, "run.checkpoint_every=1", "optim.lr=1.0e+30", *NARROW))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"error: loss is not finite since step 2; stopped, keeping {out / 'last.pt'} "
                                   f"at step 1 (lower optim.lr, or use fp16 with its loss scaling)")
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 1  # step 2's update, from a NaN loss, was never written
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "best.pt").exists()  # nor evaluated into best.pt


def test_fp16_overflow_in_the_forward_stops_at_once(toy, tmp_path):
    """An fp16 forward that overflows writes inf into BatchNorm's running statistics even though
    the loss scaler skips the step: no later step repairs them, so the run stops there and
    last.pt keeps the finite state of the step before."""
    out = tmp_path / "run"
    done = run_here(*cli_args(toy, out, "precision=fp16", "optim.lr=1.0e+30", "run.checkpoint_every=1", *NARROW))
    if "use bf16" in done.stderr:
        pytest.skip("fp16 is not supported on this machine's CPU")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"error: the model's weights or BatchNorm statistics are not finite at step 2; "
                                   f"stopped, keeping {out / 'last.pt'} at step 1 (lower optim.lr)")
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_fp16_skips_non_finite_losses_then_stops_after_too_many_in_a_row(toy, tmp_path, monkeypatch):
    """A non-finite fp16 loss is skipped by the scaler (weights and statistics untouched) and the
    run goes on; more than NONFINITE_LIMIT (50; 3 here) in a row stop it with the count."""
    from bot.train import health, losses

    monkeypatch.setattr(health, "NONFINITE_LIMIT", dict(health.NONFINITE_LIMIT, fp16=3))
    calls, loss = [], losses.Objective.loss

    def poisoned(self, logits, targets, inputs):  # steps 2 to 5 give inf, after the model ran
        calls.append(1)
        value = loss(self, logits, targets, inputs)
        return value * float("inf") if 2 <= len(calls) <= 5 else value

    monkeypatch.setattr(losses.Objective, "loss", poisoned)
    out = tmp_path / "run"
    cfg = config.load(RECIPE, [f"data.root={toy}", f"run.out={out}", *ARGS, "precision=fp16",
                               "run.checkpoint_every=1", *NARROW])
    try:
        train(cfg)
    except UserError as e:
        message = str(e)
    else:
        pytest.fail("the run did not stop")
    assert message == (f"loss is not finite since step 2 (4 steps in a row skipped by the fp16 loss scaler); "
                       f"stopped, keeping {out / 'last.pt'} at step 4 (lower optim.lr)")
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 4  # steps 2-4 were survived (skipped) and checkpointed; step 5 was one too many
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert state["scaler"]["scale"] == 2.0 ** 16 / 2 ** 3  # halved at each skipped step


def test_truncated_last_pt_falls_back_to_the_previous_one(toy, tmp_path, capfd):
    cfg = config.load(RECIPE, [f"data.root={toy}", f"run.out={tmp_path / 'run'}", *ARGS, "run.checkpoint_every=2",
                               "run.max_steps=4", *NARROW])
    out = tmp_path / "run"
    train(cfg)  # last.pt at step 4, last.prev.pt at step 2
    whole = weights(out)
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])  # a torn write, or a full disk
    (out / "summary.json").unlink()
    capfd.readouterr()
    assert train(cfg)["steps"] == 4  # resumed from step 2, redid steps 3 and 4
    err = capfd.readouterr().err
    assert "last.pt is unreadable" in err and "resuming from" in err and "last.prev.pt (step 2)" in err
    assert_same(whole, weights(out))

    for name in (checkpoint.LAST, checkpoint.PREV):
        (out / name).write_bytes(b"")
    with pytest.raises(UserError, match=r"no readable checkpoint in .* \(last.pt, last.prev.pt are damaged\)"):
        train(cfg)


# ------------------------------------------------------------------ bad input, through the CLI

@pytest.fixture(scope="module")
def run_folder(toy, tmp_path_factory):
    """A run stopped at step 2 (mid epoch 1), as the bad inputs below find it."""
    out = tmp_path_factory.mktemp("bad") / "run"
    train(config.load(RECIPE, [f"data.root={toy}", f"run.out={out}", *ARGS, "run.max_steps=2"]))
    return out


def damaged_copy(toy, tmp_path, damage):
    """The toy data with the first image of the resumed run's next batch (step 3) damaged."""
    root = tmp_path / "data"
    shutil.copytree(toy, root)
    train_split, _ = scan_dataset(root)
    first = sampling.train_order(len(train_split), 0, 0, 0, 1, 16)[2 * 16]
    path = train_split.files[first]
    damage(path)
    return root, path


def teacher_with_classes(tmp_path, classes: int, names: list[str] | None = None):
    cfg = config.load(RECIPE, ARGS)
    path = tmp_path / "teacher.pt"
    torch.save({"model": build_model(cfg, classes).state_dict(), "config": cfg.to_dict(), "num_classes": classes,
                **({"classes": names} if names else {})}, path)
    return path


CASES = {
    "corrupt JPEG": lambda toy, tmp: damaged_copy(toy, tmp, lambda p: open(p, "r+b").write(b"\0" * 400)),
    "zero-byte file": lambda toy, tmp: damaged_copy(toy, tmp, lambda p: open(p, "wb").close()),
}


@pytest.mark.parametrize("case", ["corrupt JPEG", "zero-byte file", "batch not divisible", "mixup with a batch of 1",
                                  "teacher with another class count", "teacher with the classes in another order"])
def test_bad_input_exits_2_with_one_line_and_keeps_last_pt(toy, tmp_path, run_folder, case):
    kept = (run_folder / "last.pt").read_bytes()
    root, extra, message = toy, [], None
    if case in CASES:
        root, path = CASES[case](toy, tmp_path)
        message = f"cannot read image {path}"
    elif case == "batch not divisible":
        extra, message = ["data.accumulate=3"], "data.batch_size 16 is not divisible by 1 processes x data.accumulate 3"
    elif case == "mixup with a batch of 1":  # run.resume=force: the check itself must stop it, not the config diff
        extra = ["data.batch_size=1", "loss.mixup_alpha=0.2", "run.resume=force"]
        message = "loss.mixup_alpha needs at least 2 images per micro-batch"
    elif case == "teacher with another class count":
        teacher = teacher_with_classes(tmp_path, 3)
        extra = [f"loss.distill_teacher={teacher}", "run.resume=force"]
        message = f"loss.distill_teacher {teacher} was trained on other classes than the data: 3 classes against 4"
    elif case == "teacher with the classes in another order":  # as many classes: only the names tell
        names = sorted(p.name for p in (toy / "train").iterdir() if p.is_dir())
        teacher = teacher_with_classes(tmp_path, 4, names[1::-1] + names[2:])
        extra = [f"loss.distill_teacher={teacher}", "run.resume=force"]
        message = f"other classes than the data: class 0 is {names[1]!r} against {names[0]!r}"
    done = run_here(*cli_args(root, run_folder, *extra))
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert (run_folder / "last.pt").read_bytes() == kept
