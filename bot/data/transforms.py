"""The paper's augmentation on torchvision transforms v2 (section 2; PAPER.md section 1).

Only PCA lighting is written here: torchvision has no AlexNet lighting noise. Images stay
in the paper's 0-255 scale until Normalize, so the lighting offset, the mean and the std
are the paper's numbers as printed.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from bot.data.constants import EIGVAL, EIGVEC, MEAN, STD


class PCALighting(torch.nn.Module):
    """AlexNet lighting noise: add eigvec @ (alpha * eigval), alpha ~ N(0, std), per image.

    The offset is in the 0-255 scale and the same for every pixel; no clipping follows
    (gluon-cv's LightingAug does not clip either).
    """

    def __init__(self, std: float):
        super().__init__()
        self.std = std
        self.register_buffer("eigval", torch.tensor(EIGVAL), persistent=False)
        self.register_buffer("eigvec", torch.tensor(EIGVEC), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.std
        offset = self.eigvec @ (alpha * self.eigval)
        return img + offset.view(3, 1, 1).to(img.dtype)


def train_transform(d, size: int | None = None) -> v2.Compose:
    """Steps 2-6 on a decoded uint8 CHW tensor; `d` is the config's data section, `size` the
    crop side (default data.image_size; random-shape training changes it per epoch)."""
    steps = [
        v2.RandomResizedCrop(size or d.image_size, scale=tuple(d.random_area), ratio=tuple(d.random_aspect),
                             antialias=d.antialias),
        v2.RandomHorizontalFlip(0.5),
    ]
    if d.brightness or d.contrast or d.saturation or d.hue:
        # torchvision applies the four in a random order, as gluon-cv's RandomColorJitter does
        steps.append(v2.ColorJitter(d.brightness, d.contrast, d.saturation, d.hue))
    steps.append(v2.ToDtype(torch.float32, scale=False))  # uint8 -> float in [0, 255]
    if d.pca_lighting > 0:
        steps.append(PCALighting(d.pca_lighting))
    steps.append(v2.Normalize(MEAN, STD))
    return v2.Compose(steps)


def val_transform(d) -> v2.Compose:
    """Resize the shorter side to val_resize, centre crop image_size, normalize."""
    return v2.Compose([
        v2.Resize(d.val_resize, antialias=d.antialias),
        v2.CenterCrop(d.image_size),
        v2.ToDtype(torch.float32, scale=False),
        v2.Normalize(MEAN, STD),
    ])
