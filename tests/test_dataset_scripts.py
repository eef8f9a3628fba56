"""scripts/check_dataset.py and scripts/prepare_imagenet.py on small real files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that its functions pickle for a worker pool
    spec.loader.exec_module(module)
    return module


check_dataset, prepare_imagenet = script("check_dataset"), script("prepare_imagenet")


def jpeg(path, seed=0, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def layout(root):
    for split in ("train", "val"):
        for c in ("a", "b"):
            for i in range(3):
                jpeg(root / split / c / f"{i}.jpg", seed=i)
    return root


def test_check_dataset_clean(tmp_path, capsys):
    assert check_dataset.main([str(layout(tmp_path)), "--workers", "1"]) == 0
    assert "checked 12 images" in capsys.readouterr().err


def test_check_dataset_lists_every_bad_file(tmp_path, capsys):
    root = layout(tmp_path)
    (root / "train/a/1.jpg").write_bytes(b"")
    (root / "train/b/2.jpg").write_text("not an image\n")
    data = (root / "val/a/0.jpg").read_bytes()
    (root / "val/a/0.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (root / "val/b/1.jpg").write_bytes(data[:200] + bytes(range(256)) * 4)  # corrupt body
    (root / "val/b/notes.txt").write_text("hello")
    assert check_dataset.main([str(root), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    bad = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in out.splitlines()}
    assert bad[str(root / "train/a/1.jpg")] == "empty file"
    assert bad[str(root / "train/b/2.jpg")] == "not an image file"
    assert "truncated" in bad[str(root / "val/a/0.jpg")]
    assert str(root / "val/b/1.jpg") in bad
    assert bad[str(root / "val/b/notes.txt")].startswith("skipped")
    assert len(bad) == 5


def test_check_dataset_bad_layout(tmp_path, capsys):
    assert check_dataset.main([str(tmp_path)]) == 2
    assert "no train/ folder" in capsys.readouterr().err


WNIDS = ["n01440764", "n01443537", "n01484850"]


@pytest.fixture
def raw_val(tmp_path):
    """Six flat ILSVRC2012_val_*.JPEG files; file k belongs to WNIDS[k % 3]."""
    folder = tmp_path / "raw"
    for k in range(1, 7):
        jpeg(folder / f"ILSVRC2012_val_{k:08d}.JPEG", seed=k)
    return folder


def expect_sorted(out, mode):
    for k in range(1, 7):
        path = out / WNIDS[k % 3] / f"ILSVRC2012_val_{k:08d}.JPEG"
        assert path.is_file() and path.is_symlink() == (mode == "symlink")
    assert sorted(p.name for p in out.iterdir()) == sorted(WNIDS)


@pytest.mark.parametrize("form", ["kaggle", "pairs", "devkit"])
def test_prepare_imagenet_formats(tmp_path, raw_val, form):
    labels, extra = tmp_path / "labels.txt", []
    if form == "kaggle":
        labels.write_text("ImageId,PredictionString\n" + "".join(
            f"ILSVRC2012_val_{k:08d},{WNIDS[k % 3]} 1 2 30 40 {WNIDS[k % 3]} 5 6 7 8\n" for k in (3, 1, 2, 6, 5, 4)))
    elif form == "pairs":
        labels.write_text("".join(f"ILSVRC2012_val_{k:08d}.JPEG {WNIDS[k % 3]}\n" for k in range(1, 7)))
    else:
        labels.write_text("".join(f"{k % 3 + 1}\n" for k in range(1, 7)))
        (tmp_path / "synsets.txt").write_text("\n".join(WNIDS) + "\n")
        extra = ["--synsets", str(tmp_path / "synsets.txt")]
    out = tmp_path / "imagenet" / "val"
    assert prepare_imagenet.main([str(raw_val), str(labels), "--out", str(out), *extra]) == 0
    expect_sorted(out, "symlink")


def test_prepare_imagenet_copy_checks_train_and_missing_labels(tmp_path, raw_val, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"ILSVRC2012_val_{k:08d} {WNIDS[k % 3]}\n" for k in range(1, 7)))
    train = tmp_path / "imagenet" / "train"
    for wnid in WNIDS:
        (train / wnid).mkdir(parents=True)
    out = tmp_path / "imagenet" / "val"
    assert prepare_imagenet.main([str(raw_val), str(labels), "--out", str(out), "--mode", "copy",
                                  "--train", str(train)]) == 0
    expect_sorted(out, "copy")
    (train / "n09999999").mkdir()
    assert prepare_imagenet.main([str(raw_val), str(labels), "--out", str(out), "--train", str(train)]) == 2
    assert "differ" in capsys.readouterr().err
    labels.write_text("".join(f"ILSVRC2012_val_{k:08d} {WNIDS[k % 3]}\n" for k in range(1, 6)))
    assert prepare_imagenet.main([str(raw_val), str(labels), "--out", str(out)]) == 2
    assert "1 of 6 images have no label" in capsys.readouterr().err
    (tmp_path / "ids.txt").write_text("1\n2\n3\n1\n2\n3\n")
    assert prepare_imagenet.main([str(raw_val), str(tmp_path / "ids.txt"), "--out", str(out)]) == 2
    assert "--synsets" in capsys.readouterr().err
