"""data.val_split: a dataset that holds out test/ (CIFAR's folders) or validation/ trains,
converts to shards and evaluates with the same key on the folder and on its shards, and a
missing held-out split is one line naming the split that was asked for."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import call_main

from bot import config
from bot.cli.evaluate import main as evaluate_main
from bot.cli.make_shards import main as make_shards_main
from bot.data import build_loaders
from bot.artifacts.checkpoint import atomic_save
from bot.models import build_model
from test_dataset_scripts import check_dataset

SMALL = ["data.image_size=32", "data.batch_size=8", "data.workers=0", "data.backend=torch"]


@pytest.fixture(scope="module")
def cifar_like(toy, tmp_path_factory):
    """The toy data held out as test/, as CIFAR's folders are (scripts/prepare_cifar.py)."""
    root = tmp_path_factory.mktemp("held-out") / "toy"
    shutil.copytree(toy, root)
    (root / "val").rename(root / "test")
    return root


@pytest.fixture(scope="module")
def cifar_shards(cifar_like, tmp_path_factory):
    out = tmp_path_factory.mktemp("held-out-wds") / "toy"
    done = call_main(make_shards_main, cifar_like, out, "--val-split", "test", "--no-shuffle", "--shard-samples", 10)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["train: 96 samples in 10 shards", "test: 32 samples in 4 shards"]
    return out


def loaders(root, *more):
    cfg = config.load(None, [f"data.root={root}", *SMALL, *more])
    return build_loaders(cfg, 0, 1, "cpu")


def test_folder_and_shards_give_the_same_held_out_batches(cifar_like, cifar_shards):
    info = json.loads((cifar_shards / "_info.json").read_text())
    assert sorted(info["splits"]) == ["test", "train"]  # the split keeps its name: data.val_split=test reads both
    (_, folder), (_, shards) = loaders(cifar_like, "data.val_split=test"), loaders(cifar_shards, "data.val_split=test")
    assert folder.samples["samples"] == shards.samples["samples"] == 32
    a, b = list(folder), list(shards)
    assert len(a) == len(b) == 4 and all(torch.equal(x, y) and torch.equal(i, j) for (x, i), (y, j) in zip(a, b))


def test_a_missing_held_out_split_names_the_one_asked_for(cifar_like, cifar_shards, tmp_path):
    from bot.errors import UserError

    with pytest.raises(UserError) as e:
        loaders(cifar_like)
    assert str(e.value) == (f"data folder {cifar_like} has no val/ folder (expected val/<class>/<image>; it has "
                            f"test/, for data.val_split=test)")
    with pytest.raises(UserError) as e:
        loaders(cifar_shards, "data.val_split=validation")
    assert str(e.value) == (f"{cifar_shards}/_info.json has no split validation or val (it has ['test', 'train']; "
                            f"data.val_split names the held-out one)")
    out = tmp_path / "wds"
    done = call_main(make_shards_main, cifar_like, out)
    assert done.returncode == 2 and not out.exists()
    assert done.stderr.splitlines() == [f"error: data folder {cifar_like} has no val/ folder (expected "
                                        f"val/<class>/<image>; it has test/, for --val-split test)"]


def test_evaluate_reads_the_runs_held_out_split_on_folder_and_shards(cifar_like, cifar_shards, tmp_path):
    cfg = config.load(None, [f"data.root={cifar_like}", "data.val_split=test", *SMALL, "model.arch=resnet18",
                             "model.variant=D", "model.width=0.25"])
    torch.manual_seed(0)
    classes = sorted(p.name for p in (cifar_like / "test").iterdir())
    atomic_save({"model": build_model(cfg, 4).state_dict(), "config": cfg.to_dict(), "num_classes": 4,
                 "classes": classes}, tmp_path / "best.pt")
    rows = []
    for extra in ([], [f"data.root={cifar_shards}"]):
        done = call_main(evaluate_main, tmp_path / "best.pt", *extra)
        assert done.returncode == 0, done.stderr
        assert "/toy/test: 32 images" in done.stdout
        rows.append(next(line for line in done.stdout.splitlines() if line.startswith("| 32")))
    assert rows[0] == rows[1]


def test_check_dataset_takes_the_held_out_folder(cifar_like, capsys):
    assert check_dataset.main([str(cifar_like), "--workers", "1"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: data folder {cifar_like} has no val/ folder (expected "
                                                    f"val/<class>/<image>; it has test/, for --val-split test)"]
    assert check_dataset.main([str(cifar_like), "--workers", "1", "--val-split", "test"]) == 0
    assert "checked 128 images" in capsys.readouterr().err
