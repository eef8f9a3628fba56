"""The distillation teacher (section 5.3): a run's checkpoint, or a timm model name.

The teacher is frozen: eval mode (BN uses its running statistics), no gradients, on the
run's device. Nothing is downloaded unless the user names a timm model and has network.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bot.errors import UserError
from bot.artifacts import trained

WHAT = "loss.distill_teacher"


def load_teacher(spec: str, classes: list[str], device, channels_last: bool = False) -> torch.nn.Module:
    """`classes`: the data's class names in label order. A checkpoint's own names must be the
    same in the same order, or the teacher's soft labels would be another class's."""
    if Path(spec).exists():
        teacher = trained.read(spec, WHAT)
        trained.check_classes(teacher, classes, WHAT, "the data")
        model = trained.build(teacher)
    else:
        model = _from_timm(spec)
        if model.num_classes != len(classes):  # timm names no classes: only the count can be compared
            raise UserError(f"{WHAT} {spec} predicts {model.num_classes} classes but the data has {len(classes)}")
    model.eval().requires_grad_(False).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _from_timm(name: str):
    import timm

    if not timm.is_model(name):
        raise UserError(f"{WHAT} {name!r} is neither a checkpoint file nor a timm model name")
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as e:
        raise UserError(f"{WHAT}: timm could not load pretrained weights for {name!r} "
                        f"(offline? give a checkpoint path instead): {str(e).splitlines()[0]}") from None
