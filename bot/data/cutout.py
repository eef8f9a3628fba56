"""Cutout (DeVries and Taylor, 2017), beyond the paper: one square per training image erased.

A square of side `data.cutout` x the training size, centred at a uniform pixel (so it may
reach past the border, where it is clipped: the paper's and timm's convention), set to 0
after normalization, i.e. to the dataset's mean pixel. The centre comes from the sample's
own seed (sampling.sample_seed) on a stream of its own, so both loaders erase the same
square of the same sample and the other draws are unchanged.
"""

from __future__ import annotations

import numpy as np
import torch


def cutout_box(sample_seed: int, size: int, fraction: float) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the erased square of one sample on a size x size image."""
    side = int(round(fraction * size))
    cy, cx = np.random.default_rng([sample_seed, 0xC0707]).integers(size, size=2)
    return (max(cy - side // 2, 0), min(cy - side // 2 + side, size),
            max(cx - side // 2, 0), min(cx - side // 2 + side, size))


def erase(image: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Zero `box` of a normalized CHW image, in place."""
    y0, y1, x0, x1 = box
    image[..., y0:y1, x0:x1] = 0
    return image
