"""An ONNX model written by scripts/quantize.py, read back where a checkpoint is read.

The int8 model is an ONNX graph run by onnxruntime, so it has no torch state_dict. It
carries what evaluate and predict need from the checkpoint it came from in the ONNX
file's own metadata (`metadata_props`): the resolved config, the class names and their
count. `OnnxModule` runs the graph behind the forward of a torch module, so the same
evaluation and prediction code measures both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from bot import config
from bot.errors import UserError

# metadata_props keys written into the ONNX file
CONFIG, CLASSES, SOURCE = "bot.config", "bot.classes", "bot.source"


def metadata(cfg: config.Config, classes: list[str], source: str) -> dict[str, str]:
    return {CONFIG: json.dumps(cfg.to_dict()), CLASSES: json.dumps(classes), SOURCE: source}


def session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session; `threads` intra-op threads (None: onnxruntime's choice)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_metadata(path: Path, what: str) -> tuple[config.Config, list[str], str]:
    """(config, classes, source checkpoint) of an ONNX file written by scripts/quantize.py."""
    try:
        props = session(path).get_modelmeta().custom_metadata_map
    except Exception as e:
        raise UserError(f"{what} {path} is not a readable ONNX model ({type(e).__name__})") from None
    if CONFIG not in props or CLASSES not in props:
        raise UserError(f"{what} {path} is an ONNX model without bot's metadata "
                        f"(scripts/quantize.py writes it; an export from scripts/export.py has none)")
    return config.from_dict(json.loads(props[CONFIG])), json.loads(props[CLASSES]), props.get(SOURCE, "")


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
