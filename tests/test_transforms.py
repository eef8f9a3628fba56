"""bot/data/transforms.py's own pieces against their definitions, written out here.

The colour jitter (section 2 step 4) on float pixels: each of its four operations as the paper
and torchvision define it, in the order drawn, on one image or a batch; the lighting's
constants and dtype; the evaluation resize's antialias setting.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from bot.config import load
from bot.data.transforms import FloatColorJitter, PCALighting, val_transform

LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601, torchvision's rgb_to_grayscale


def grey(x):
    return (x * LUMA.view(3, 1, 1)).sum(-3, keepdim=True)


def definition(x, order, b, c, s, h):
    """The four operations one after the other, in `order` (0 brightness, 1 contrast,
    2 saturation, 3 hue), unclamped except where hue needs [0, 1]."""
    for op in order:
        if op == 0:
            x = b * x
        elif op == 1:
            x = c * x + (1 - c) * grey(x).mean((-2, -1), keepdim=True)
        elif op == 2:
            x = s * x + (1 - s) * grey(x)
        else:
            x = TF.adjust_hue((x / 255).clamp(0, 1), h) * 255
    return x


def params(order, b=1.3, c=0.7, s=1.4, h=0.1):
    return dict(fn_idx=torch.tensor(order), brightness_factor=b, contrast_factor=c, saturation_factor=s,
                hue_factor=h)


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (2, 3, 0, 1), (1, 0, 3, 2)])
def test_jitter_applies_the_four_operations_in_the_drawn_order(order):
    torch.manual_seed(0)
    x = torch.rand(3, 6, 5) * 300  # some pixels above 255: jitter does not clamp them
    out = FloatColorJitter(0.4, 0.4, 0.4, 0.2).transform(x, params(order))
    assert torch.allclose(out, definition(x, order, 1.3, 0.7, 1.4, 0.1), rtol=1e-5, atol=1e-3)


def test_each_operation_alone_and_orders_that_differ():
    torch.manual_seed(1)
    x = torch.rand(3, 4, 4) * 255
    jitter = FloatColorJitter(0.4, 0.4, 0.4, 0.2)
    for op, name in enumerate("bcsh"):  # only one factor drawn: the others are off (None)
        factors = {k: None for k in "bcsh"}
        factors[name] = (1.3, 0.7, 1.4, 0.1)[op]
        got = jitter.transform(x, params((0, 1, 2, 3), **factors))
        want = definition(x, [op], 1.3, 0.7, 1.4, 0.1)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-3), op
    # hue clamps to 0-255 and brightness does not: the order is the drawn one, not a fixed one
    a = jitter.transform(x, params((0, 3, 1, 2)))
    b = jitter.transform(x, params((3, 0, 1, 2)))
    assert (a - b).abs().max() > 20


def test_jitter_on_a_batch_is_the_jitter_of_each_image():
    """Means and greys are per image (over its own pixels), so a batch gets each image's result."""
    torch.manual_seed(2)
    batch = torch.rand(3, 3, 5, 4) * 255
    for order in itertools.islice(itertools.permutations(range(4)), 0, 24, 5):
        got = FloatColorJitter(0.4, 0.4, 0.4, 0.2).transform(batch, params(order))
        want = torch.stack([definition(img, order, 1.3, 0.7, 1.4, 0.1) for img in batch])
        assert got.shape == batch.shape
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-3), order


def test_lighting_constants_are_code_not_state_and_the_dtype_is_kept():
    lighting = PCALighting(0.1)
    assert lighting.state_dict() == {}  # an old checkpoint's state can never change them
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        assert lighting(torch.zeros(3, 2, 2, dtype=dtype)).dtype == dtype


def test_val_resize_follows_the_antialias_setting():
    torch.manual_seed(3)
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    for antialias in (True, False):
        d = load(None, ["data.image_size=32", "data.val_resize=36", f"data.antialias={str(antialias).lower()}"]).data
        got = val_transform(d)(image)
        resized = TF.center_crop(TF.resize(image, 36, antialias=antialias), 32).float()
        want = (resized - torch.tensor(d.mean).view(3, 1, 1)) / torch.tensor(d.std).view(3, 1, 1)
        assert torch.allclose(got, want, atol=1e-5), antialias


@pytest.mark.parametrize("antialias, size", [(True, None), (False, None), (False, 24)])
def test_train_geometry_is_torchvisions_with_the_configs_settings(antialias, size):
    """Steps 2-3 and 6 (no colour): torchvision's RandomResizedCrop with data.random_area,
    data.random_aspect and data.antialias at `size` (random-shape training) or data.image_size,
    a flip with p 1/2, then Normalize; the same draws from the same seed."""
    from torchvision.transforms import v2

    from bot.data.transforms import train_transform

    d = load(None, ["data.image_size=32", "data.random_area=[0.2, 0.6]", "data.random_aspect=[0.5, 2.0]",
                    f"data.antialias={str(antialias).lower()}", "data.brightness=0", "data.contrast=0",
                    "data.saturation=0", "data.pca_lighting=0"]).data
    reference = v2.Compose([v2.RandomResizedCrop(size or 32, scale=(0.2, 0.6), ratio=(0.5, 2.0), antialias=antialias),
                            v2.RandomHorizontalFlip(0.5), v2.ToDtype(torch.float32, scale=False),
                            v2.Normalize(list(d.mean), list(d.std))])
    image = torch.randint(0, 256, (3, 80, 120), dtype=torch.uint8)
    for seed in range(6):
        torch.manual_seed(seed)
        got = train_transform(d, size)(image)
        torch.manual_seed(seed)
        assert torch.equal(got, reference(image)), seed
        assert got.shape == (3, size or 32, size or 32)


def test_the_jitter_ranges_are_the_configs():
    """data.brightness 0.4 means a factor uniform in [0.6, 1.4] (section 2 step 4), hue h in [-h, h]."""
    from bot.data.transforms import train_transform

    d = load(None, ["data.brightness=0.4", "data.contrast=0.3", "data.saturation=0.2", "data.hue=0.1"]).data
    jitter = [t for t in train_transform(d).transforms if isinstance(t, FloatColorJitter)]
    assert len(jitter) == 1
    ranges = [*jitter[0].brightness, *jitter[0].contrast, *jitter[0].saturation, *jitter[0].hue]
    assert ranges == pytest.approx([0.6, 1.4, 0.7, 1.3, 0.8, 1.2, -0.1, 0.1])
