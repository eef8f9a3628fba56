"""An ONNX model written by scripts/quantize.py (int8) or scripts/export.py (fp32), read
back where a checkpoint is read.

An ONNX graph run by onnxruntime has no torch state_dict. Both commands write what
evaluate and predict need from the checkpoint it came from into the ONNX file's own
metadata (`metadata_props`): the resolved config, the class names and their count
(`bot.*` keys). Beside them go plain keys that a runtime without bot reads: the class
names, the input size, the resize, the interpolation, the mean and std, and the whole
preprocessing in one sentence (bot/artifacts/preprocessing.py). `OnnxModule` runs the graph
behind the forward of a torch module, so the same evaluation and prediction code measures
both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from bot import config
from bot.errors import UserError
from bot.artifacts import preprocessing

# metadata_props keys written into the ONNX file for bot (evaluate, predict)
CONFIG, CLASSES, SOURCE, PRECISION = "bot.config", "bot.classes", "bot.source", "bot.precision"
# the plain keys, for any runtime: what the input is and what the outputs mean
PLAIN = ("class_names", "input_size", "resize_size", "interpolation", "antialias", "mean", "std", "preprocessing")


def metadata(cfg: config.Config, classes: list[str], source: str, precision: str = "int8") -> dict[str, str]:
    """The metadata_props of an ONNX model of checkpoint `source` (a path), trained with `cfg`
    on `classes`; `precision` (int8 | fp32) says which graph the file holds."""
    d, data = cfg.data, preprocessing.timm_data_config(cfg.data)
    plain = {"class_names": json.dumps(classes), "input_size": json.dumps(data["input_size"]),
             # null: the image is taken as it is (data.crop=padded, CIFAR), never resized
             "resize_size": "null" if d.crop == "padded" else str(d.val_resize), "interpolation": data["interpolation"],
             "antialias": json.dumps(d.antialias), "mean": json.dumps(data["mean"]), "std": json.dumps(data["std"]),
             "preprocessing": preprocessing.in_words(d)}
    return {CONFIG: json.dumps(cfg.to_dict()), CLASSES: json.dumps(classes), SOURCE: source, PRECISION: precision,
            **plain}


def add_metadata(path: Path, meta: dict[str, str]) -> None:
    """`meta` into the metadata_props of the ONNX file at `path` (rewritten in place)."""
    import onnx

    model = onnx.load(str(path))
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session; `threads` intra-op threads (None: onnxruntime's choice)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_metadata(path: Path, what: str) -> tuple[config.Config, list[str], str]:
    """(config, classes, what the file is in words: "int8 ONNX of runs/x/best.pt") of an ONNX
    file written by scripts/quantize.py or scripts/export.py."""
    try:
        props = session(path).get_modelmeta().custom_metadata_map
    except Exception as e:
        raise UserError(f"{what} {path} is not a readable ONNX model ({type(e).__name__})") from None
    if CONFIG not in props or CLASSES not in props:
        raise UserError(f"{what} {path} is an ONNX model without bot's metadata (scripts/export.py --format onnx "
                        f"and scripts/quantize.py write it; an export made before they did has none: export it again)")
    kind = f"{props.get(PRECISION, 'int8')} ONNX of {props.get(SOURCE, '?')}"
    return config.from_dict(json.loads(props[CONFIG])), json.loads(props[CLASSES]), kind


class OnnxModule(torch.nn.Module):
    """onnxruntime behind a torch forward: float32 NCHW images in, logits out (CPU)."""

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.session = session(self.path, threads)
        self.input = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input: x})[0]).to(images.device)
