"""Fine-tuning (section 6, transfer learning): `model.init_from` starts a run from the
weights of another run.

Every weight is taken over except the classifier when the classes differ (in count, or
in names and order: a classifier's row k means the checkpoint's class k); then the new
classifier keeps the initialisation of this run's config. Any other difference (another
arch or variant, another model.width) is an error naming the first key that differs,
never a partial load.
"""

from __future__ import annotations

from torch import nn

from bot.errors import UserError
from bot.artifacts import trained
from bot.models import network_name
from bot.models.slimmable import fit_shapes

WHAT = "model.init_from"


def classifier_keys(model: nn.Module) -> set[str]:
    """The state_dict keys of the final classifier (timm models name it: get_classifier())."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else model.fc
    prefix = next(name for name, module in model.named_modules() if module is head)
    return {f"{prefix}.{k}" for k in head.state_dict()}


def first_mismatch(ours: dict, theirs: dict, skip: set[str]) -> str | None:
    """The first key (in this model's order) whose presence or shape differs, in words."""
    for key in list(ours) + [k for k in theirs if k not in ours]:
        if key in skip:
            continue
        if key not in theirs:
            return f"{key} is missing from the checkpoint"
        if key not in ours:
            return f"{key} is in the checkpoint but not in this model"
        if tuple(ours[key].shape) != tuple(theirs[key].shape):
            return f"{key} has shape {list(theirs[key].shape)} in the checkpoint but {list(ours[key].shape)} here"
    return None


# must match between the checkpoint's config and this run's: fit_shapes (for slimmed
# checkpoints) would otherwise quietly give the model the checkpoint's layer widths. Another
# arch or variant already fails on a weight's name or shape.
SAME = ("width",)


def init_from(model: nn.Module, spec: str, classes: list[str], say: bool = True, ours=None) -> None:
    """Load the weights of checkpoint or run folder `spec` into `model` (built for `classes`);
    `say`: print what was loaded (the main process); `ours`: this run's config.model, compared
    with the checkpoint's on SAME."""
    source = trained.read(spec, WHAT)
    for key in SAME if ours is not None else ():
        theirs, here = getattr(source.cfg.model, key), getattr(ours, key)
        if theirs != here:
            raise UserError(f"{WHAT} {source.path} was trained with model.{key}={theirs} but this run has "
                            f"model.{key}={here}: set model.{key}={theirs} to fine-tune it")
    fit_shapes(model, source.weights)  # a slimmed checkpoint (scripts/slim.py): its narrower layers
    ours, theirs = model.state_dict(), source.weights
    head = classifier_keys(model)
    differ = trained.class_difference(source.classes, source.num_classes, classes)
    problem = first_mismatch(ours, theirs, head if differ else set())
    if problem:
        m = source.cfg.model
        raise UserError(f"{WHAT} {source.path} ({network_name(m)}) does not fit this model: {problem}")
    if differ:
        theirs = {k: v for k, v in theirs.items() if k not in head}
    model.load_state_dict(theirs, strict=not differ)
    if say:
        print(f"{WHAT}: weights of {source.describe()}"
              + (f"; classifier re-initialised ({differ})" if differ else "; classifier kept (same classes)"),
              flush=True)
