"""CIFAR's augmentation (data.crop=padded) in both loaders, and data.mean / data.std everywhere.

Images are real 32 x 32 PNGs written to tmp_path (lossless, so both loaders decode the same
pixels); some encode their coordinates in their colours, to read the crop window back.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from bot.config import load
from bot.data.folder import scan_dataset
from bot.data.sampling import sample_seed, train_order
from bot.data.torch_loader import TrainLoader, ValLoader
from bot.data.transforms import PaddedCrop, padded_window, val_transform
from bot.errors import UserError
from bot.artifacts.preprocessing import in_words, timm_data_config

NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, pca_lighting=0.0)
CIFAR = dict(crop="padded", image_size=32, padding=4, **NO_COLOUR)
CIFAR_MEAN, CIFAR_STD = [125.307, 122.961, 113.8575], [51.5865, 50.847, 51.255]  # gluon-cv's, in 0-255
CIFAR_NORM = dict(mean="[125.307,122.961,113.8575]", std="[51.5865,50.847,51.255]")
IMAGENET_MEAN, IMAGENET_STD = [123.68, 116.779, 103.939], [58.393, 57.12, 57.375]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small images: torch's OpenMP threads would only spin on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def png_dataset(root, make, n_train, n_val=4, classes=2):
    """root/{train,val}/c<k>/<i>.png with make(split, i) as the uint8 pixels; returns the root."""
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            path = root / split / f"c{i % classes}" / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(make(split, i), np.uint8)).save(path)
    return root


def noise(split, i):
    return np.random.default_rng([i, split == "val"]).integers(0, 256, (32, 32, 3))


def coordinates(split, i):
    """Red 4 + 7 x, green 4 + 7 y, blue 200: no pixel of the image is black, the padding is."""
    yy, xx = np.mgrid[0:32, 0:32]
    return np.stack([4 + 7 * xx, 4 + 7 * yy, np.full_like(xx, 200)], -1)


@pytest.fixture(scope="module")
def noise_root(tmp_path_factory):
    return png_dataset(tmp_path_factory.mktemp("noise"), noise, n_train=24)


@pytest.fixture(scope="module")
def coord_root(tmp_path_factory):
    return png_dataset(tmp_path_factory.mktemp("coords"), coordinates, n_train=48)


def data_cfg(root, **over):
    items = [f"data.root={root}", "data.workers=0", "data.batch_size=8"]
    return load(None, items + [f"data.{k}={v}" for k, v in over.items()]).data


def torch_train(root, **over):
    return TrainLoader(scan_dataset(str(root))[0], data_cfg(root, **over), 0, 0, 1, 8, pin=False)


def dali_train(root, **over):
    pytest.importorskip("nvidia.dali")
    from bot.data.dali import DaliTrainLoader

    return DaliTrainLoader(scan_dataset(str(root))[0], data_cfg(root, **over), 0, 0, 1, 8, "cpu")


def dali_val(root, **over):
    pytest.importorskip("nvidia.dali")
    from bot.data.dali import DaliValLoader

    return DaliValLoader(scan_dataset(str(root))[1], data_cfg(root, **over), 0, 1, 4, "cpu")


def torch_val(root, **over):
    return ValLoader(scan_dataset(str(root))[1], data_cfg(root, **over), 0, 1, 4, pin=False)


def epoch(loader, e):
    loader.set_epoch(e)
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def images_of(loader):
    """A train loader's epoch 0, or the whole val set."""
    return epoch(loader, 0)[0] if hasattr(loader, "set_epoch") else torch.cat([x for x, _ in loader])


def pixels(images, mean, std):
    """Normalized NCHW back to the 0-255 scale."""
    return images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


def expected_crop(image: np.ndarray, seed: int, size=32, p=4) -> torch.Tensor:
    """The definition, in numpy: zero-pad p on each side, cut size x size at the drawn corner, mirror."""
    x, y, flip = padded_window(image.shape[1], image.shape[0], size, p, torch.Generator().manual_seed(seed))
    window = np.pad(image, ((p, p), (p, p), (0, 0)))[y:y + size, x:x + size]
    return torch.from_numpy((window[:, ::-1] if flip else window).transpose(2, 0, 1).astype(np.float32))


# ---------------------------------------------------------------- training


def test_padded_batches_are_the_same_in_both_loaders_and_the_definition(noise_root):
    """Same (seed, epoch): the torch and the DALI loader give the same batches, and each image is
    its file zero-padded by 4, cut 32 x 32 at the drawn corner and mirrored where drawn,
    normalized by data.mean / data.std."""
    over = dict(CIFAR, **CIFAR_NORM)
    train, _ = scan_dataset(str(noise_root))
    for e in (0, 1):
        ref, ref_labels = epoch(torch_train(noise_root, **over), e)
        dali, dali_labels = epoch(dali_train(noise_root, **over), e)
        assert ref.shape == dali.shape == (24, 3, 32, 32) and torch.equal(ref_labels, dali_labels)
        assert (ref - dali).abs().max() < 1e-5, (ref - dali).abs().max()  # float rounding only
        order = train_order(24, 0, e, 0, 1, 8)
        files = [np.asarray(Image.open(train.files[i]).convert("RGB")) for i in order]
        want = torch.stack([expected_crop(f, sample_seed(0, e, int(i))) for f, i in zip(files, order)])
        assert (pixels(ref, CIFAR_MEAN, CIFAR_STD) - want).abs().max() < 1e-3


