"""End to end on toy data: learning, the run folder, resume, precision, and bad input."""

import json

import pytest
import torch
import yaml
from conftest import run_here

from bot import config
from bot.errors import UserError
from bot.train.trainer import train

SMALL = ["data.backend=torch", "data.image_size=32", "data.batch_size=16", "data.workers=0",
         "model.arch=resnet18", "model.variant=D", "schedule.epochs=2", "run.log_every=1"]


def small(toy, out, *extra):
    return config.load(None, [f"data.root={toy}", f"run.out={out}", *SMALL, *extra])


def narrow(toy, out, *extra):
    """small() at a quarter of the width, where a test checks the run's bookkeeping, not its network."""
    return small(toy, out, "model.width=0.25", *extra)


def lines(folder):
    return [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines()]


def test_short_run_learns_well_above_chance(toy, tmp_path):
    cfg = narrow(toy, tmp_path / "run", "schedule.epochs=8", "schedule.kind=cosine", "model.zero_gamma=true",
                 "data.random_area=[0.35, 1]", "optim.lr=0.8", "model.init=kaiming")
    summary = train(cfg)
    # 4 classes: chance is 25%. Measured 68.75 (62.5 at full width, 6x slower)
    assert summary["best_top1"] >= 45, summary


def test_run_folder_contents(toy, tmp_path):
    out = tmp_path / "run"
    summary = train(small(toy, out))
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "last.pt", "best.pt"}
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["data"]["image_size"] == 32 and resolved["run"]["out"] == str(out)
    assert resolved["provenance"]["packages"]["torch"] == torch.__version__.split("+")[0]
    assert "git_commit" in resolved["provenance"]
    records = lines(out)
    train_lines = [r for r in records if "loss" in r]
    eval_lines = [r for r in records if "top1" in r]
    assert [r["step"] for r in train_lines] == list(range(1, 13))
    assert all({"epoch", "step", "lr", "loss", "img_per_s"} <= r.keys() for r in train_lines)
    assert [r["epoch"] for r in eval_lines] == [0, 1] and all("top5" in r for r in eval_lines)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary.keys() >= {"top1", "top5", "best_top1", "epochs", "steps", "time_per_epoch_s",
                              "train_img_per_s", "params", "macs"}
    assert summary["steps"] == 12 and summary["epochs"] == 2 and summary["params"] > 1e7 and summary["macs"] > 1e7
    last = torch.load(out / "last.pt", weights_only=False)
    best = torch.load(out / "best.pt", weights_only=False)
    assert isinstance(last["model"], dict) and last["step"] == 12 and "conv1.0.weight" in best["model"]
    assert best["top1"] == summary["best_top1"]


