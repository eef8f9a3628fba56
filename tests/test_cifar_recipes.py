"""The CIFAR-10 recipes say what gluon-cv's model-zoo commands say, the grids add one refinement a
row, and each recipe trains a few steps on a tiny archive in CIFAR's own format (prepare_cifar.py,
folders and shards): the real pipeline, not the real data."""

import subprocess
import sys

import pytest
from conftest import ROOT
from test_prepare_cifar import cifar10_archive
from test_recipes import diff

from bot import config
from bot.grid.runs import row_config
from bot.grid.spec import read_grid
from bot.train.schedule import peak_lr

CIFAR = ROOT / "recipes" / "cifar10"
RECIPES = sorted(p for p in CIFAR.glob("*.yaml") if p.name != "base.yaml")


def recipe(name):
    return config.load(CIFAR / f"{name}.yaml")


@pytest.mark.parametrize("name", ["resnet20-v1", "resnet56-v1"])
def test_the_vanilla_recipes_are_gluoncvs_command(name):
    """train_cifar10.py --num-epochs 200 --batch-size 128 --wd 0.0001 --lr 0.1 --lr-decay 0.1
    --lr-decay-epoch 100,150 --model cifar_resnetNN_v1 (NAG, Xavier init, no bias decay off), on
    the pad-4 crop and flip with CIFAR-10's mean and std, evaluated as it is on the test split."""
    cfg = recipe(name)
    assert cfg.model.arch == f"cifar_{name.replace('-', '_')}" and cfg.model.init == "xavier"
    assert (cfg.schedule.epochs, cfg.schedule.kind, cfg.schedule.milestones, cfg.schedule.warmup_epochs) == (
        200, "step", [100, 150], 0)
    assert (cfg.data.batch_size, peak_lr(cfg), cfg.optim.weight_decay) == (128, 0.1, 1e-4)
    assert (cfg.optim.nesterov, cfg.optim.momentum, cfg.optim.no_bias_decay, cfg.precision) == (True, 0.9, False, "fp32")
    assert (cfg.data.crop, cfg.data.padding, cfg.data.image_size, cfg.data.val_split) == ("padded", 4, 32, "test")
    assert cfg.data.mean == [125.307, 122.961, 113.8575] and cfg.data.std == [51.5865, 50.847, 51.255]
    assert (cfg.data.brightness, cfg.data.contrast, cfg.data.saturation, cfg.data.pca_lighting) == (0, 0, 0, 0)
    assert (cfg.loss.label_smoothing, cfg.loss.mixup_alpha, cfg.model.zero_gamma) == (0, 0, False)


@pytest.mark.parametrize("name", ["resnet20-v1", "resnet56-v1"])
def test_the_mixup_recipes_are_gluoncvs_mixup_script(name):
    """train_mixup_cifar10.py: the same flags with --num-epochs 220, alpha 1, no mixup in the last 20."""
    assert diff(recipe(name), recipe(f"{name}-mixup")) == {"schedule.epochs": 220, "loss.mixup_alpha": 1.0,
                                                          "loss.mixup_off_epochs": 20}


