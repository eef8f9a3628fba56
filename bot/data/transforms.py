"""The paper's augmentation on torchvision transforms v2 (section 2; PAPER.md section 1), and
CIFAR's (data.crop=padded).

PCA lighting, the float colour jitter and the padded crop are written here: torchvision has
no AlexNet lighting noise, its jitter rounds to uint8, and its RandomCrop draws from no
generator the DALI loader can share. Images are float in the paper's 0-255 scale from the
jitter to Normalize, so the lighting offset, the mean and the std are the numbers as printed.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from bot.data.constants import EIGVAL, EIGVEC, GREY
from bot.errors import UserError


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


def _grey(img: torch.Tensor) -> torch.Tensor:
    return (img * torch.tensor(GREY, dtype=img.dtype).view(3, 1, 1)).sum(-3, keepdim=True)


class FloatColorJitter(v2.ColorJitter):
    """torchvision's ColorJitter (the same draws, the same random order of the four) on float
    pixels in 0-255, nothing rounded or clamped, as the authors' MXNet jitter
    (mx.image.ColorJitterAug) and the DALI loader (docs/data.md). Hue, off in the paper, works
    on the image clamped to [0, 1], where torchvision's HSV conversion is defined."""

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        x = inpt
        b, c, s, h = (params[f"{k}_factor"] for k in ("brightness", "contrast", "saturation", "hue"))
        for fn_id in params["fn_idx"].tolist():
            if fn_id == 0 and b is not None:
                x = x * b
            elif fn_id == 1 and c is not None:
                x = c * x + (1 - c) * _grey(x).mean((-2, -1), keepdim=True)
            elif fn_id == 2 and s is not None:
                x = s * x + (1 - s) * _grey(x)
            elif fn_id == 3 and h is not None:
                x = F.adjust_hue(x.clamp(0, 255) / 255, h) * 255
        return x


def padded_window(width: int, height: int, size: int, padding: int, generator=None) -> tuple[int, int, bool]:
    """(left, top, flip) of data.crop=padded: a size x size window of the image zero-padded by
    `padding` on each side, its corner uniform in [0, side + 2 padding - size] (0..2 padding
    for a size x size image) per axis, then a mirror with p 1/2. From `generator`, torch's own
    by default: the torch loader seeds it per sample, and the DALI loader draws the same
    numbers from a generator seeded alike."""
    x = int(torch.randint(0, max(width + 2 * padding - size, 0) + 1, (1,), generator=generator))
    y = int(torch.randint(0, max(height + 2 * padding - size, 0) + 1, (1,), generator=generator))
    return x, y, bool(torch.rand(1, generator=generator) < 0.5)


class PaddedCrop(torch.nn.Module):
    """CIFAR's crop and flip (gluon-cv's RandomCrop(32, pad=4) and RandomFlipLeftRight, as
    torchvision's RandomCrop(32, padding=4)): zero-padded in pixel values, before Normalize."""

    def __init__(self, size: int, padding: int):
        super().__init__()
        self.size, self.padding = size, padding

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        height, width = img.shape[-2:]
        x, y, flip = padded_window(width, height, self.size, self.padding)
        p, out = self.padding, img.new_zeros(*img.shape[:-2], self.size, self.size)
        # the window in the image's own coordinates, and the part of it the image covers
        left, top = x - p, y - p
        x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + self.size, width), min(top + self.size, height)
        if x1 > x0 and y1 > y0:
            out[..., y0 - top:y1 - top, x0 - left:x1 - left] = img[..., y0:y1, x0:x1]
        return out.flip(-1) if flip else out


def wrong_side(width: int, height: int, size: int) -> str | None:
    """Why data.crop=padded cannot evaluate a width x height image ("is ...", to follow its name), or None."""
    if width == height == size:
        return None
    return (f"is {width}x{height}; data.crop=padded evaluates each image as it is (no resize, no crop), "
            f"so it must be data.image_size ({size}x{size})")


class AsItIs(torch.nn.Module):
    """Evaluation under data.crop=padded: the image unchanged, or a UserError if it is not size x size."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        why = wrong_side(img.shape[-1], img.shape[-2], self.size)
        if why:
            raise UserError(f"image {why}")
        return img


def normalize(d) -> v2.Normalize:
    """(x - data.mean) / data.std per channel, both in the 0-255 scale."""
    return v2.Normalize(list(d.mean), list(d.std))


def train_transform(d, size: int | None = None) -> v2.Compose:
    """Steps 2-6 on a decoded uint8 CHW tensor; `d` is the config's data section, `size` the
    crop side (default data.image_size; random-shape training changes it per epoch)."""
    size = size or d.image_size
    if d.crop == "padded":
        steps = [PaddedCrop(size, d.padding)]
    else:
        steps = [v2.RandomResizedCrop(size, scale=tuple(d.random_area), ratio=tuple(d.random_aspect),
                                      antialias=d.antialias),
                 v2.RandomHorizontalFlip(0.5)]
    steps.append(v2.ToDtype(torch.float32, scale=False))  # uint8 -> float in [0, 255]
    if d.brightness or d.contrast or d.saturation or d.hue:
        # in a random order, as gluon-cv's RandomColorJitter
        steps.append(FloatColorJitter(d.brightness, d.contrast, d.saturation, d.hue))
    if d.pca_lighting > 0:
        steps.append(PCALighting(d.pca_lighting))
    steps.append(normalize(d))
    return v2.Compose(steps)


def val_transform(d) -> v2.Compose:
    """Resize the shorter side to val_resize, centre crop image_size, normalize; under
    data.crop=padded the image as it is (it must be image_size square), normalized."""
    if d.crop == "padded":
        geometry = [AsItIs(d.image_size)]
    else:
        geometry = [v2.Resize(d.val_resize, antialias=d.antialias), v2.CenterCrop(d.image_size)]
    return v2.Compose([*geometry, v2.ToDtype(torch.float32, scale=False), normalize(d)])
