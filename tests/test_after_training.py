"""After training: evaluate, predict and export a run's checkpoint, through the real commands."""

import csv
import json
import re
import shutil
import sys

import pytest
import torch
import yaml

from conftest import ROOT
from conftest import run_here as run_cli  # in this process, but torchrun

TRAIN = ["data.backend=torch", "data.image_size=32", "data.batch_size=16", "data.workers=0",
         "schedule.epochs=2", "schedule.warmup_epochs=0", "run.log_every=1"]


@pytest.fixture(scope="module")
def run(toy, trained):
    """A two-epoch ResNet-18-D run on the toy data: best.pt, last.pt, summary.json."""
    return trained("recipes/demo.yaml", f"data.root={toy}", *TRAIN)


def test_training_off_a_terminal_prints_readable_lines_and_keeps_json_in_metrics(toy, tmp_path):
    folder = tmp_path / "run"
    done = run_cli("train.py", "recipes/demo.yaml", f"data.root={toy}", f"run.out={folder}", *TRAIN,
                   "model.width=0.25", "data.image_size=16", "run.max_steps=4")
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    assert steps and not [line for line in done.stdout.splitlines() if line.startswith("{")]
    printed = re.findall(r"^epoch (\d+)/2 step (\d+): loss (\S+) lr (\S+) (\d+) img/s$", done.stdout, re.M)
    assert printed == [(str(r["epoch"] + 1), str(r["step"]), f"{r['loss']:.4f}", f"{r['lr']:.4g}",
                        f"{r['img_per_s']:.0f}") for r in steps]


def test_a_runs_config_yaml_is_a_recipe_of_the_same_config(run):
    """The command that reproduces a run is `train.py RUN/config.yaml`: it loads (provenance and
    all) and resolves to the config the run trained with."""
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert "git_commit" in saved.pop("provenance")
    again = run_cli("train.py", run / "config.yaml", "--print-config")
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load(again.stdout) == saved


def table(stdout: str) -> list[list[str]]:
    """The rows of evaluate's markdown table: size, resize, top-1, top-5, loss."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in stdout.splitlines()
            if re.match(r"\| \d", line)]


def test_evaluate_repeats_the_runs_own_measurement(run, toy, tmp_path):
    summary = json.loads((run / "summary.json").read_text())
    last = run_cli("scripts/evaluate.py", run / "last.pt", "--per-class", tmp_path / "classes.csv")
    assert last.returncode == 0, last.stderr[-2000:]
    assert re.search(r"^evaluate 32 px: (\d+)/\1 batch \(100%\)", last.stderr, re.M)  # progress off a terminal
    ((size, resize, top1, top5, loss),) = table(last.stdout)
    assert (size, resize) == ("32", "37")  # the run's own val transform
    assert (top1, top5) == (f"{summary['top1']:.2f}", f"{summary['top5']:.2f}")  # as printed: 2 decimals
    rows = list(csv.DictReader(open(tmp_path / "classes.csv")))
    assert [r["class"] for r in rows] == sorted(p.name for p in (toy / "val").iterdir())
    hits = sum(float(r["top1_32"]) * int(r["images"]) / 100 for r in rows)
    assert hits / sum(int(r["images"]) for r in rows) * 100 == pytest.approx(summary["top1"], abs=0.01)
    best = run_cli("scripts/evaluate.py", run, "--sizes", "32,48")  # a run folder means its best.pt
    assert best.returncode == 0, best.stderr[-2000:]
    rows = table(best.stdout)
    assert [r[0] for r in rows] == ["32", "48"] and [r[1] for r in rows] == ["37", "55"]
    assert rows[0][2] == f"{summary['best_top1']:.2f}"


def test_evaluate_counts_each_image_once_under_torchrun(run, toy):
    one = run_cli("scripts/evaluate.py", run / "last.pt")
    two = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "scripts/evaluate.py",
                  run / "last.pt", "data.batch_size=6")
    assert two.returncode == 0, two.stderr[-3000:]
    images = len(list((toy / "val").rglob("*.jpg")))
    assert f": {images} images" in two.stdout and two.stdout.count("| 32 |") == 1  # one report, all images
    assert table(two.stdout)[0][2:4] == table(one.stdout)[0][2:4]


def test_evaluate_names_the_first_class_that_differs(run, toy, tmp_path):
    other = tmp_path / "other" / "val"
    names = sorted(p.name for p in (toy / "val").iterdir())
    for i, name in enumerate(names):
        shutil.copytree(toy / "val" / name, other / (f"zz_{name}" if i == 2 else name))
    done = run_cli("scripts/evaluate.py", run, f"data.root={other.parent}")
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: checkpoint {run / 'best.pt'} was trained on other classes than "
                                   f"{other.parent}/val: class 2 is {names[2]!r} against {names[3]!r}")
    no_ema = run_cli("scripts/evaluate.py", run, "--ema")
    assert no_ema.returncode == 2 and "has no moving average of the weights (key 'ema')" in no_ema.stderr


def test_evaluate_ema_reads_the_averaged_weights(run, tmp_path):
    """--ema evaluates the checkpoint's `ema` state_dict: here one whose averaged weights are zero
    (every logit equal), which must score differently from the trained weights."""
    ckpt = torch.load(run / "best.pt", weights_only=False)
    ckpt["ema"] = {k: torch.zeros_like(v) for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "ema.pt")
    raw = table(run_cli("scripts/evaluate.py", tmp_path / "ema.pt").stdout)[0]
    ema = table(run_cli("scripts/evaluate.py", tmp_path / "ema.pt", "--ema").stdout)[0]
    assert float(ema[4]) == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=1e-3)  # uniform over 4 classes
    assert raw[4] != ema[4]


def test_predict_agrees_with_evaluate_and_skips_unreadable_files(run, toy, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(toy / "val", folder)
    bad = folder / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    done = run_cli("scripts/predict.py", run / "last.pt", folder, "--topk", "2", "--out", tmp_path / "p.csv",
                   "--batch", "7")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"skipped {bad}: cannot read image" in done.stderr
    assert re.search(r"^predict: 33/33 img \(100%\)", done.stderr, re.M)  # progress off a terminal
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))  # timm's columns; --topk 2: JSON lists
    assert len(rows) == len(list((toy / "val").rglob("*.jpg"))) and "broken" not in str(rows)
    probs = [json.loads(r["prob"]) for r in rows]
    assert all(0 <= p2 <= p1 <= 1 for p1, p2 in probs)
    correct = sum(json.loads(r["label"])[0] == r["filename"].split("/")[-2] for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert 100 * correct / len(rows) == pytest.approx(summary["top1"], abs=0.01)  # the val transform, batched


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_is_checked_after_writing(run, tmp_path, fmt):
    out = tmp_path / f"model.{fmt}"
    done = run_cli("scripts/export.py", run, "--format", fmt, "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    diff = float(re.search(r"max abs logit difference (\S+)", done.stdout).group(1))
    assert diff < 1e-4 and out.is_file()
    x = torch.randn(5, 3, 32, 32)  # another batch size than the check's: the batch axis is dynamic
    if fmt == "onnx":
        import onnxruntime

        logits = onnxruntime.InferenceSession(str(out)).run(None, {"images": x.numpy()})[0]
    else:
        logits = torch.jit.load(str(out))(x).detach().numpy()
    assert logits.shape == (5, 4)