def test_the_grids_add_one_refinement_a_row():
    full = read_grid(ROOT / "recipes" / "ablations" / "cifar10.yaml")
    budget = read_grid(ROOT / "recipes" / "ablations" / "cifar10-budget.yaml")
    steps = [{"schedule.kind": "cosine", "schedule.warmup_epochs": 5.0, "schedule.milestones": [100, 150]},
             {"loss.label_smoothing": 0.1},
             {"schedule.epochs": 220, "loss.mixup_alpha": 1.0, "loss.mixup_off_epochs": 20}]
    for column, stem in (("ResNet-20 v1", "resnet20-v1"), ("ResNet-56 v1", "resnet56-v1")):
        cfgs = [row_config(full, cell) for cell in full.rows if cell.column == column]
        assert diff(recipe(stem), cfgs[0]) == {}  # the first row is gluon-cv's recipe as it is
        found = [diff(a, b) for a, b in zip(cfgs, cfgs[1:])]
        found[0].pop("schedule.milestones", None)  # cosine ignores them; the recipe keeps gluon-cv's
        assert found == [{k: v for k, v in s.items() if k != "schedule.milestones"} for s in steps]
    papers = {column: [c.paper.get("top1") for c in full.cells if c.column == column] for column in full.columns}
    assert papers == {"ResNet-20 v1": [92.1, None, None, 92.9], "ResNet-56 v1": [93.6, None, None, 94.2]}
    # the budget form: the same rows in 15 epochs (16 with mixup), its name and caption say so
    cfgs = [row_config(budget, row) for row in budget.rows]
    assert [c.schedule.epochs for c in cfgs] == [15, 15, 15, 16]
    assert "15 epochs, not the full recipe" in budget.title and "BUDGET FORM" in budget.caption
    assert diff(recipe("resnet20-v1"), cfgs[0]) == {"schedule.epochs": 15, "schedule.milestones": [8, 11]}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A tiny CIFAR-10 archive in the official format, prepared as a user would, with shards."""
    folder = tmp_path_factory.mktemp("cifar")
    cifar10_archive(folder / "cifar-10-python.tar.gz", per_batch=4, test=10)
    done = subprocess.run([sys.executable, "scripts/prepare_cifar.py", folder / "cifar-10-python.tar.gz",
                           folder / "c10", "--shards"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return folder


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_trains_a_few_steps_on_folders_and_shards(path, cifar, tmp_path):
    """Every CIFAR recipe as it is but for the batch (4) and the steps: on the PNG folders with the
    torch loader, on the shards with DALI, the held-out split `test` both times."""
    from bot.cli import train as train_cli

    assert f"recipes/cifar10/{path.name}" in path.read_text()  # its launch command, in a comment
    for root, backend in ((cifar / "c10", "torch"), (cifar / "c10-wds", "dali")):
        out = tmp_path / backend
        argv = [str(path), f"data.root={root}", f"data.backend={backend}", "data.batch_size=4", "data.workers=0",
                "run.max_steps=3", "run.log_every=1", f"run.out={out}"]
        assert train_cli.main(argv) == 0
        records = [line for line in (out / "metrics.jsonl").read_text().splitlines() if "top1" in line]
        assert len(records) == 1 and '"val_images": 10' in records[0]


def test_reference_loop_writes_the_logs_columns(cifar, tmp_path):
    """scripts/cifar_reference.py (plain torch and torchvision, gluon-cv's loop) trains on the
    prepared folders and writes a CSV that compare_log reads beside a run."""
    from conftest import run_here

    out = tmp_path / "ref.csv"
    done = run_here("scripts/cifar_reference.py", cifar / "c10", "--epochs", "2", "--batch", "4", "--workers", "0",
                   "--out", out)
    assert done.returncode == 0, done.stderr
    rows = [line.split(",") for line in out.read_text().splitlines() if not line.startswith("#")]
    assert rows[0] == ["epoch", "val_acc", "train_acc", "train_loss"] and [r[0] for r in rows[1:]] == ["0", "1"]
    assert all(0 <= float(r[1]) <= 1 and 0 <= float(r[2]) <= 1 and float(r[3]) > 0 for r in rows[1:])
    log = ROOT / "docs" / "cifar" / "gluoncv_cifar_resnet20_v1.csv"
    done = run_here("scripts/compare_log.py", out, log, "--phases", "")
    assert done.returncode == 0 and "ref: 2 epochs in common" in done.stdout, done.stderr
    done = run_here("scripts/cifar_reference.py", tmp_path / "nowhere", "--out", tmp_path / "x.csv")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()


BUDGET = ROOT / "recipes" / "ablations" / "cifar10-budget.yaml"


@pytest.mark.parametrize("row", read_grid(BUDGET).rows[1:], ids=lambda row: row.slug)
def test_each_budget_grid_row_trains_a_step(row, cifar, tmp_path):
    """The grid's rows past the recipe itself (cosine and warmup, label smoothing, mixup with its
    unmixed tail), as the grid builds them, on the PNG folders; the full grid's rows differ only in
    their epochs."""
    from bot.train import trainer

    cfg = config.load(row.recipe, [*row.overrides, f"data.root={cifar / 'c10'}", "data.backend=torch",
                                   "data.batch_size=4", "data.workers=0", "run.max_steps=2",
                                   f"run.out={tmp_path / 'run'}"])
    assert trainer.train(cfg)["steps"] == 2


def test_a_cifar_run_leaves_through_onnx_and_is_refused_by_timm_in_one_line(cifar, tmp_path):
    """After training: timm has no gluon-cv CIFAR networks (hub and timm exports are one line naming
    the formats that work); the ONNX metadata says the image is taken as it is; quantize and
    evaluate read the held-out split `test`; messages name the network without a variant."""
    import json

    import onnxruntime
    from conftest import call_main

    from bot.cli import evaluate, export, quantize
    from bot.cli import train as train_cli

    run = tmp_path / "run"
    assert train_cli.main([str(CIFAR / "resnet20-v1.yaml"), f"data.root={cifar / 'c10'}", "data.batch_size=4",
                           "data.workers=0", "run.max_steps=2", f"run.out={run}"]) == 0
    for fmt in ("hub", "timm"):
        done = call_main(export.main, run, "--format", fmt, "--out", tmp_path / {"hub": "hub", "timm": "m.safetensors"}[fmt])
        assert done.returncode == 2 and done.stderr.strip() == (
            f"error: {run / 'best.pt'} is gluon-cv's cifar_resnet20_v1, which timm has no network for; export it "
            f"with --format onnx or --format torchscript"), done.stderr
    assert call_main(export.main, run, "--format", "onnx", "--out", tmp_path / "m.onnx").returncode == 0
    meta = onnxruntime.InferenceSession(str(tmp_path / "m.onnx")).get_modelmeta().custom_metadata_map
    assert meta["resize_size"] == "null" and json.loads(meta["input_size"]) == [3, 32, 32]
    done = call_main(evaluate.main, run, "data.workers=0")
    assert done.returncode == 0 and "(cifar_resnet20_v1, 10 classes" in done.stdout and "c10/test: 10 images" in done.stdout
    done = call_main(quantize.main, run, "data.workers=0", "--calib", "8", "--out", tmp_path / "q.onnx")
    assert done.returncode == 0, done.stderr


def test_compare_log_puts_runs_beside_a_published_log(tmp_path):
    """scripts/compare_log.py: per epoch both have, each curve's top-1 and training loss beside the
    log's; per curve the mean difference with its standard error, and the epochs within the band of
    the log's own epoch-to-epoch noise (std around a 9-epoch moving mean, per lr phase)."""
    import json

    from conftest import run_here

    log = tmp_path / "log.csv"
    theirs = {e: 0.80 + (0.02 if e % 2 else -0.02) for e in range(20)}  # +-2 points around 80: noise 2
    log.write_text("# a comment\nepoch,val_acc,train_acc,train_loss\n"
                   + "".join(f"{e},{v},0.5,{1 - 0.05 * e}\n" for e, v in theirs.items()))
    run = tmp_path / "run"
    run.mkdir()
    ours = {e: 100 * theirs[e] + (5.0 if e == 3 else 1.0) for e in range(6)}  # one epoch off by 5
    steps = [{"epoch": e, "step": 2 * e + k + 1, "loss": 1 - 0.05 * e + (0.1 if k else 0.3)}  # mean: theirs + 0.2
             for e in range(6) for k in range(2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps)
                                       + "".join(json.dumps({"epoch": e, "step": 2 * e + 2, "top1": v}) + "\n"
                                                 for e, v in ours.items()) + '{"epoch": 6, "top')
    other = tmp_path / "plain.csv"  # a curve in the log's form: 3 points under the log at every epoch
    other.write_text("epoch,val_acc,train_acc,train_loss\n" + "".join(f"{e},{theirs[e] - 0.03},0.5,0.9\n"
                                                                       for e in range(4)))
    done = run_here("scripts/compare_log.py", run, log, "--also", other, "--phases", "", "--out", tmp_path / "c.png")
    assert done.returncode == 0, done.stderr
    assert "| 4 | 87.00 | 79.00 | 82.00 |" in done.stdout and "| 5 | 79.00 |  | 78.00 |" in done.stdout
    assert "| 2 | 1.1500 | 0.9000 | 0.9500 |" in done.stdout  # the epoch's mean training loss
    # differences 1, 1, 1, 5, 1, 1: mean 1.67, std 1.63, its standard error 1.63 / sqrt(6); the 9 epochs
    # around a value hold 5 like it and 4 four points away: residuals +-16/9, the band 2 x 16/9
    assert ("run: 6 epochs in common; top-1 minus the log's +1.67 +- 0.67 points (mean +- its standard error); "
            "5 of 6 within +-3.56") in done.stdout
    assert "training loss minus the log's +0.20 +- 0.00" in done.stdout
    assert "plain: 4 epochs in common; top-1 minus the log's -3.00 +- 0.00 points" in done.stdout
    # the two curves at epochs 1-4: 4, 4, 4 and 8 points apart (stds 2.83 x 3 and 5.66: 3.54 on average),
    # their mean -1, -1, -1, +1 from the log's (-0.50, its standard error 0.50), always within 2 stds of it
    assert ("the 2 curves at the 4 epochs they all have: top-1 std between them 3.54 points on average (their seed "
            "noise); their mean minus the log's -0.50 +- 0.50 points; the log within 2 of their stds of their mean "
            "at 4 of 4 epochs") in done.stdout
    assert (tmp_path / "c.png").stat().st_size > 10_000
    done = run_here("scripts/compare_log.py", run, log, "--epochs", "2", "--phases", "")
    assert "run: 2 epochs in common; top-1 minus the log's +1.00 +- 0.00" in done.stdout and "| 3 |" not in done.stdout
