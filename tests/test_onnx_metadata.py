"""scripts/export.py --format onnx writes bot's metadata (evaluate and predict read the file
alone) and plain keys a runtime without bot follows to the same logits."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import random_bn_statistics

from bot import config
from bot.cli import export as export_cli
from bot.data.constants import MEAN, STD
from bot.data.torch_loader import decode
from bot.data.transforms import val_transform
from bot.artifacts import trained
from bot.artifacts.checkpoint import atomic_save
from bot.models import build_model


@pytest.fixture(scope="module")
def exported(toy, tmp_path_factory):
    """A ResNet-18-D checkpoint (width 0.25, 32 px, BN statistics not the defaults) on the toy
    classes, and its ONNX export beside it."""
    folder = tmp_path_factory.mktemp("onnxrun")
    cfg = config.load(None, ["model.arch=resnet18", "model.variant=D", "model.width=0.25", "data.image_size=32",
                             f"data.root={toy}", "data.backend=torch", "data.workers=0", "data.batch_size=16"])
    classes = sorted(p.name for p in (toy / "val").iterdir())
    torch.manual_seed(0)
    model = build_model(cfg, len(classes))
    random_bn_statistics(model)
    atomic_save({"model": model.state_dict(), "config": cfg.to_dict(), "num_classes": len(classes),
                 "classes": classes, "step": 3}, folder / "best.pt")
    assert export_cli.main([str(folder / "best.pt"), "--format", "onnx"]) == 0
    return folder / "best.pt", folder / "best.onnx"


def _resize_crop_by_hand(path, meta) -> np.ndarray:
    """The plain keys followed with PIL and numpy only, as a runtime without bot would."""
    from PIL import Image

    _, height, width = json.loads(meta["input_size"])
    short = int(meta["resize_size"])
    assert meta["interpolation"] == "bilinear" and meta["antialias"] == "true"  # PIL always filters
    img = Image.open(path).convert("RGB")
    w, h = img.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    img = img.resize(size, Image.BILINEAR)
    left, top = round((size[0] - width) / 2), round((size[1] - height) / 2)
    x = np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.float32) / 255
    x = (x - np.array(json.loads(meta["mean"]), np.float32)) / np.array(json.loads(meta["std"]), np.float32)
    return x.transpose(2, 0, 1)


def test_a_runtime_without_bot_follows_the_plain_keys_to_our_logits(exported, toy):
    import onnxruntime

    checkpoint, onnx_file = exported
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == sorted(p.name for p in (toy / "val").iterdir())
    assert json.loads(meta["mean"]) == [m / 255 for m in MEAN] and json.loads(meta["std"]) == [s / 255 for s in STD]
    assert meta["preprocessing"].startswith("RGB; resize the shorter side to 37 px (bilinear, antialiased); "
                                            "centre crop 32x32; scale to [0, 1]")
    files = sorted((toy / "val").glob("*/*.jpg"))
    theirs = session.run(None, {"images": np.stack([_resize_crop_by_hand(f, meta) for f in files])})[0]
    info = trained.read(checkpoint)
    transform = val_transform(info.cfg.data)
    with torch.no_grad():
        ours = trained.build(info)(torch.stack([transform(decode(str(f))) for f in files]))
    # PIL's resize against torchvision's: a grey level here and there
    torch.testing.assert_close(torch.from_numpy(theirs), ours, rtol=0, atol=1e-2)
    assert (torch.from_numpy(theirs).argmax(1) == ours.argmax(1)).all()


def test_evaluate_reads_the_onnx_export_alone_and_measures_what_the_checkpoint_does(exported, capsys):
    from bot.cli import evaluate

    checkpoint, onnx_file = exported
    rows = {}
    for path in (checkpoint, onnx_file):  # the command's main in this process: a start costs a torch import
        assert evaluate.main([str(path)]) == 0
        rows[path.suffix] = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\| 32 \|", line)]
    assert rows[".onnx"] == rows[".pt"] and len(rows[".pt"]) == 1  # size, resize, top-1, top-5, loss
    assert trained.read(onnx_file, onnx=True).describe() == (
        f"{onnx_file} (fp32 ONNX of {checkpoint}, resnet18-D, 4 classes)")
