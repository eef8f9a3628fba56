"""What the DALI loader's tests share: JPEG datasets written to tmp_path, the loaders built on
them, and the statistics the distribution tests compare with. Not a test module."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from bot.config import load  # noqa: E402
from bot.data.constants import MEAN, STD  # noqa: E402
from bot.data.dali import DaliTrainLoader  # noqa: E402
from bot.data.folder import scan_dataset  # noqa: E402
from bot.data.torch_loader import TrainLoader  # noqa: E402

MEAN_ = torch.tensor(MEAN).view(1, 3, 1, 1)
STD_ = torch.tensor(STD).view(1, 3, 1, 1)


def pixels(images: torch.Tensor) -> torch.Tensor:
    """Normalized NCHW back to the 0-255 scale."""
    return images * STD_ + MEAN_


def save(path, array, quality=95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path, quality=quality, subsampling=0)


def dataset(root, make, n_train, n_val=2, classes=2):
    """root/{train,val}/c<k>/<i>.jpg with make(split, i) as the pixels; returns the root."""
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            save(root / split / f"c{i % classes}" / f"{i:04d}.jpg", make(split, i))
    return root


def data_cfg(root, **over):
    items = [f"data.root={root}", "data.workers=0", "data.batch_size=8"] + [f"data.{k}={v}" for k, v in over.items()]
    return load(None, items).data


def dali_train(root, seed=0, rank=0, world=1, batch=8, **over):
    train, _ = scan_dataset(str(root))
    return DaliTrainLoader(train, data_cfg(root, **over), seed, rank, world, batch, "cpu")


def torch_train(root, seed=0, batch=8, **over):
    train, _ = scan_dataset(str(root))
    return TrainLoader(train, data_cfg(root, **over), seed, 0, 1, batch, pin=False)


def epochs(loader, n):
    """All images (0-255 scale) and labels of epochs 0..n-1."""
    xs, ys = [], []
    for epoch in range(n):
        loader.set_epoch(epoch)
        for x, y in loader:
            xs.append(pixels(x))
            ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov distance."""
    a, b = np.sort(np.asarray(a)), np.sort(np.asarray(b))
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def ks_limit(n, m, alpha=1e-3) -> float:
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """torchvision's ops here run on small images: with 2 OpenMP threads on a busy 2-core
    machine they spin and run 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, pca_lighting=0.0)


@pytest.fixture(scope="module")
def val_root(tmp_path_factory):
    """Val images that shrink (ImageNet-like, both orientations) and grow (smaller than 256)."""
    rng = np.random.default_rng(0)
    sizes = [(500, 375), (375, 500), (500, 333), (640, 427), (300, 300), (120, 90), (90, 160), (257, 256)]

    def make(split, i):
        w, h = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = np.stack([128 + 100 * np.sin(xx / (7 + c) + yy / (11 + 2 * c) + i) for c in range(3)], -1)
        return np.clip(smooth + rng.normal(0, 12, (h, w, 3)), 0, 255)

    return dataset(tmp_path_factory.mktemp("val"), make, n_train=8, n_val=2 * len(sizes) + 3)
