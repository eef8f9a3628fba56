"""The dataset scan: the same list, order and errors as the pathlib scan it replaced
(scripts/bench_scan.old_scan_split), and under torchrun one process scans for all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.data.folder import scan_split
from bot.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_scan import old_scan_split  # noqa: E402


def tree(root: Path) -> Path:
    """Mixed-case suffixes, non-images, a dot folder, a sub-folder, symlinked files and class."""
    for split in ("train", "val"):
        for c in ("b", "a", "C"):
            d = root / split / c
            d.mkdir(parents=True)
            for name in ("2.jpg", "10.PNG", "1.jpeg", "x.WebP", "y.tiff", "z.tif", "q.bmp", "notes.txt", ".png"):
                (d / name).touch()
            (d / "sub.jpg").mkdir()  # a folder named like an image is not an image
        (root / split / ".cache").mkdir()
        (root / split / ".cache" / "0.jpg").touch()
        (root / split / "stray.jpg").touch()
    elsewhere = root / "elsewhere"
    (elsewhere / "d").mkdir(parents=True)
    (elsewhere / "d" / "5.jpg").touch()
    (elsewhere / "7.png").touch()
    (root / "train" / "d").symlink_to(elsewhere / "d")  # a linked class folder
    (root / "train" / "a" / "link.png").symlink_to(elsewhere / "7.png")  # a linked file
    (root / "train" / "a" / "dangling.jpg").symlink_to(elsewhere / "missing.jpg")  # not a file
    return root


@pytest.mark.parametrize("split", ["train", "val"])
def test_same_list_as_the_old_scan(tmp_path, monkeypatch, split):
    root = tree(tmp_path)
    new, old = scan_split(root, split), old_scan_split(root, split)
    assert new == old
    if split == "train":  # symlinks resolved, as before
        assert str(tmp_path / "elsewhere" / "7.png") in new.files and new.classes == ["C", "a", "b", "d"]
    # relative roots give absolute paths too
    monkeypatch.chdir(tmp_path)
    assert scan_split(Path("."), split) == old_scan_split(Path("."), split) == old


def test_same_errors_as_the_old_scan(tmp_path):
    (tmp_path / "train" / "empty").mkdir(parents=True)
    (tmp_path / "train" / "empty" / "a.txt").touch()
    (tmp_path / "val").mkdir()
    for split in ("train", "val", "test"):
        with pytest.raises(UserError) as new:
            scan_split(tmp_path, split)
        with pytest.raises(UserError) as old:
            old_scan_split(tmp_path, split)
        assert str(new.value) == str(old.value)


WORKER = """
import json, sys
import torch.distributed as dist
sys.path.insert(0, {root!r})
import bot.data.folder as folder
from bot.errors import UserError
dist.init_process_group("gloo")
calls = []
scan = folder.scan_split
folder.scan_split = lambda *a: calls.append(a[1]) or scan(*a)
out = {{"rank": dist.get_rank()}}
train, val = folder.scan_dataset(sys.argv[1])
out.update(scanned=calls, train=train.files, labels=train.labels, val=val.files, classes=val.classes)
try:
    folder.scan_dataset(sys.argv[1] + "/missing")
except UserError as e:
    out["error"] = str(e)
json.dump(out, open(sys.argv[2] + f".rank{{dist.get_rank()}}.json", "w"))
dist.destroy_process_group()
"""


def test_two_processes_scan_once_and_hold_the_same_list(toy, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(root=str(ROOT)))
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              str(worker), str(toy), str(tmp_path / "out")]
    done = subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"out.rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["scanned"] == ["train", "val"] and rank1["scanned"] == []  # rank 1 never listed a folder
    for key in ("train", "labels", "val", "classes", "error"):
        assert rank0[key] == rank1[key], key
    assert len(rank0["train"]) > 0 and "does not exist" in rank1["error"]  # rank 0's UserError, on rank 1 too
