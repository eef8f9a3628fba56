"""A trained model read back from a checkpoint or a run folder.

The one place where evaluate, predict, export, fine-tuning (`model.init_from`) and the
distillation teacher read a checkpoint and check its classes. It is read by
bot/artifacts/checkpoint.py's `load` (weights_only: nothing in the file runs); a TorchScript or
safetensors file, a bare tensor or state_dict is named as what it is, in one line.

A checkpoint is what the trainer writes (`best.pt`, `last.pt`): the weights under `model`
(a plain state_dict), the resolved `config`, `num_classes` and `classes` (the class folder
names in label order). Where the run kept a moving average of its weights, it is under
`ema`: a state_dict with the same keys as `model`.

evaluate and predict also read the ONNX models of scripts/quantize.py and scripts/export.py
(bot/artifacts/onnx_model.py);
everything that needs torch weights (export, fine-tuning, distillation) refuses it.
A slimmed checkpoint (scripts/slim.py) has narrower layers than its config builds: `build`
gives the model the shapes of its weights (bot/models/slimmable.py). Slimming narrows only the
channels inside residual blocks, so every other layer's output channels must be what the
config builds: weights of another `model.width` (a config and weights that do not belong
together) are one line naming the first tensor that differs, not a model built to fit them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from bot import config
from bot.errors import UserError
from bot.artifacts import checkpoint
from bot.artifacts.checkpoint import BEST, LAST
from bot.models import network_name

EMA_KEY = "ema"


@dataclass
class Trained:
    path: Path
    cfg: config.Config
    num_classes: int
    classes: list[str] | None  # None: a checkpoint written before class names were kept
    weights: dict
    ema: dict | None = None
    info: dict = field(default_factory=dict)  # epoch, step, top1, data (its samples) where the checkpoint has them
    onnx: bool = False  # an ONNX model (scripts/quantize.py, scripts/export.py): `weights` is empty

    def describe(self) -> str:
        m = self.cfg.model
        where = ", ".join(f"{k} {self.info[k]:.2f}" if isinstance(self.info[k], float) else f"{k} {self.info[k]}"
                          for k in ("step", "top1") if k in self.info)
        kind = f"{self.info['from']}, " if self.onnx else ""  # e.g. "int8 ONNX of runs/x/best.pt"
        return f"{self.path} ({kind}{network_name(m)}, {self.num_classes} classes{', ' + where if where else ''})"


def checkpoint_path(spec: str | Path, what: str) -> Path:
    """A checkpoint file, or a run folder's best.pt (its last.pt when there is no best.pt)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise UserError(f"{what} {spec} is a folder with neither {BEST} nor {LAST}")
    if not path.is_file():
        raise UserError(f"{what} {spec} does not exist (give a checkpoint file or a run folder)")
    return path


def not_a_checkpoint(obj) -> str | None:
    """What a loaded file is when it is not a bot checkpoint, in words; None when it is one."""
    if isinstance(obj, torch.Tensor):
        return "a bare tensor, not a checkpoint (bot's best.pt or last.pt)"
    if not isinstance(obj, dict):
        return f"a pickled {type(obj).__name__}, not a checkpoint (bot's best.pt or last.pt)"
    if "model" not in obj and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return ("a bare state_dict without config or classes (e.g. the .pth of scripts/export.py "
                "--format timm): give the run's best.pt")
    missing = [k for k in ("model", "num_classes", "config") if k not in obj]
    if missing:
        return f"not a bot checkpoint (no {', '.join(repr(k) for k in missing)})"
    return None


