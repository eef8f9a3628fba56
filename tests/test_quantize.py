"""int8 post-training quantization (scripts/quantize.py) through the real commands."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, run_here

# the demo recipe's ResNet-18-D at a quarter of its width, so that it learns the 4 classes in
# 80 steps: int8 is judged on a trained model, whose logits are apart
TRAIN = ["data.backend=torch", "data.image_size=32", "data.batch_size=32", "data.workers=0", "model.width=0.25",
         "schedule.epochs=10", "schedule.warmup_epochs=1", "run.log_every=10"]
VAL_IMAGES = 400


@pytest.fixture(scope="module")
def toy400(tmp_path_factory):
    """4 classes with 100 val images each: one image is 0.25 top-1 points, so "within 1 point"
    allows 4 flipped predictions."""
    out = tmp_path_factory.mktemp("toy400")
    subprocess.run([sys.executable, str(ROOT / "scripts/make_toy_data.py"), str(out), "--classes", "4",
                    "--train", "64", "--val", str(VAL_IMAGES // 4), "--size", "48"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def quantized(toy400, tmp_path_factory):
    """A trained narrow ResNet-18-D (zero gamma, ResNet-D's average-pooled shortcut) and its int8 model."""
    run = tmp_path_factory.mktemp("run")
    done = run_here("train.py", "recipes/demo.yaml", f"data.root={toy400}", f"run.out={run}", *TRAIN)
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_here("scripts/quantize.py", run, "--calib", "64", "--repeats", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    return run, done.stdout


def test_int8_keeps_top1_within_one_point_and_reloads(quantized):
    run, stdout = quantized
    fp32, int8 = json.loads((run / "best.int8.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert fp32["top1"] == pytest.approx(summary["best_top1"], abs=0.01)  # the fp32 ONNX is the checkpoint
    assert fp32["val_images"] == int8["val_images"] == VAL_IMAGES
    assert fp32["top1"] >= 60, "the model int8 is judged on did not learn the toy task"  # 68.0 (82.75 after 15 epochs)
    assert abs(int8["top1"] - fp32["top1"]) <= 1.0
    assert int8["mb"] < fp32["mb"] / 3.5  # int8 weights: a quarter of fp32's bytes, plus scales
    assert "| int8 (onnxruntime) |" in stdout
    again = run_here("scripts/evaluate.py", run / "best.int8.onnx")  # read back like a checkpoint
    assert again.returncode == 0, again.stderr[-2000:]
    (row,) = [line for line in again.stdout.splitlines() if re.match(r"\| \d", line)]
    assert row.split("|")[3].strip() == f"{int8['top1']:.2f}"
    refused = run_here("scripts/export.py", run / "best.int8.onnx", "--format", "onnx")
    assert refused.returncode == 2 and "ONNX model" in refused.stderr
    other_size = run_here("scripts/evaluate.py", run / "best.int8.onnx", "--sizes", "32,40")  # fixed 32 px input
    assert other_size.returncode == 2 and "fixed input size 32: it cannot be tested at 40" in other_size.stderr


def test_int8_logits_are_close_to_fp32(quantized, toy400):
    """Bound: 8-bit activations step by 1/255 of their calibrated range at each of ~20 layers;
    the logits stay within 10% of their own range of the fp32 ones (about 3% is typical here)."""
    from bot.data.folder import scan_split
    from bot.data.torch_loader import decode
    from bot.data.transforms import val_transform
    from bot.artifacts import trained

    run, _ = quantized
    source, int8 = trained.read(run / "best.pt"), trained.read(run / "best.int8.onnx", onnx=True)
    assert int8.classes == source.classes and int8.cfg.to_dict() == source.cfg.to_dict()
    split = scan_split(toy400, "val")
    transform = val_transform(source.cfg.data)
    x = torch.stack([transform(decode(f)) for f in split.files[::10]])
    with torch.no_grad():
        ref, got = trained.build(source)(x), trained.build(int8)(x)
    spread = (ref.max() - ref.min()).item()
    assert (got - ref).abs().max().item() <= 0.1 * spread


def test_batchnorm_folding_with_zero_gamma_and_average_pooled_shortcut(tmp_path):
    """Exactly-zero gammas (zero gamma, untrained) fold into all-zero conv weights and ResNet-D's
    shortcut BN folds into the conv after its average pool: no BatchNorm is left, and the
    int8 model still computes the fp32 one."""
    from bot import config
    from bot.export import export, quantize
    from bot.artifacts.onnx_model import OnnxModule
    from bot.models import build_model

    cfg = config.load(ROOT / "recipes/demo.yaml", [])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=4).eval()
    for m in model.modules():  # statistics and betas as after training, gammas left at 0 or 1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0), m.bias.data.uniform_(-0.1, 0.1)
    assert (model.layer2[0].bn2.weight == 0).all() and isinstance(model.layer2[0].downsample[0], torch.nn.AvgPool2d)
    export.to_onnx(model, 32, tmp_path / "fp32.onnx")
    batches = [torch.randn(16, 3, 32, 32) for _ in range(4)]
    quantize.quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", batches, {})
    assert quantize.folded_batchnorms(tmp_path / "int8.onnx") == 0
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        ref, got = model(x), OnnxModule(tmp_path / "int8.onnx")(x)
    assert (got - ref).abs().max().item() <= 0.1 * (ref.max() - ref.min()).item()
    # --reduce-range: the same model with 7-bit weights (onnxruntime's reduce_range), where 8-bit ones reach 127
    quantize.quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int7.onnx", batches, {}, reduce_range=True)
    for name, q in (("int8.onnx", 127), ("int7.onnx", 64)):
        weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / name)).graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
        assert weights and max(int(np.abs(w.astype(int)).max()) for w in weights) == q


def test_calibration_reads_training_images_spread_over_every_class(toy, monkeypatch):
    """Calibrating on val images would leak the evaluation set into the int8 ranges, and the
    accuracy test above would not see it: check the files themselves."""
    from bot import config
    from bot.data import torch_loader
    from bot.export.quantize import calibration_images

    read = []
    decode = torch_loader.decode
    monkeypatch.setattr(torch_loader, "decode", lambda path: read.append(path) or decode(path))
    batches = calibration_images(config.load(None, [f"data.root={toy}", "data.image_size=32"]), 8, batch=4)
    assert [tuple(b.shape) for b in batches] == [(4, 3, 32, 32)] * 2
    assert len(read) == 8 and all(Path(p).parent.parent == toy / "train" for p in read), read
    assert len({Path(p).parent.name for p in read}) == 4  # 8 picks over 4 classes of 24: every class
