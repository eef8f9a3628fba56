"""A trained model written for deployment: ONNX, TorchScript, or timm-ready weights.

Each export is checked after writing against the model it came from, on random input:
the largest absolute difference of the logits is returned, and one above the tolerance
is an error (ExportMismatch), never a warning. Files are written aside and renamed once
checked, so a failed export never replaces an earlier good one. Each format is serialised in
memory and its bytes written by bot/artifacts/outputs.py (`write_bytes`), so that a full disk is
one line and the file gets the usual mode: met by a full disk, torch's C++ file writer aborts
the interpreter and safetensors' raises without an errno, and safetensors' file is 0600.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch

from bot.artifacts.outputs import write_bytes, written_aside
from bot.models import VARIANTS, widths


class ExportMismatch(Exception):
    """The exported model does not compute what the trained one does."""


def max_abs_diff(ours: torch.Tensor, theirs) -> float:
    return (torch.as_tensor(theirs).float() - ours.float()).abs().max().item()


def check(ours: torch.Tensor, theirs, what: str) -> float:
    """Float32 logits of the same network agree to ~1e-5 (summation order differs between
    runtimes); a wrong layer or weight is off by far more than this tolerance."""
    diff = max_abs_diff(ours, theirs)
    tol = 1e-4 + 1e-4 * ours.abs().max().item()
    if not diff <= tol:
        raise ExportMismatch(f"{what}: logits differ from the trained model by {diff:.3g} (tolerance {tol:.3g})")
    return diff


def to_onnx(model, image_size: int, path: Path, meta: dict[str, str] | None = None) -> float:
    """ONNX with a dynamic batch axis (torch's export-based exporter), checked with onnxruntime
    at a batch size other than the one exported; `meta` goes into its metadata_props
    (bot/artifacts/onnx_model.py `metadata`: what evaluate, predict and other runtimes read)."""
    import onnxruntime

    example = torch.randn(2, 3, image_size, image_size)
    program = torch.onnx.export(model, (example,), input_names=["images"], output_names=["logits"], dynamo=True,
                                dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
    proto = program.model_proto  # what program.save writes for a model under protobuf's 2 GB
    for key, value in (meta or {}).items():
        proto.metadata_props.add(key=key, value=value)
    with written_aside(path) as (tmp,):
        write_bytes(tmp, proto.SerializeToString())
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        x = torch.randn(3, 3, image_size, image_size)
        with torch.no_grad():
            return check(model(x), session.run(None, {"images": x.numpy()})[0], "ONNX (onnxruntime)")


def to_torchscript(model, image_size: int, path: Path) -> float:
    """torch.jit.script (the ResNet has no data-dependent control flow, so this is exact), checked
    by loading the file back."""
    with written_aside(path) as (tmp,), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+ marks TorchScript as deprecated
        buffer = io.BytesIO()  # saved to a path, a full disk aborts the interpreter in C++
        torch.jit.save(torch.jit.script(model), buffer)
        write_bytes(tmp, buffer.getvalue())
        loaded = torch.jit.load(str(tmp))
        x = torch.randn(3, 3, image_size, image_size)
        with torch.no_grad():
            return check(model(x), loaded(x), "TorchScript")


def timm_recipe(arch: str, variant: str | None, num_classes: int, width: float = 1.0,
                act: str = "relu") -> tuple[str, dict, bool]:
    """(timm model name, extra create_model kwargs, whether ResNet-A's stride move is needed).

    timm registers resnetXX (B), resnet50c/101c/152c (C) and resnetXXd (D); bot builds them
    with the same constructor kwargs (bot/models/resnet.py VARIANTS), so the state_dict keys match.
    Where timm registers no name (ResNet-18/34-C) the kwargs say it. timm has no ResNet-A:
    it is B's weights with the stride of the first bottleneck of stages 2-4 on conv1.
    A `model.width` other than 1 reaches timm as its `channels` and `stem_width` kwargs, a
    `model.act` other than ReLU as `act_layer`. Inception-V3 and MobileNet v1 are timm's own
    networks with the kwargs bot/models/other.py builds them with (MobileNet's act_layer always:
    timm's default is ReLU6)."""
    import timm

    from bot.models.other import OTHER_ARCHS

    if arch in OTHER_ARCHS:
        name, kwargs = OTHER_ARCHS[arch]
        return name, {"num_classes": num_classes, **kwargs, "act_layer": act}, False
    extra = {**widths(variant, width), **({"act_layer": act} if act != "relu" else {})}
    suffix = {"C": "c", "D": "d"}.get(variant, "")
    if suffix and timm.is_model(arch + suffix):
        return arch + suffix, {"num_classes": num_classes, **extra}, False
    needs_stride = variant == "A" and arch not in ("resnet18", "resnet34")
    return arch, {"num_classes": num_classes, **VARIANTS[variant], **extra}, needs_stride


def stride_on_first_conv(timm_model) -> None:
    """What a timm ResNet-50/101/152 needs to become ResNet-A (section 4, figure 2a)."""
    from bot.models.resnet import stride_on_first_conv

    stride_on_first_conv(timm_model)


def to_timm(model, arch: str, variant: str | None, classes: list[str], image_size: int, path: Path,
            width: float = 1.0, act: str = "relu") -> tuple[float, str]:
    """`path` (.safetensors) and the same state_dict as `path.with_suffix(".pth")`, loadable by
    `timm.create_model(..., checkpoint_path=...)`; checked by doing exactly that.
    Returns (max abs diff, the create_model call)."""
    import timm
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    name, kwargs, needs_stride = timm_recipe(arch, variant, len(classes), width, act)
    x = torch.randn(3, 3, image_size, image_size)
    diffs = []
    with written_aside(path, path.with_suffix(".pth")) as files:
        write_bytes(files[0], save(state, metadata={"classes": json.dumps(classes), "arch": arch,
                                                    "variant": str(variant)}))
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_bytes(files[1], buffer.getvalue())
        for file in files:
            theirs = timm.create_model(name, checkpoint_path=str(file), **kwargs).eval()
            if needs_stride:
                stride_on_first_conv(theirs)
            with torch.no_grad():
                diffs.append(check(model(x), theirs(x), f"timm {name} from {file.suffix}"))
    args = ", ".join([repr(name)] + [f"{k}={v!r}" for k, v in kwargs.items()] + [f"checkpoint_path={str(path)!r}"])
    call = f"model = timm.create_model({args})"
    if needs_stride:
        call += ("\nfor stage in (model.layer2, model.layer3, model.layer4):  # ResNet-A: stride 2 on the 1x1 conv1"
                 "\n    stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)")
    return max(diffs), call


def slimmed(model, cfg, num_classes: int) -> bool:
    """Whether `model` has other layer widths than its config builds (scripts/slim.py): timm's
    constructors take one width per stage, so such a network has no timm name or kwargs."""
    from bot.models import build_model

    fresh = build_model(cfg, num_classes).state_dict()
    return any(k in fresh and tuple(v.shape) != tuple(fresh[k].shape) for k, v in model.state_dict().items())
