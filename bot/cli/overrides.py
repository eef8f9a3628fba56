"""A trained model's own config with the `dotted.key=value` overrides of evaluate and predict.

The checkpoint's config is the starting point, so with no overrides a model is measured or
applied exactly as its run evaluated it (val resize and crop, precision).
"""

from __future__ import annotations

import re
from pathlib import Path

from bot import config
from bot.errors import UserError
from bot.artifacts import trained

# `data.image_size=48`: a dotted key and a value; how a command line tells an override from a path
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def is_override(item: str) -> bool:
    """An override, unless a file of that name exists (a path wins)."""
    return bool(OVERRIDE.match(item)) and not Path(item).exists()


def keys(overrides: list[str]) -> set[str]:
    return {item.split("=", 1)[0].strip() for item in overrides}


def checkpoint_config(model: trained.Trained, overrides: list[str], size: int | None = None) -> config.Config:
    """The checkpoint's config with `overrides`, at test resolution `size` (None: as it is).
    A new size (from `size` or data.image_size) derives the val resize again (256/224 of it,
    bot/config_checks.py) unless data.val_resize is given too."""
    tree = model.cfg.to_dict()
    for item in overrides:
        config.apply_override(tree, item)
    given = keys(overrides)
    if size is not None:
        tree["data"]["image_size"] = size
    if "data.val_resize" not in given and (size is not None or "data.image_size" in given):
        tree["data"]["val_resize"] = None
    return config.from_dict(tree)


def check_onnx_size(model: trained.Trained, sizes: list[int | None], overrides: list[str]) -> None:
    """An ONNX model runs at the one input size it was exported at: another is one line."""
    if not model.onnx:
        return
    size = model.cfg.data.image_size
    other = [s for s in sizes if s not in (None, size)]
    other += [value.strip() for key, _, value in (o.partition("=") for o in overrides)
              if key.strip() == "data.image_size" and value.strip() != str(size)]
    if other:
        raise UserError(f"{model.path} is an ONNX model of fixed input size {size}: it cannot be tested at "
                        f"{other[0]}; use its checkpoint ({model.info['from']}) at other sizes")
