"""Toy data and the torchvision loader: determinism, shapes, normalization, geometry, bad folders."""

import hashlib
import shutil

import pytest
import torch
from PIL import Image

from bot import config
from bot.data import build_loaders
from bot.data.constants import MEAN, STD
from bot.data.transforms import PCALighting, val_transform
from bot.errors import UserError
from conftest import ROOT, run_cli


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.jpg")):
        h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_toy_data_is_deterministic_by_seed_and_in_imagenet_layout(tmp_path, toy):
    args = ["--classes", "4", "--train", "24", "--val", "8", "--size", "64"]
    assert run_cli("scripts/make_toy_data.py", tmp_path / "a", *args).returncode == 0
    assert run_cli("scripts/make_toy_data.py", tmp_path / "b", *args, "--seed", "1").returncode == 0
    assert digest(tmp_path / "a") == digest(toy) != digest(tmp_path / "b")
    classes = sorted(p.name for p in (toy / "train").iterdir())
    assert classes == sorted(p.name for p in (toy / "val").iterdir()) and len(classes) == 4
    assert all(len(list((toy / "train" / c).glob("*.jpg"))) == 24 for c in classes)
    sizes = {Image.open(p).size for p in (toy / "train").rglob("*.jpg")}
    assert len({w / h for w, h in sizes}) > 10  # varied sizes and aspect ratios


def loaders(toy, *overrides):
    cfg = config.load(None, [f"data.root={toy}", "data.image_size=48", "data.batch_size=8", "data.workers=0",
                             "data.backend=torch", *overrides])
    return cfg, *build_loaders(cfg, rank=0, world=1, device="cpu")


def test_train_batches_shapes_labels_and_normalization(toy):
    cfg, train, val = loaders(toy)
    assert len(train) == 96 // 8 and train.classes == val.classes
    x, y = next(iter(train))
    assert x.shape == (8, 3, 48, 48) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= y.min() and y.max() < 4
    assert -3 < x.mean() < 3 and x.std() > 0.2  # normalized, not 0-255
    _, plain, _ = loaders(toy, "data.brightness=0", "data.contrast=0", "data.saturation=0", "data.pca_lighting=0")
    px, _ = next(iter(plain))
    lo = torch.tensor([-m / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    hi = torch.tensor([(255 - m) / s for m, s in zip(MEAN, STD)]).view(1, 3, 1, 1)
    assert (px >= lo - 1e-5).all() and (px <= hi + 1e-5).all()  # exactly (pixel - mean) / std


def test_train_batches_are_repeatable_and_resume_at_a_step(toy):
    _, train, _ = loaders(toy, "data.workers=2")
    train.set_epoch(3)
    full = list(train)
    train.set_epoch(3, start_step=5)
    tail = list(train)
    assert len(tail) == len(full) - 5
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[5:], tail))
    _, single, _ = loaders(toy, "data.workers=0")  # the same batches whatever the worker count
    single.set_epoch(3)
    assert torch.equal(next(iter(single))[0], full[0][0])
    train.set_epoch(4)
    assert not torch.equal(next(iter(train))[0], full[0][0])


def test_val_covers_every_image_once_in_order(toy):
    _, _, val = loaders(toy)
    labels = torch.cat([y for _, y in val])
    assert labels.tolist() == sorted(labels.tolist()) and len(labels) == 32
    cfg = loaders(toy, "data.batch_size=6")[0]
    parts = [build_loaders(cfg, rank=r, world=3, device="cpu")[1] for r in range(3)]
    seen = sorted(i for p in parts for i in p.indices)
    assert seen == list(range(32))


def test_val_crop_geometry_is_resize_shorter_side_then_centre_crop():
    cfg = config.load(None, ["data.image_size=112"])
    assert cfg.data.val_resize == 128
    img = torch.zeros(3, 200, 400, dtype=torch.uint8)
    img[:, :, 200:] = 255  # the right half is white
    out = val_transform(cfg.data)(img)
    assert out.shape == (3, 112, 112)
    # shorter side 200 -> 128, width 400 -> 256; centre crop keeps columns 72..184, the edge at 128 -> col 56
    white = out[0, 56] > 0
    assert not white[:55].any() and white[57:].all()


# AlexNet's PCA lighting as the authors' code prints it (gluon-cv's random_pca_lighting, MXNet's
# LightingAug; PAPER.md): typed here, not read from bot, so that a transposed matrix there fails
EIGVAL = [55.46, 4.794, 1.148]
EIGVEC = [[-0.5675, 0.7192, 0.4009],  # R
          [-0.5808, -0.0045, -0.8140],  # G
          [-0.5836, -0.6948, 0.4203]]  # B


def test_pca_lighting_offset_is_eigvec_times_alpha_eigval():
    torch.manual_seed(0)
    light = PCALighting(0.1)
    img = torch.zeros(3, 4, 4)
    offsets = torch.stack([light(img)[:, 0, 0] for _ in range(20000)])
    eigvec, eigval = torch.tensor(EIGVEC), torch.tensor(EIGVAL)
    want_std = ((eigvec * (0.1 * eigval)) ** 2).sum(1).sqrt()  # per channel, alpha ~ N(0, 0.1)
    assert torch.allclose(offsets.std(0), want_std, rtol=0.03)
    assert offsets.mean(0).abs().max() < 0.05 * want_std.max()
    torch.manual_seed(1)
    alpha = torch.randn(3) * 0.1
    torch.manual_seed(1)
    assert torch.allclose(light(img)[:, 2, 3], eigvec @ (alpha * eigval))


@pytest.mark.parametrize("break_it, message", [
    (lambda r: shutil.rmtree(r / "val"), "has no val/ folder"),
    (lambda r: [shutil.rmtree(p) for p in (r / "train").iterdir()], "has no class subfolders"),
    (lambda r: [p.unlink() for p in (r / "train" / "01_square").iterdir()], "holds no images"),
    (lambda r: (r / "val" / "01_square").rename(r / "val" / "01_squares"), "train and val classes differ"),
])
def test_bad_data_folders_name_the_problem(tmp_path, toy, break_it, message):
    root = tmp_path / "data"
    shutil.copytree(toy, root)
    break_it(root)
    with pytest.raises(UserError, match=message):
        loaders(root)


def test_missing_data_root():
    with pytest.raises(UserError, match="data.root is not set"):
        build_loaders(config.load(None), rank=0, world=1, device="cpu")
    with pytest.raises(UserError, match="does not exist"):
        build_loaders(config.load(None, ["data.root=/nonexistent"]), rank=0, world=1, device="cpu")