def window_of(image: torch.Tensor, p=4):
    """(x, y, flipped, black columns, black rows) of one output of `coordinates` (0-255, CHW)."""
    real = image[2] > 100  # blue 200: the image; 0: the padding
    rows, cols = real.any(1).nonzero()[:, 0], real.any(0).nonzero()[:, 0]
    r0, c0 = int(rows[0]), int(cols[0])
    red = image[0, r0, cols]
    flipped = bool(red[-1] < red[0])
    source_x = round((float(red[0] if not flipped else red[-1]) - 4) / 7)  # image column of the leftmost real one
    x = source_x - (c0 if not flipped else 31 - int(cols[-1])) + p
    y = round((float(image[1, r0, c0]) - 4) / 7) - r0 + p
    return x, y, flipped, 32 - len(cols), 32 - len(rows)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_padded_crop_statistics(coord_root, backend):
    """Corner uniform over 0..2p on each axis, zero padding exactly where the window leaves the
    image, mirrored half of the time."""
    make = torch_train if backend == "torch" else dali_train
    loader = make(coord_root, **CIFAR)
    images = torch.cat([pixels(epoch(loader, e)[0], IMAGENET_MEAN, IMAGENET_STD) for e in range(8)])
    n = len(images)
    assert n == 384
    xs, ys, flips = [], [], []
    for image in images:
        x, y, flipped, black_cols, black_rows = window_of(image)
        xs.append(x), ys.append(y), flips.append(flipped)
        assert black_cols == abs(x - 4) and black_rows == abs(y - 4)  # the window's part outside the image
        assert (image[:, image[2] < 100].abs() < 1e-3).all()  # the padding is 0 in pixel values
    for offsets in (xs, ys):
        counts = np.bincount(offsets, minlength=9)
        assert len(counts) == 9 and counts.min() > 0, counts  # 0..8, every one
        chi2 = ((counts - n / 9) ** 2 / (n / 9)).sum()
        assert chi2 < 26.1, counts  # 8 degrees of freedom, p = 0.001
    assert abs(np.mean(flips) - 0.5) < 4 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_padded_training_keeps_the_colour_steps(noise_root, backend):
    """Set, brightness and PCA lighting follow the padded crop: the same windows come out as
    b x + offset, one b and one RGB offset per image, and the zero padding gets the offset."""
    make = torch_train if backend == "torch" else dali_train
    plain = pixels(epoch(make(noise_root, **CIFAR), 0)[0], IMAGENET_MEAN, IMAGENET_STD)
    lit = pixels(epoch(make(noise_root, **dict(CIFAR, brightness=0.4, pca_lighting=0.1)), 0)[0],
                 IMAGENET_MEAN, IMAGENET_STD)
    padding = plain.abs().sum(1) < 1e-3  # (n, 32, 32)
    assert padding.any(2).any(1).sum() > len(plain) // 2  # most windows reach into it
    for k in padding.any(2).any(1).nonzero()[:, 0]:
        offset = lit[k][:, padding[k]].mean(1)
        assert (lit[k][:, padding[k]] - offset[:, None]).abs().max() < 1e-3 and offset.abs().max() > 1e-3
        inside = plain[k].min(0).values > 30
        factor = (lit[k] - offset.view(3, 1, 1))[:, inside] / plain[k][:, inside]
        assert (factor - factor.mean()).abs().max() < 1e-3 and 0.6 - 1e-3 < factor.mean() < 1.4 + 1e-3


# ---------------------------------------------------------------- evaluation


def val_images(root):
    _, val = scan_dataset(str(root))
    return torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1).astype(np.float32))
                        for f in val.files])


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_padded_eval_is_the_image_as_it_is(noise_root, backend):
    """No resize, no crop: exactly the file's pixels, normalized by data.mean / data.std."""
    over = dict(CIFAR, **CIFAR_NORM)
    out = images_of((dali_val if backend == "dali" else torch_val)(noise_root, **over))
    assert out.shape == (4, 3, 32, 32)
    assert (pixels(out, CIFAR_MEAN, CIFAR_STD) - val_images(noise_root)).abs().max() < 1e-3


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_padded_eval_names_an_image_of_another_size(tmp_path, backend):
    root = png_dataset(tmp_path, noise, n_train=8)
    bad = root / "val" / "c1" / "0001.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(bad)
    loader = (dali_val if backend == "dali" else torch_val)(root, **CIFAR)
    with pytest.raises(UserError) as e:
        list(loader)
    assert str(e.value) == (f"{bad}: image is 40x30; data.crop=padded evaluates each image as it is (no resize, "
                            f"no crop), so it must be data.image_size (32x32)")


