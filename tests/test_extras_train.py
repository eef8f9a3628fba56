"""Beyond the paper through the real loaders and trainer: Cutout and random shapes in both
loaders, the weight average in a run (on 2 processes: tests/test_distributed.py), and kill -9 +
resume with all five on."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, run_here, same_threads

from bot import config
from bot.data import build_loaders, sampling
from bot.data.cutout import cutout_box
from bot.data.sizes import size_schedule
from bot.train.trainer import train

NO_COLOUR = ["data.brightness=0", "data.contrast=0", "data.saturation=0", "data.pca_lighting=0"]
SMALL = ["data.image_size=32", "data.batch_size=16", "data.workers=0", "model.arch=resnet18", "model.variant=D",
         "schedule.epochs=2", "run.log_every=1"]


def first_batches(cfg, epochs):
    """The first batch of each epoch from the train loader `cfg` builds."""
    loader, _ = build_loaders(cfg, 0, 1, "cpu")
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out.append(next(iter(loader)))
    return out


def test_cutout_and_random_shapes_in_both_loaders(toy):
    """Both loaders erase the same square of the same sample (drawn from the sample's seed, as
    the crop is) and change nothing else, at each epoch's size. The loaders' crops come from
    different generators (torch's and numpy's), so their pixels are compared each with itself."""
    pytest.importorskip("nvidia.dali")
    torch.set_num_threads(1)
    common = [f"data.root={toy}", *NO_COLOUR, "data.workers=0", "data.batch_size=8", "data.image_size=32",
              "data.cutout=0.3", "data.train_sizes=[32, 48, 40]", "schedule.epochs=4", "run.seed=3"]
    cfg = config.load(None, common)
    expected = [size_schedule(cfg)(e) for e in range(4)]
    assert len(set(expected)) > 1, expected  # the run changes size
    batches = {(backend, cutout): first_batches(config.load(None, [*common, f"data.backend={backend}",
                                                                   f"data.cutout={cutout}"]), 4)
               for backend in ("torch", "dali") for cutout in (0.3, 0)}
    for epoch, size in enumerate(expected):
        order = sampling.train_order(96, 3, epoch, 0, 1, 8)
        for backend in ("torch", "dali"):
            (x, y), (plain, _) = batches[backend, 0.3][epoch], batches[backend, 0][epoch]
            assert x.shape == (8, 3, size, size)
            for k in range(8):
                y0, y1, x0, x1 = cutout_box(sampling.sample_seed(3, epoch, int(order[k])), size, 0.3)
                assert (y1 - y0) * (x1 - x0) > 0
                erased = torch.zeros(size, size, dtype=torch.bool)
                erased[y0:y1, x0:x1] = True
                assert (x[k][:, erased] == 0).all()  # the mean pixel
                assert torch.equal(x[k][:, ~erased], plain[k][:, ~erased]), (backend, epoch, k)
        assert torch.equal(batches["torch", 0.3][epoch][1], batches["dali", 0.3][epoch][1])  # the same samples


def test_ema_run_reports_both_and_keeps_the_average(toy, tmp_path):
    out = tmp_path / "run"
    summary = train(config.load(None, [f"data.root={toy}", f"run.out={out}", "data.backend=torch", *SMALL,
                                       "model.width=0.25", "model.ema_decay=0.9", "model.ema_warmup=true",
                                       "run.best_of=ema"]))
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "top1" in l]
    assert len(evals) == 2 and all({"top1", "top5", "ema_top1", "ema_top5"} <= e.keys() for e in evals)
    assert summary["ema_top1"] == evals[-1]["ema_top1"] and summary["best_top1"] == max(e["ema_top1"] for e in evals)
    last, best = (torch.load(out / n, weights_only=False) for n in ("last.pt", "best.pt"))
    assert last["ema"].keys() == last["model"].keys()  # scripts/evaluate.py --ema reads this
    assert any(not torch.equal(last["ema"][k], last["model"][k]) for k in last["model"])
    assert best["best_of"] == "ema" and all(torch.equal(best["model"][k], best["ema"][k]) for k in best["model"])


ALL_ON = ["loss.mixup_alpha=0.2", "loss.cutmix_alpha=1.0", "loss.cutmix_prob=0.5", "data.cutout=0.25",
          "model.act=silu", "data.train_sizes=[32, 64]", "data.size_schedule=progressive", "model.ema_decay=0.9",
          "model.ema_warmup=true", "run.best_of=ema"]
FAULT_ARGS = ["data.image_size=32", "data.batch_size=16", "data.workers=0", "schedule.epochs=2",
              "schedule.warmup_epochs=0", "run.log_every=1", "run.checkpoint_every=4",
              "model.width=0.5"]  # narrower, yet slow enough a step for the kill to land mid-epoch


def records(folder):
    path = folder / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [{k: v for k, v in json.loads(line).items() if k != "img_per_s"} for line in lines]


def test_kill_9_then_resume_with_all_extras_on_is_bit_exact_across_a_size_change(toy, tmp_path):
    def args(out):
        return ["train.py", "recipes/demo.yaml", f"data.root={toy}", f"run.out={out}", *FAULT_ARGS, *ALL_ON]

    whole = run_here(*args(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    victim = subprocess.Popen([sys.executable, *map(str, args(tmp_path / "killed"))], cwd=ROOT, env=same_threads(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while max((r["step"] for r in records(tmp_path / "killed") if "loss" in r), default=0) < 5 \
            and victim.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)  # last.pt at step 4, in epoch 0 at 32 px; epoch 1 trains at 64 px
    victim.wait()
    saved = torch.load(tmp_path / "killed/last.pt", weights_only=False)["step"]
    assert saved in (4, 6)
    again = run_here(*args(tmp_path / "killed"))
    assert again.returncode == 0, again.stderr
    assert f"resuming at step {saved}" in again.stdout
    a, b = (torch.load(tmp_path / f"{n}/last.pt", weights_only=False) for n in ("whole", "killed"))
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert records(tmp_path / "killed") == records(tmp_path / "whole")
