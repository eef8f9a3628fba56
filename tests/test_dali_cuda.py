"""The DALI loader on a GPU (nvJPEG's "mixed" decoder, DALI's GPU resize, the colour maps applied
on the GPU) against the torchvision reference and the DALI CPU path: the checks of
tests/test_dali.py and tests/test_dali_augment.py, with device cuda. Marked `cuda`.

The bounds are looser than the CPU tests': nvJPEG's IDCT (and the hardware decoder's) round
differently from libjpeg-turbo's, and DALI's GPU resize differs from torchvision's in rounding;
a broken graph (a wrong window, flip, colour map or normalization) is tens of levels off.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nvidia.dali")

from dali_helpers import NO_COLOUR, data_cfg, dataset, one_torch_thread, pixels, val_root  # noqa: E402,F401

from bot.data import sampling  # noqa: E402
from bot.data.dali import DaliTrainLoader, DaliValLoader  # noqa: E402
from bot.data.folder import scan_dataset  # noqa: E402
from bot.data.torch_loader import ValLoader, decode  # noqa: E402

pytestmark = pytest.mark.cuda


def on_cpu(batches):
    """All images (0-255 scale, on the CPU) and labels of a loader's batches."""
    xs, ys = [], []
    for x, y in batches:
        assert x.is_cuda and y.is_cuda and x.dtype == torch.float32 and y.dtype == torch.int64
        xs.append(pixels(x.cpu()))
        ys.append(y.cpu())
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("antialias", [True, False])
def test_gpu_val_matches_torchvision(val_root, antialias):
    _, val = scan_dataset(str(val_root))
    d = data_cfg(val_root, antialias=antialias)
    images, labels = on_cpu(DaliValLoader(val, d, 0, 1, 4, "cuda"))
    ref_batches = list(ValLoader(val, d, 0, 1, 4, pin=False))
    ref = pixels(torch.cat([x for x, _ in ref_batches]))
    assert images.shape == ref.shape == (len(val), 3, 224, 224)
    diff = (images - ref).abs()
    assert diff.mean() < 1.0 and diff.max() <= 12, (diff.mean(), diff.max())
    assert labels.tolist() == torch.cat([y for _, y in ref_batches]).tolist()


def test_gpu_val_of_subsampled_jpegs_matches_torchvision(toy):
    """The toy set's JPEGs are 4:2:0, as ImageNet's: with jpeg_fancy_upsampling nvJPEG upsamples
    chroma as libjpeg-turbo (PIL) does."""
    _, val = scan_dataset(str(toy))
    d = data_cfg(toy, image_size=32)
    images, _ = on_cpu(DaliValLoader(val, d, 0, 1, 8, "cuda"))
    ref = pixels(torch.cat([x for x, _ in ValLoader(val, d, 0, 1, 8, pin=False)]))
    diff = (images - ref).abs()
    assert diff.mean() < 1.0 and diff.max() <= 12, (diff.mean(), diff.max())


def gpu_train(root, seed=0, batch=8, **over):
    train, _ = scan_dataset(str(root))
    return DaliTrainLoader(train, data_cfg(root, **over), seed, 0, 1, batch, "cuda")


def cpu_train(root, seed=0, batch=8, **over):
    train, _ = scan_dataset(str(root))
    return DaliTrainLoader(train, data_cfg(root, **over), seed, 0, 1, batch, "cpu")


@pytest.mark.parametrize("antialias", [True, False])
def test_gpu_train_pixels_are_torchvisions_resized_crop(val_root, antialias):
    """Sample by sample (no colour): torchvision's resized_crop of the drawn window, flipped where drawn."""
    from torchvision.transforms.v2 import functional as F

    loader = gpu_train(val_root, antialias=antialias, **NO_COLOUR)
    loader.set_epoch(0)
    out, _ = on_cpu(loader)
    train, _ = scan_dataset(str(val_root))
    order = sampling.train_order(len(train), 0, 0, 0, 1, 8)
    _, draws = loader.draws(0, order)
    for k, index in enumerate(order):
        x, y, w, h, flip = (int(v) for v in draws[k, :5])
        ref = F.resized_crop(decode(train.files[index]), y, x, h, w, [224, 224], antialias=antialias).float()
        ref = ref.flip(-1) if flip else ref
        diff = (out[k] - ref).abs()
        assert diff.mean() < 1.0 and diff.max() <= 16, (k, diff.mean(), diff.max())


def test_gpu_train_with_every_augmentation_matches_the_cpu_path(val_root):
    """The same draws through the GPU graph and the CPU one: crop, flip, jitter, lighting, normalization."""
    gpu, cpu = gpu_train(val_root), cpu_train(val_root)
    for loader in (gpu, cpu):
        loader.set_epoch(1)
    a, labels = on_cpu(gpu)
    cpu_batches = list(cpu)
    b = torch.cat([pixels(x) for x, _ in cpu_batches])
    assert a.shape == b.shape and labels.tolist() == torch.cat([y for _, y in cpu_batches]).tolist()
    diff = (a - b).abs()
    assert diff.mean() < 1.5 and diff.max() <= 30, (diff.mean(), diff.max())


def test_gpu_resume_mid_epoch_is_exact(tmp_path):
    """The same batches after set_epoch(epoch, start_step): the same decoders, the same pixels."""
    import numpy as np

    root = dataset(tmp_path, lambda s, i: np.random.default_rng(i).integers(0, 256, (48, 64, 3)), n_train=70)
    full = gpu_train(root)
    full.set_epoch(2)
    ref = [(x.clone(), y.clone()) for x, y in full]
    resumed = gpu_train(root)
    resumed.set_epoch(2, start_step=5)
    rest = list(resumed)
    assert len(rest) == len(ref) - 5
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref[5:], rest))
