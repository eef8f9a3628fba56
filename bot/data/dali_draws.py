"""Each training sample's augmentation, drawn in Python for the DALI loader (bot.data.dali).

The crop window, flip, colour factors and lighting come from the sample's own generator
(sampling.sample_seed), as the torch loader draws them; colour and normalization are then
one affine map per image, applied after the resize (docs/data.md, "How the DALI loader works").
"""

from __future__ import annotations

import numpy as np
import torch

from bot.data.constants import EIGVAL, EIGVEC, GREY, MEAN, STD
from bot.data.transforms import padded_window


def crop_window(rng: np.random.Generator, width: int, height: int, area, aspect) -> tuple[int, int, int, int]:
    """(x, y, w, h) as torchvision's RandomResizedCrop.get_params draws it (section 2 step 2).

    Area fraction uniform in `area`, aspect log-uniform in `aspect`; 10 tries, then the
    whole image cut to the aspect range and centred.
    """
    total = width * height
    log_lo, log_hi = np.log(aspect[0]), np.log(aspect[1])
    for _ in range(10):
        target = total * rng.uniform(area[0], area[1])
        ratio = np.exp(rng.uniform(log_lo, log_hi))
        w = int(round(np.sqrt(target * ratio)))
        h = int(round(np.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            y = int(rng.integers(0, height - h + 1))
            x = int(rng.integers(0, width - w + 1))
            return x, y, w, h
    in_ratio = width / height
    if in_ratio < min(aspect):
        w, h = width, int(round(width / min(aspect)))
    elif in_ratio > max(aspect):
        w, h = int(round(height * max(aspect))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def colour_terms(brightness, contrast, saturation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x_scale, grey_scale, mean_scale): section 2 step 4's jitter as one per-pixel expression.

    With g a pixel's grey and m the image's mean grey (torchvision's definitions), brightness
    b x, saturation s x + (1 - s) g and contrast c x + (1 - c) m commute, so the torch path's
    random order equals b c s x + b c (1 - s) g + b (1 - c) m (docs/data.md says why);
    unclamped, as there. Arguments may be arrays (a batch).
    """
    b, c, s = (np.asarray(v) for v in (brightness, contrast, saturation))
    return b * c * s, b * c * (1 - s), b * (1 - c)


def pca_offset(alpha: np.ndarray) -> np.ndarray:
    """AlexNet lighting (section 2 step 5): eigvec @ (alpha * eigval), 0-255 scale; alpha (..., 3)."""
    return (np.asarray(alpha) * np.asarray(EIGVAL)) @ np.asarray(EIGVEC).T


def colour_maps(draws: np.ndarray, mean=MEAN, std=STD) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(matrix (n, 3, 3), offset (n, 3), mean_weight (n, 3)): steps 4-6 of each sample as
        y = matrix @ x + offset + mean_weight * m,   m = GREY . (the image's mean pixel),
    for x a resized RGB pixel in 0-255 and y the normalized output; `draws` rows are
    train_draws'. Jitter (colour_terms), then PCA lighting, then (y - mean) / std
    (data.mean, data.std: RGB, 0-255).
    """
    x_scale, grey_scale, mean_scale = colour_terms(draws[:, 5], draws[:, 6], draws[:, 7])  # float64, as draws
    std, grey = np.asarray(std), np.asarray(GREY)
    mix = x_scale[:, None, None] * np.eye(3) + grey_scale[:, None, None] * np.outer(np.ones(3), grey)
    offset = (pca_offset(draws[:, 9:]) - np.asarray(mean)) / std
    return (torch.from_numpy((mix / std[:, None]).astype(np.float32)), torch.from_numpy(offset.astype(np.float32)),
            torch.from_numpy((mean_scale[:, None] / std).astype(np.float32)))


_GREY: dict[torch.device, torch.Tensor] = {}  # GREY on each device, copied there once


def colour_normalize(images: torch.Tensor, maps, out: torch.Tensor, means: torch.Tensor | None = None,
                     chunk: int | None = None) -> torch.Tensor:
    """Apply colour_maps' per-image maps to uint8 NHWC `images`, into float NCHW `out`.

    `means` (n, 3) are the images' mean pixels if known. One batched matrix product (HWC
    in, CHW out, so the layout change is free): on the CPU a few images at a time, so that
    their float copy stays in cache; on a GPU the whole batch, as each chunk costs kernel
    launches. `maps` should be in pinned memory for a GPU, so that their copy is asynchronous.
    """
    n, h, w, _ = images.shape
    chunk = chunk or (n if images.is_cuda else 4)
    matrix, offset, mean_weight = (t.to(images.device, non_blocking=True) for t in maps)
    grey = _GREY.get(images.device)
    if grey is None:
        grey = _GREY[images.device] = torch.tensor(GREY, device=images.device)
    for i in range(0, n, chunk):
        x = images[i:i + chunk].reshape(-1, h * w, 3).float()
        mean = x.mean(1) if means is None else means[i:i + chunk]
        bias = offset[i:i + chunk] + mean_weight[i:i + chunk] * (mean @ grey)[:, None]
        torch.baddbmm(bias[:, :, None], matrix[i:i + chunk], x.transpose(1, 2), out=out[i:i + chunk].view(-1, 3, h * w))
    return out


def train_draws(rng: np.random.Generator, width: int, height: int, d, window=None) -> tuple:
    """Every random choice for one training sample, in a fixed order.

    (x, y, w, h, flip, brightness, contrast, saturation, hue, alpha0, alpha1, alpha2);
    factors are 1 and alpha 0 where the config turns a step off. hue is in turns.
    `window` (x, y, w, h, flip), if given, is the geometry, drawn elsewhere (data.crop=padded:
    x and y may then be negative, the window starting in the zero padding).
    """
    if window is None:
        x, y, w, h = crop_window(rng, width, height, d.random_area, d.random_aspect)
        flip = float(rng.random() < 0.5)
    else:
        x, y, w, h, flip = window
    b = rng.uniform(1 - d.brightness, 1 + d.brightness) if d.brightness else 1.0
    c = rng.uniform(1 - d.contrast, 1 + d.contrast) if d.contrast else 1.0
    s = rng.uniform(1 - d.saturation, 1 + d.saturation) if d.saturation else 1.0
    hue = rng.uniform(-d.hue, d.hue) if d.hue else 0.0
    alpha = rng.normal(0.0, d.pca_lighting, 3) if d.pca_lighting > 0 else (0.0, 0.0, 0.0)
    return (x, y, w, h, flip, b, c, s, hue, *alpha)


def padded_draw(seed: int, width: int, height: int, size: int, padding: int) -> tuple[int, int, int, int, float]:
    """(x, y, w, h, flip) of data.crop=padded in the image's coordinates: transforms.padded_window
    from a torch generator seeded with the sample's seed, as the torch path's generator is."""
    x, y, flip = padded_window(width, height, size, padding, torch.Generator().manual_seed(seed))
    return x - padding, y - padding, size, size, float(flip)
