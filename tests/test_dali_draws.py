"""bot/data/dali_draws.py without DALI: each sample's drawn window and factors, and the colour
maps applied after the resize, against their definitions written out here.

tests/test_dali_augment.py compares the DALI loader's batches with torchvision's; these pin the
cases a random batch seldom meets: the fallback windows, windows exactly as wide as the image,
the draws of a step turned off, and batches that are not a multiple of the chunk.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bot.config import load
from bot.data.dali_draws import colour_maps, colour_normalize, crop_window, train_draws

LUMA = np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize("width, height, area, aspect, window", [
    (30, 400, (0.9, 1.0), (3 / 4, 4 / 3), (0, 180, 30, 40)),   # too tall: the most square crop, centred
    (400, 30, (0.9, 1.0), (3 / 4, 4 / 3), (180, 0, 40, 30)),   # too wide
    (100, 100, (1.0, 1.0), (0.5, 2.0), (0, 0, 100, 100)),     # in the aspect range, no try fits: the image
    (101, 31, (0.95, 1.0), (3 / 4, 4 / 3), (30, 0, 41, 31)),  # odd margins round down, as torchvision's
])
def test_after_ten_failed_tries_the_fallback_is_torchvisions(width, height, area, aspect, window):
    for seed in range(5):
        rng = np.random.default_rng(seed)
        got = crop_window(rng, width, height, area, aspect)
        assert got == window and all(type(v) is int for v in got)
        again = np.random.default_rng(seed)
        again.random(20)  # ten tries, two draws each, as torchvision's get_params
        assert rng.random() == again.random()


@pytest.mark.parametrize("width, height, area", [(10, 40, 0.25), (40, 10, 0.25), (1, 40, 1 / 40), (40, 1, 1 / 40)])
def test_a_window_as_wide_or_as_high_as_the_image_is_taken_not_refused(width, height, area):
    """A square window of the image's short side fits: it is drawn at a random place along the long
    side, not replaced by the centred fallback."""
    side = min(width, height)
    places = set()
    for seed in range(30):
        x, y, w, h = crop_window(np.random.default_rng(seed), width, height, (area, area), (1.0, 1.0))
        assert (w, h) == (side, side) and 0 <= x <= width - w and 0 <= y <= height - h
        places.add(x + y)
    assert len(places) > 10


def test_the_crop_area_is_drawn_from_data_random_area():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(300):
        x, y, w, h = crop_window(rng, 500, 400, (0.25, 0.5), (1.0, 1.0))
        areas.append(w * h / (500 * 400))
    assert min(areas) > 0.24 and max(areas) < 0.51  # rounding to whole pixels aside
    assert np.mean(areas) == pytest.approx(0.375, abs=0.02)


def test_train_draws_keep_their_order_and_a_step_turned_off_is_neutral():
    on = load(None, ["data.brightness=0.4", "data.contrast=0.4", "data.saturation=0.4", "data.hue=0.1",
                     "data.pca_lighting=0.1"]).data
    off = load(None, ["data.brightness=0", "data.contrast=0", "data.saturation=0", "data.hue=0",
                      "data.pca_lighting=0"]).data
    rng = np.random.default_rng(0)
    rows = np.array([train_draws(rng, 64, 48, on) for _ in range(2000)])
    assert rows.shape == (2000, 12)  # x, y, w, h, flip, b, c, s, hue, alpha0..2
    for col, lo, hi in ((5, 0.6, 1.4), (6, 0.6, 1.4), (7, 0.6, 1.4), (8, -0.1, 0.1)):
        assert lo <= rows[:, col].min() < lo + 0.01 and hi - 0.01 < rows[:, col].max() <= hi
    assert set(rows[:, 4]) == {0.0, 1.0}
    assert rows[:, 9:].std(0) == pytest.approx([0.1] * 3, rel=0.1)
    neutral = np.array([train_draws(rng, 64, 48, off) for _ in range(20)])
    assert neutral.shape == (20, 12)
    assert (neutral[:, 5:8] == 1.0).all() and (neutral[:, 8:] == 0.0).all()
    window = (-3, 2, 32, 32, 1.0)  # data.crop=padded: the geometry comes from elsewhere
    assert train_draws(rng, 40, 40, off, window)[:5] == window


@pytest.mark.parametrize("n, chunk", [(10, None), (7, 3), (1, None)])
def test_colour_normalize_is_each_images_affine_map(n, chunk):
    """y = matrix @ x + offset + mean_weight * (GREY . mean pixel), per image, per pixel: written
    out in float64 over batches that are no multiple of the chunk."""
    rng = np.random.default_rng(n)
    d = load(None, ["data.brightness=0.4", "data.contrast=0.4", "data.saturation=0.4", "data.pca_lighting=0.1"]).data
    draws = np.array([train_draws(rng, 64, 48, d) for _ in range(n)])
    images = torch.from_numpy(rng.integers(0, 256, (n, 5, 6, 3), dtype=np.uint8))
    maps = colour_maps(draws, d.mean, d.std)
    out = colour_normalize(images, maps, torch.full((n, 3, 5, 6), float("nan")), chunk=chunk)
    x = images.double().numpy().reshape(n, -1, 3)
    matrix, offset, weight = (t.double().numpy() for t in maps)
    want = (np.einsum("nij,npj->nip", matrix, x) + offset[:, :, None]
            + weight[:, :, None] * (x.mean(1) @ LUMA)[:, None, None])
    assert np.abs(out.double().numpy().reshape(n, 3, -1) - want).max() < 1e-4
    given = colour_normalize(images, maps, torch.empty(n, 3, 5, 6), means=images.float().mean((1, 2)), chunk=chunk)
    assert torch.allclose(given, out, atol=1e-4)


def test_colour_maps_are_jitter_then_lighting_then_normalize():
    """One image's map against the steps one by one (section 2 steps 4-6) on a pixel."""
    d = load(None, []).data
    draws = np.zeros((1, 12))
    draws[0, 5:8] = 1.2, 0.8, 0.5  # b, c, s
    draws[0, 9:] = 0.3, -0.2, 0.1  # alpha
    matrix, offset, weight = (t.double().numpy()[0] for t in colour_maps(draws, d.mean, d.std))
    pixel, mean_pixel = np.array([200.0, 100.0, 50.0]), np.array([90.0, 120.0, 60.0])
    grey, mean_grey = pixel @ LUMA, mean_pixel @ LUMA
    # brightness, contrast and saturation commute (docs/data.md); then lighting, then normalize
    jittered = 1.2 * (0.8 * (0.5 * pixel + 0.5 * grey) + 0.2 * mean_grey)
    eigval = np.array([55.46, 4.794, 1.148])  # AlexNet's, as the authors' code types them
    eigvec = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
    lit = jittered + eigvec @ (np.array([0.3, -0.2, 0.1]) * eigval)
    want = (lit - np.array(d.mean)) / np.array(d.std)
    assert matrix @ pixel + offset + weight * mean_grey == pytest.approx(want, abs=1e-4)
