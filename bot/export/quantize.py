"""Post-training static int8 quantization for CPU inference (Jacob et al., CVPR 2018).

onnxruntime's `quantize_static` on the model exported to ONNX (bot/export/export.py), with
every BatchNorm folded into its conv first (`folded_batchnorms` checks it): int8 weights per
output channel, uint8 activations calibrated (min/max) on training images through the val
transform, in the QDQ format. Why this path and not torch's own: docs/compress.md.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bot.artifacts import onnx_model


def calibration_images(cfg, n: int, batch: int = 32) -> list[torch.Tensor]:
    """`n` training images spread evenly over the sorted file list (so over all classes),
    through the val transform (what the model sees at inference), in batches."""
    from bot.data.folder import dataset_root, scan_split
    from bot.data.torch_loader import decode
    from bot.data.transforms import val_transform

    split = scan_split(dataset_root(cfg.data.root), "train")
    picks = np.linspace(0, len(split) - 1, num=min(n, len(split))).round().astype(int)
    transform = val_transform(cfg.data)
    images = [transform(decode(split.files[i])) for i in picks]
    return [torch.stack(images[i:i + batch]) for i in range(0, len(images), batch)]


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol: one input dict per call, then None."""

    def __init__(self, batches: list[torch.Tensor], name: str):
        self.items = iter([{name: b.numpy()} for b in batches])

    def get_next(self):
        return next(self.items, None)


def folded_batchnorms(path: Path) -> int:
    """How many BatchNormalization nodes are left in an ONNX graph (0 once folded)."""
    import onnx

    return sum(node.op_type == "BatchNormalization" for node in onnx.load(str(path)).graph.node)


def quantize_onnx(fp32: Path, out: Path, batches: list[torch.Tensor], meta: dict[str, str],
                  reduce_range: bool = False) -> None:
    """The int8 model of ONNX model `fp32` at `out`, calibrated on `batches`, with `meta` in
    its metadata_props. `reduce_range`: weights on [-64, 64] (7 bits), onnxruntime's remedy for its
    u8s8 kernel on x86 CPUs without VNNI, which adds pairs of products in 16 bits and saturates
    (2 x 255 x 127 > 32767; bot/models/qat.py)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        quant_pre_process(str(fp32), str(folded), skip_symbolic_shape=True)
        left = folded_batchnorms(folded)
        if left:
            raise RuntimeError(f"{left} BatchNorm node(s) were not folded into a conv")
        name = onnx_model.session(folded).get_inputs()[0].name
        quantize_static(str(folded), str(out), _Calibration(batches, name), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    onnx_model.add_metadata(out, meta)


def qat_onnx(model: torch.nn.Module, image_size: int, out: Path, meta: dict[str, str]) -> float:
    """The int8 model of a QAT network (bot/models/qat.py) at `out`: its fake-quant written as
    ONNX QuantizeLinear/DequantizeLinear with the ranges it learned, integer weights per channel
    with the BNs folded, the QDQ format of quantize_onnx, in which onnxruntime runs every conv as
    an integer QLinearConv; with `meta` in its metadata_props.
    Returns the largest logit difference between onnxruntime and the fake-quant model."""
    import onnxruntime

    from bot.artifacts.outputs import written_aside
    from bot.models.qat import freeze

    freeze(model)
    example = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        program = torch.onnx.export(model, (example,), input_names=["images"], output_names=["logits"],
                                    dynamo=True, dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
    with written_aside(out) as (tmp,):
        program.save(str(tmp))
        onnx_model.add_metadata(tmp, meta)
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        x = torch.randn(3, 3, image_size, image_size)
        with torch.no_grad():
            return float((model(x) - torch.as_tensor(session.run(None, {"images": x.numpy()})[0])).abs().max())


def latency_ms(model: torch.nn.Module, image_size: int, batch: int, repeats: int = 20) -> float:
    """Median milliseconds per image of `model` on a batch of `batch` random images, after
    three warm-up passes."""
    x = torch.randn(batch, 3, image_size, image_size)
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            start = time.perf_counter()
            model(x)
            if i >= 3:
                times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / batch
