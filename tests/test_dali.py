"""The DALI loader against the torchvision reference (CPU, real DALI): validation images, sharding,
seeding and resume, bad files, batch memory. tests/test_dali_augment.py has the training
augmentation. Images are real JPEGs written to tmp_path; some encode a file's index in their
colour, to read back which sample landed where.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from dali_helpers import NO_COLOUR, dali_train, data_cfg, dataset, one_torch_thread, pixels, val_root  # noqa: E402,F401

from bot.config import load  # noqa: E402
from bot.data import build_loaders, sampling  # noqa: E402
from bot.data.dali import DaliTrainLoader, DaliValLoader  # noqa: E402
from bot.data.folder import scan_dataset  # noqa: E402
from bot.data.torch_loader import ValLoader  # noqa: E402
from bot.errors import UserError  # noqa: E402


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("antialias", [True, False])
def test_val_matches_torchvision(val_root, antialias):
    """Same images (resize kernels differ in rounding only), same labels, same count.

    Both decode with libjpeg-turbo and resize the shorter side with a bilinear filter
    (with data.antialias a triangle filter as wide as the shrink) to the same integer size
    (val_geometry copies torchvision's size and crop arithmetic), then round to uint8. The
    kernels differ in float order and rounding, so a pixel may land one level off (two
    at most); the mean difference stays far below one level. Measured: mean 0.08, max
    1.0 levels (0-255 scale).
    """
    _, val = scan_dataset(str(val_root))
    d = data_cfg(val_root, antialias=antialias)
    dali = torch.cat([x for x, _ in DaliValLoader(val, d, 0, 1, 4, "cpu")])
    ref_batches = list(ValLoader(val, d, 0, 1, 4, pin=False))
    ref = torch.cat([x for x, _ in ref_batches])
    assert dali.shape == ref.shape == (len(val), 3, 224, 224) and dali.dtype == torch.float32
    diff = (pixels(dali) - pixels(ref)).abs()
    assert diff.mean() < 0.5 and diff.max() <= 2.5, (diff.mean(), diff.max())
    labels = torch.cat([y for _, y in DaliValLoader(val, d, 0, 1, 4, "cpu")])
    assert labels.dtype == torch.int64 and labels.tolist() == torch.cat([y for _, y in ref_batches]).tolist()


def test_val_shards_cover_every_image_once(tmp_path):
    """Each val image is counted once over 3 processes; the last batches are short, not padded."""
    root = dataset(tmp_path, lambda split, i: np.full((40, 50, 3), (i * 9, 255 - i * 9, 128)), n_train=4, n_val=11)
    _, val = scan_dataset(str(root))
    d = data_cfg(root, **NO_COLOUR)
    seen = []
    for rank in range(3):
        loader = DaliValLoader(val, d, rank, 3, 2, "cpu")
        batches = list(loader)
        assert len(batches) == len(loader)
        seen += [round(float(v) / 9) for v in pixels(torch.cat([x for x, _ in batches]))[:, 0, 112, 112]]
    assert sorted(seen) == list(range(11))


def test_data_antialias_changes_both_loaders(val_root):
    """data.antialias reaches the torch and the DALI val resize: shrinking without the filter aliases."""
    _, val = scan_dataset(str(val_root))
    for make in (lambda d: DaliValLoader(val, d, 0, 1, 4, "cpu"), lambda d: ValLoader(val, d, 0, 1, 4, pin=False)):
        smooth, sharp = (torch.cat([x for x, _ in make(data_cfg(val_root, antialias=a))]) for a in (True, False))
        diff = (pixels(smooth) - pixels(sharp)).abs()
        assert diff.mean() > 1.0, diff.mean()  # the noise of val_root's images aliases visibly


# ---------------------------------------------------------------- sharding, seeding, resume


def index_image(split, i):
    return np.full((48, 64, 3), (i * 4 % 256, i // 64 * 40, 77))


@pytest.fixture(scope="module")
def index_root(tmp_path_factory):
    return dataset(tmp_path_factory.mktemp("index"), index_image, n_train=70, n_val=3)


def sample_ids(images):
    """The file index each output came from (index_image's colour)."""
    px = pixels(images)[:, :, 112, 112]
    return [int(round(float(r) / 4)) + 64 * int(round(float(g) / 40)) for r, g in zip(px[:, 0], px[:, 1])]


def test_two_process_shards_are_disjoint_and_cover_the_epoch(index_root):
    """world 2, batch 8: 4 full steps each; the 6-image tail is dropped; same augmentation as world 1."""
    shards = []
    for rank in range(2):
        loader = dali_train(index_root, rank=rank, world=2, **NO_COLOUR)
        loader.set_epoch(3)
        batches = list(loader)
        assert len(batches) == len(loader) == 4 and all(len(x) == len(y) == 8 for x, y in batches)
        assert all(y.dtype == torch.int64 for _, y in batches)
        ids = sample_ids(torch.cat([x for x, _ in batches]))
        labels = torch.cat([y for _, y in batches]).tolist()
        assert labels == [i % 2 for i in ids]  # dataset() puts file i in class i % 2
        shards.append(ids)
    assert not set(shards[0]) & set(shards[1])
    train, _ = scan_dataset(str(index_root))
    number = [int(f.rsplit("/", 1)[1][:-4]) for f in train.files]  # dataset index -> file number
    assert sorted(shards[0] + shards[1]) == sorted(number[i] for i in sampling.train_order(70, 0, 3, 0, 1, 64))
    assert len(shards[0]) + len(shards[1]) == 64  # 70 // 16 * 16
    # a sample's augmentation depends on (seed, epoch, index) only, not on the world size
    solo = dali_train(index_root, world=1, batch=16)
    spread = [dali_train(index_root, rank=r, world=2, batch=8) for r in range(2)]
    for loader in (solo, *spread):
        loader.set_epoch(1)
    first = next(iter(solo))[0]
    halves = torch.cat([next(iter(loader))[0] for loader in spread])
    assert torch.equal(torch.cat([first[0::2], first[1::2]]), halves)


def test_same_seed_same_batches_and_resume_mid_epoch(index_root):
    """set_epoch(epoch, start_step) after a restart gives exactly the uninterrupted batches."""
    make = lambda seed=0: dali_train(index_root, seed=seed)  # noqa: E731
    full = make()
    full.set_epoch(2)
    ref = list(full)
    assert len(ref) == len(full) == 8
    again = make()
    again.set_epoch(2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, again))
    resumed = make()
    resumed.set_epoch(2, start_step=5)
    rest = list(resumed)
    assert len(rest) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(ref[5:], rest))
    # leaving an epoch early, then starting another, is clean
    full.set_epoch(0)
    next(iter(full))
    full.set_epoch(2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ref, list(full)))
    other = make(seed=1)
    other.set_epoch(2)
    assert not torch.equal(next(iter(other))[0], ref[0][0])