def test_resume_continues_at_the_step_and_matches_an_uninterrupted_run(toy, tmp_path):
    whole = train(narrow(toy, tmp_path / "whole", "run.max_steps=9"))
    assert whole["steps"] == 9
    # 9 steps of 6-step epochs: over one epoch, timed; 4 steps: no epoch to time, no extrapolation
    assert whole["time_per_epoch_s"] == pytest.approx(whole["train_time_s"] / 1.5)
    part = train(narrow(toy, tmp_path / "part", "run.max_steps=4"))  # stops mid-epoch 0 (6 steps/epoch)
    assert part["steps"] == 4 and part["time_per_epoch_s"] is None and part["train_time_s"] > 0
    again = train(narrow(toy, tmp_path / "part", "run.max_steps=9"))  # the same command, a later cap: resumes
    assert again["steps"] == 9
    steps = [r["step"] for r in lines(tmp_path / "part") if "loss" in r]
    assert steps == list(range(1, 10))  # continued at step 5, nothing repeated
    a = torch.load(tmp_path / "whole/last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "part/last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_is_not_rerun(toy, tmp_path):
    first = train(narrow(toy, tmp_path / "run", "run.max_steps=2"))
    before = (tmp_path / "run/last.pt").stat().st_mtime_ns
    assert train(narrow(toy, tmp_path / "run", "run.max_steps=2")) == first
    assert (tmp_path / "run/last.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_and_channels_last_train_without_nans(toy, tmp_path, precision):
    summary = train(narrow(toy, tmp_path / "run", f"precision={precision}", "channels_last=true", "run.max_steps=3"))
    losses = [r["loss"] for r in lines(tmp_path / "run") if "loss" in r]
    assert len(losses) == 3 and all(l == l and abs(l) < 100 for l in losses)
    assert summary["top1"] >= 0
    state = torch.load(tmp_path / "run/last.pt", weights_only=False)
    if precision == "fp16":  # dynamic loss scaling: a finite, positive scale that may have backed off
        assert 0 < state["scaler"]["scale"] < float("inf")
    assert all(v.dtype == torch.float32 for k, v in state["model"].items() if v.is_floating_point())  # fp32 masters


def test_changed_config_is_not_resumed_silently(toy, tmp_path):
    train(narrow(toy, tmp_path / "run", "run.max_steps=2"))
    with pytest.raises(UserError, match=r"holds a run with another config \(optim.lr 0.1 -> 0.2\)"):
        train(narrow(toy, tmp_path / "run", "run.max_steps=4", "optim.lr=0.2"))
    assert train(narrow(toy, tmp_path / "run", "run.max_steps=4", "optim.lr=0.2", "run.resume=force"))["steps"] == 4


def test_a_key_that_changes_no_step_never_refuses_a_resume(tmp_path):
    from bot.train.run_checks import check_same_run

    def saved(*extra):
        return config.load("recipes/demo.yaml", list(extra)).to_dict()

    # loss.cutmix_prob's default went from 0.5 to 1.0: a run without CutMix resumes whatever its value
    check_same_run(config.load("recipes/demo.yaml", []), saved("loss.cutmix_prob=0.5"), tmp_path)
    with pytest.raises(UserError, match=r"another config \(loss.cutmix_prob 0.5 -> 1.0\)"):  # with CutMix it counts
        check_same_run(config.load("recipes/demo.yaml", ["loss.cutmix_alpha=1.0"]),
                       saved("loss.cutmix_alpha=1.0", "loss.cutmix_prob=0.5"), tmp_path)


def test_bad_input_exits_2_and_keeps_the_checkpoint(toy, tmp_path):
    out = tmp_path / "run"
    train(narrow(toy, out, "run.max_steps=2"))
    kept = (out / "last.pt").read_bytes()
    args = ["train.py", "recipes/demo.yaml", f"run.out={out}", *SMALL, "schedule.warmup_epochs=0"]
    for bad, message in [("data.root=/nonexistent", "data.root /nonexistent does not exist"),
                         (f"data.root={tmp_path}", "has no train/ folder"),
                         ("data.batch_size=0", "data.batch_size: must be at least 1")]:
        done = run_here(*args, bad)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().startswith("error: ") and message in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert (out / "last.pt").read_bytes() == kept


def test_run_out_that_is_a_file(toy, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        train(small(toy, tmp_path / "file"))


def test_wandb_logs_each_step_and_evaluation_and_the_summary_under_the_runs_own_id(toy, tmp_path, monkeypatch):
    """Read back from the offline run: what was logged, at which steps, the summary (summary.json's
    figures), group and name; a resume continues the same wandb run, a new run in a reused path
    starts another (with an id made from the path it continued the old one, and wandb dropped
    every step at or below the old run's last: the new curves vanished)."""
    import shutil

    from wandb_records import logged

    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    run = lambda *extra: train(narrow(toy, out, "run.wandb=offline", "run.group=grid", "run.name=row", *extra))  # noqa: E731
    summary = run("run.max_steps=2")
    first = logged(out)
    [(run_id, group, name)] = first["runs"]
    assert (group, name) == ("grid", "row")
    steps = [(h["_step"], sorted(k for k in h if not k.startswith("_"))) for h in first["history"]]
    assert steps == [(1, ["epoch", "img_per_s", "loss", "lr"]),
                     (2, ["epoch", "img_per_s", "loss", "lr", "top1", "top5", "val_images", "val_loss"])]
    assert {k: first["summary"][k] for k in summary} == summary  # best top-1, params, MACs, img/s ...

    run("run.max_steps=3")  # resumed: the same wandb run goes on from step 3
    again = logged(out)
    assert {r[0] for r in again["runs"]} == {run_id} and again["history"][-1]["_step"] == 3

    shutil.rmtree(out)  # the same path, a new run: a new wandb run
    run("run.max_steps=1")
    [(new_id, _, _)] = logged(out)["runs"]
    assert new_id != run_id