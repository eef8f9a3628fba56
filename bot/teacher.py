"""The distillation teacher (section 5.3): a run's checkpoint, or a timm model name.

The teacher is frozen: eval mode (BN uses its running statistics), no gradients, on the
run's device. Nothing is downloaded unless the user names a timm model and has network.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bot.errors import UserError


def load_teacher(spec: str, num_classes: int, device, channels_last: bool = False) -> torch.nn.Module:
    if Path(spec).is_file():
        model, classes = _from_checkpoint(Path(spec))
    else:
        model, classes = _from_timm(spec)
    if classes != num_classes:
        raise UserError(f"loss.distill_teacher {spec} predicts {classes} classes but the data has {num_classes}")
    model.eval().requires_grad_(False).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _from_checkpoint(path: Path):
    from bot import config
    from bot.models import build_model

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        cfg = config.from_dict(ckpt["config"])
        classes = int(ckpt["num_classes"])
        model = build_model(cfg, num_classes=classes)
        model.load_state_dict(ckpt["model"])
    except UserError:
        raise
    except Exception as e:  # a truncated file, a foreign checkpoint: one line, not a traceback
        raise UserError(f"loss.distill_teacher {path} is not a readable bot checkpoint "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return model, classes


def _from_timm(name: str):
    import timm

    if not timm.is_model(name):
        raise UserError(f"loss.distill_teacher {name!r} is neither a checkpoint file nor a timm model name")
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as e:
        raise UserError(f"loss.distill_teacher: timm could not load pretrained weights for {name!r} "
                        f"(offline? give a checkpoint path instead): {str(e).splitlines()[0]}") from None
    return model, model.num_classes