def test_build_loaders_dispatches_to_dali(index_root):
    cfg = load(None, [f"data.root={index_root}", "data.backend=dali", "data.batch_size=16", "data.workers=1"])
    train, val = build_loaders(cfg, 0, 1, "cpu")
    assert isinstance(train, DaliTrainLoader) and isinstance(val, DaliValLoader)
    assert train.classes == val.classes == ["c0", "c1"] and train.batch_size == 16 and len(train) == 4
    x, y = next(iter(train))
    assert x.shape == (16, 3, 224, 224) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert sum(len(y) for _, y in val) == 3


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize("kind", ["corrupt", "empty", "text"])
def test_bad_file_is_named(tmp_path, kind):
    root = dataset(tmp_path, lambda s, i: np.random.default_rng(i).integers(0, 256, (64, 64, 3)), n_train=8)
    bad = root / "train" / "c1" / "0003.jpg"
    good = bad.read_bytes()
    if kind == "corrupt":  # a JPEG header, then garbage where the image data should be
        bad.write_bytes(good[:200] + bytes(range(256)) * 4)
    elif kind == "empty":
        bad.write_bytes(b"")
    else:
        bad.write_text("this is not an image\n")
    loader = dali_train(root)
    loader.set_epoch(0)
    with pytest.raises(UserError, match="cannot read image .*0003.jpg"):
        list(loader)
    _, val = scan_dataset(str(root))
    (root / "val" / "c0" / "0000.jpg").write_bytes(bad.read_bytes())
    _, val = scan_dataset(str(root))
    with pytest.raises(UserError, match="cannot read image .*val/c0/0000.jpg"):
        list(DaliValLoader(val, data_cfg(root), 0, 1, 2, "cpu"))


def test_batches_the_caller_keeps_are_never_overwritten(index_root):
    """Batch memory is reused (dali_pipeline.BatchBuffers) only once nothing outside holds it."""
    loader = dali_train(index_root, batch=4)
    assert len(loader) >= 4
    loader.set_epoch(0)
    kept = [(x, x.clone()) for x, _ in loader]
    assert all(torch.equal(x, copy) for x, copy in kept)
    assert len({x.data_ptr() for x, _ in kept}) == len(kept)
    del kept
    loader.set_epoch(1)
    seen = set()
    for x, _ in loader:
        seen.add(x.data_ptr())
        del x
    assert len(seen) < len(loader)  # what nobody held came back



@pytest.mark.parametrize("padded", [False, True])
def test_only_the_training_decoder_preallocates_nvjpegs_buffers(monkeypatch, padded):
    """On a GPU, the padding is per decoding thread and held for the pipeline's life: the training
    pipeline's alone (the graphs built with a stand-in for DALI's fn, which needs no device)."""
    from unittest.mock import MagicMock

    from bot.data import dali_pipeline

    fake = MagicMock()
    monkeypatch.setattr(dali_pipeline, "fn", fake)
    dali_pipeline.train_graph([MagicMock()] * 6, True, False, padded=padded)
    dali_pipeline.val_graph([MagicMock()] * 4, 32, True, (0, 0, 0), (1, 1, 1), padded=padded)
    train = (fake.decoders.image if padded else fake.decoders.image_slice).call_args_list[0]
    val = fake.decoders.image.call_args_list[-1]
    assert train.kwargs["device"] == val.kwargs["device"] == "mixed"
    assert train.kwargs["jpeg_fancy_upsampling"] and val.kwargs["jpeg_fancy_upsampling"]  # pixels as the CPU's
    assert train.kwargs["device_memory_padding"] > 0 and train.kwargs["host_memory_padding"] > 0
    assert not {k for k in val.kwargs if "memory_padding" in k or k.startswith("preallocate")}