def read(spec: str | Path, what: str = "checkpoint", onnx: bool = False) -> Trained:
    """The checkpoint at `spec` (a file or a run folder), or one UserError line naming it.

    `what` names the argument in messages (e.g. "model.init_from"); `onnx`: an ONNX model of
    scripts/quantize.py or scripts/export.py is accepted too."""
    path = checkpoint_path(spec, what)
    if path.suffix == ".onnx":
        if not onnx:
            raise UserError(f"{what} {path} is an ONNX model: give the bot checkpoint (.pt) it was made from")
        from bot.artifacts.onnx_model import read_metadata

        cfg, classes, source = read_metadata(path, what)
        return Trained(path, cfg, len(classes), classes, {}, info={"from": source}, onnx=True)
    try:
        ckpt = checkpoint.load(path, what)
    except UserError:
        raise
    except Exception as e:  # a truncated file, a foreign format: one line, not a traceback
        detail = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"{what} {path} is not a readable bot checkpoint ({type(e).__name__}: {detail})") from None
    problem = not_a_checkpoint(ckpt)
    if problem:
        raise UserError(f"{what} {path} is {problem}")
    weights, num_classes, tree = ckpt["model"], int(ckpt["num_classes"]), ckpt["config"]
    try:
        cfg = config.from_dict(tree)
    except UserError as e:
        raise UserError(f"{what} {path}: its config does not load here ({e})") from None
    classes = ckpt.get("classes")
    info = {k: ckpt[k] for k in ("epoch", "step", "top1", "data") if k in ckpt}
    return Trained(path, cfg, num_classes, list(classes) if classes is not None else None, weights,
                   ckpt.get(EMA_KEY), info)


def build(trained: Trained, ema: bool = False) -> torch.nn.Module:
    """The checkpoint's model in eval mode, with its weights (or their moving average)."""
    from bot.models import build_model
    from bot.models.slimmable import fit_shapes

    if trained.onnx:
        if ema:
            raise UserError(f"{trained.path} is an ONNX model: it has no moving average, leave out --ema")
        from bot.artifacts.onnx_model import OnnxModule

        return OnnxModule(trained.path).eval()
    if ema and trained.ema is None:
        raise UserError(f"{trained.path} has no moving average of the weights (key {EMA_KEY!r}): "
                        f"train with model.ema_decay, or leave out --ema")
    model = build_model(trained.cfg, num_classes=trained.num_classes)
    check_shapes(trained, model)
    fit_shapes(model, trained.weights)
    if trained.cfg.model.qat:
        from bot.models.qat import prepare_qat

        model = prepare_qat(model, trained.cfg.model.qat_bits)
    try:
        model.load_state_dict(trained.ema if ema else trained.weights)
    except RuntimeError as e:
        raise UserError(f"{trained.path}: weights do not fit {network_name(trained.cfg.model)} "
                        f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})") from None
    if trained.cfg.model.qat:  # its quantizers as constants: any export of it writes the int8 (QDQ) graph
        from bot.models.qat import freeze

        freeze(model)
    return model.eval()


def check_shapes(trained: Trained, model: torch.nn.Module) -> None:
    """UserError unless the weights fit `model` (built from their config) but for slimming: the
    layers of slimmed_pairs may be narrower, and the layers after them take fewer inputs, so
    every other tensor must have the output channels (first dimension) the config builds."""
    from bot.models.slimmable import slimmed_pairs

    slimmable = {id(m) for pair in slimmed_pairs(model) for m in pair}
    modules = dict(model.named_modules())
    for key, want in model.state_dict().items():
        got = trained.weights.get(key)
        module = modules.get(key.rpartition(".")[0])
        if not isinstance(got, torch.Tensor) or not want.dim() or id(module) in slimmable \
                or got.shape[:1] == want.shape[:1]:
            continue
        m = trained.cfg.model
        raise UserError(f"{trained.path}: its weights do not fit its config ({network_name(m)}, "
                        f"model.width={m.width:g}): {key} is {tuple(got.shape)}, the config builds "
                        f"{tuple(want.shape)}")


def class_difference(theirs: list[str] | None, their_count: int, ours: list[str]) -> str | None:
    """None when a model trained on `theirs` predicts labels in the order of `ours`; else the
    first difference in words. Without names (an old checkpoint) only the count is compared."""
    if their_count != len(ours):
        return f"{their_count} classes against {len(ours)}"
    if theirs is None:
        return None
    for label, (a, b) in enumerate(zip(theirs, ours)):
        if a != b:
            return f"class {label} is {a!r} against {b!r}"
    return None


def check_classes(trained: Trained, classes: list[str], what: str, where: str) -> None:
    """UserError naming the first class that differs between the checkpoint and `where`."""
    diff = class_difference(trained.classes, trained.num_classes, classes)
    if diff is not None:
        raise UserError(f"{what} {trained.path} was trained on other classes than {where}: {diff}")
