"""A run's evaluation preprocessing in the words other runtimes use.

The val transform (bot/data/transforms.py `val_transform`) resizes the shorter side to
data.val_resize (bilinear), centre-crops data.image_size and normalizes with data.mean and
data.std in the 0-255 scale (the paper's ImageNet values by default); under data.crop=padded
(CIFAR) it takes each image as it is, data.image_size square, and normalizes it. timm
describes the same steps with its `pretrained_cfg` keys (input_size, crop_pct, crop_mode,
interpolation, and mean/std in the 0-1 scale of ToTensor), which the hub folder's config.json
carries (bot/export/hub.py); an ONNX export carries them as plain metadata
(bot/artifacts/onnx_model.py).
"""

from __future__ import annotations

import math


def crop_pct(image_size: int, val_resize: int) -> float:
    """timm's crop_pct for a centre crop of `image_size` from a shorter side of `val_resize`.

    timm resizes to floor(image_size / crop_pct); image_size / val_resize is rounded in
    binary and that floor can then land one pixel short (e.g. 32 / 37), so the value is
    lowered to the largest float that gives `val_resize` back."""
    pct = image_size / val_resize
    while math.floor(image_size / pct) < val_resize:
        pct = math.nextafter(pct, 0.0)
    return pct


def timm_data_config(d) -> dict:
    """timm's data config (`pretrained_cfg` keys) of data section `d`'s val transform.

    data.crop=padded evaluates an image_size square image as it is: crop_pct 1 makes timm
    resize such an image to its own size and crop all of it, which leaves it unchanged."""
    padded = d.crop == "padded"
    return {
        "input_size": [3, d.image_size, d.image_size],
        "interpolation": "bilinear",
        "crop_pct": 1.0 if padded else crop_pct(d.image_size, d.val_resize),
        "crop_mode": "center",
        "mean": [m / 255 for m in d.mean],
        "std": [s / 255 for s in d.std],
    }


def in_words(d) -> str:
    """The val transform as one sentence, for a reader or a runtime without bot."""
    mean = ", ".join(f"{m / 255:.4f}" for m in d.mean)
    std = ", ".join(f"{s / 255:.4f}" for s in d.std)
    if d.crop == "padded":
        geometry = f"take the image as it is, {d.image_size}x{d.image_size} (no resize, no crop)"
    else:
        filtered = "antialiased" if d.antialias else "not antialiased"
        geometry = (f"resize the shorter side to {d.val_resize} px (bilinear, {filtered}); centre crop "
                    f"{d.image_size}x{d.image_size}")
    return (f"RGB; {geometry}; scale to [0, 1]; subtract mean ({mean}) and divide by std ({std}) per channel; "
            f"float32 NCHW")