# ---------------------------------------------------------------- data.mean / data.std


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_random_resized_crop_normalizes_with_data_mean_std(noise_root, backend):
    """The paper's crop and val transform too: (x - data.mean) / data.std, not the constants."""
    over = dict(NO_COLOUR, image_size=24)
    makes = (dali_train, dali_val) if backend == "dali" else (torch_train, torch_val)
    for make in makes:
        raw = images_of(make(noise_root, **over, mean="[0,0,0]", std="[1,1,1]"))
        ref = images_of(make(noise_root, **over))  # the defaults: the paper's ImageNet values
        assert raw.min() >= -1e-3 and raw.max() <= 255 + 1e-3 and raw.max() > 200  # pixel values as they are
        assert (pixels(ref, IMAGENET_MEAN, IMAGENET_STD) - raw).abs().max() < 1e-3


def test_export_preprocessing_carries_mean_std_and_the_image_as_it_is(noise_root):
    """timm's data config and the sentence say data.mean / data.std and, for crop=padded, no
    resize: timm's own eval transform built from it gives our val transform's output."""
    timm = pytest.importorskip("timm")
    d = data_cfg(noise_root, **CIFAR, **CIFAR_NORM)
    config = timm_data_config(d)
    assert config["mean"] == [m / 255 for m in CIFAR_MEAN] and config["std"] == [s / 255 for s in CIFAR_STD]
    assert config["input_size"] == [3, 32, 32] and config["crop_pct"] == 1.0
    words = in_words(d)
    assert words.startswith("RGB; take the image as it is, 32x32 (no resize, no crop); scale to [0, 1]; "
                            "subtract mean (0.4914, 0.4822, 0.4465) and divide by std (0.2023, 0.1994, 0.2010)"), words
    theirs = timm.data.create_transform(**config, is_training=False)
    _, val = scan_dataset(str(noise_root))
    for f in val.files:
        image = Image.open(f).convert("RGB")
        ours = val_transform(d)(torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy()))
        assert (theirs(image) - ours).abs().max() < 1e-5
    # the paper's crop: the ImageNet defaults, and a resize
    default = timm_data_config(data_cfg(noise_root, image_size=32))
    assert default["mean"] == [m / 255 for m in (123.68, 116.779, 103.939)] and default["crop_pct"] < 1


@pytest.mark.cuda
def test_padded_on_the_gpu_equals_the_cpu(noise_root):
    """The same graph on the GPU (the "mixed" decoder, fn.slice and fn.flip on the device): the
    CPU batches, train and val (PNG decodes alike on both)."""
    pytest.importorskip("nvidia.dali")
    from bot.data.dali import DaliTrainLoader, DaliValLoader

    train, val = scan_dataset(str(noise_root))
    d = data_cfg(noise_root, **dict(CIFAR, brightness=0.4, pca_lighting=0.1))
    for e in (0, 1):
        cpu, gpu = (epoch(DaliTrainLoader(train, d, 0, 0, 1, 8, device), e)[0].cpu() for device in ("cpu", "cuda"))
        assert (cpu - gpu).abs().max() < 1e-4, (cpu - gpu).abs().max()
    cpu, gpu = (images_of(DaliValLoader(val, d, 0, 1, 4, device)).cpu() for device in ("cpu", "cuda"))
    assert (cpu - gpu).abs().max() < 1e-4


@pytest.mark.parametrize("width, height, size, padding", [
    (6, 6, 6, 0),   # no padding: the image itself, or its mirror
    (5, 3, 3, 2),   # wider than high: each axis its own range
    (3, 3, 1, 2),   # padding wider than the window: some windows hold no pixel of the image
])
def test_padded_crop_is_a_window_of_the_zero_padded_image(width, height, size, padding):
    """PaddedCrop against its definition: zero-pad, cut size x size at a corner drawn uniformly
    from 0..side + 2 padding - size per axis (every corner reached, no other), mirror or not."""
    image = torch.arange(1, 3 * width * height + 1, dtype=torch.float32).reshape(3, height, width)  # no 0 pixel
    crop, corners = PaddedCrop(size, padding), set()
    for k in range(400):
        torch.manual_seed(k)
        out = crop(image)
        x, y, flip = padded_window(width, height, size, padding, torch.Generator().manual_seed(k))
        want = torch.nn.functional.pad(image, [padding] * 4)[:, y:y + size, x:x + size]
        assert torch.equal(out, want.flip(-1) if flip else want), (k, x, y, flip)
        corners.add((x, y))
    assert corners == {(x, y) for x in range(width + 2 * padding - size + 1)
                       for y in range(height + 2 * padding - size + 1)}
