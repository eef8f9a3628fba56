"""The hub folder (scripts/export.py --format hub): timm loads it through `local-dir:` with our
logits and the run's own eval preprocessing, and its card tells the run's numbers."""

import contextlib
import io
import json
import math
import os
import shutil

import pytest
import torch
from conftest import run_cli

from bot import config
from bot.cli import export as export_cli
from bot.data.constants import MEAN, STD
from bot.data.torch_loader import decode
from bot.data.transforms import val_transform
from bot.artifacts import trained
from bot.artifacts.checkpoint import atomic_save
from bot.artifacts.preprocessing import crop_pct
from bot.models import build_model

TRAIN = ["data.backend=torch", "data.image_size=32", "data.batch_size=16", "data.workers=0", "model.width=0.25",
         "schedule.epochs=3", "schedule.warmup_epochs=0", "model.ema_decay=0.9", "run.log_every=1"]


@pytest.fixture(scope="module")
def run(toy, tmp_path_factory):
    """A three-epoch ResNet-18-D run at width 0.25 on the toy data, with a weight average."""
    out = tmp_path_factory.mktemp("hubrun") / "run"
    done = run_cli("train.py", "recipes/demo.yaml", f"data.root={toy}", f"run.out={out}", *TRAIN)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def hub(run):
    """The run's hub folder, through the command's main (in this process: a command start
    costs a torch import)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert export_cli.main([str(run), "--format", "hub"]) == 0
    assert f"upload: hf upload USER/run {run / 'best-hub'} ." in printed.getvalue()
    return run / "best-hub"


def test_timm_scores_the_runs_top1_with_its_own_eval_transform(run, hub, toy):
    """timm's own loader and transform, from the folder alone, on the run's val folder."""
    import timm
    from PIL import Image

    model = timm.create_model(f"local-dir:{hub}", pretrained=True).eval()
    data_config = timm.data.resolve_data_config(model=model)
    assert tuple(data_config["input_size"]) == (3, 32, 32) and data_config["interpolation"] == "bilinear"
    assert math.floor(32 / data_config["crop_pct"]) == 37  # the run's val resize (32 * 256 / 224)
    assert list(data_config["mean"]) == [m / 255 for m in MEAN] and list(data_config["std"]) == [s / 255 for s in STD]
    transform = timm.data.create_transform(**data_config)
    names = model.pretrained_cfg["label_names"]
    files = sorted((toy / "val").glob("*/*.jpg"))
    images = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        logits = model(images)
    predicted = logits.argmax(1).tolist()
    correct = sum(names[p] == f.parent.name for p, f in zip(predicted, files))
    best = torch.load(run / "best.pt", weights_only=True)
    # one image in 200 at most; the toy val set has 32, so not one image may differ
    assert 100 * correct / len(files) == pytest.approx(best["top1"], abs=100 / 200)
    assert best["top1"] == json.loads((run / "summary.json").read_text())["best_top1"]
    # image by image, timm's pipeline computes what ours does up to PIL's resize against
    # torchvision's (a grey level here and there: 8e-4 at most here, against logits of std ~3)
    info = trained.read(run / "best.pt")
    ours = val_transform(info.cfg.data)
    with torch.no_grad():
        expected = trained.build(info)(torch.stack([ours(decode(str(f))) for f in files]))
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-2)


def test_crop_pct_gives_the_val_resize_back_through_timms_floor():
    """timm resizes to floor(size / crop_pct): 48 / 59 in binary gives 58 there, one pixel short."""
    assert math.floor(48 / (48 / 59)) == 58
    for size in range(16, 320, 7):
        for resize in range(size, size * 3 // 2):
            assert math.floor(size / crop_pct(size, resize)) == resize


def test_config_describes_our_run_not_timms_weights(hub):
    cfg = json.loads((hub / "config.json").read_text())
    assert cfg["architecture"] == "resnet18d" and cfg["num_classes"] == 4
    assert cfg["model_args"] == {"channels": [16, 32, 64, 128], "stem_width": 8}
    assert cfg["label_names"] == ["00_circle", "01_square", "02_triangle", "03_star"]
    foreign = {"tag", "hf_hub_id", "url", "origin_url", "license", "test_input_size", "test_crop_pct"}
    assert not foreign & set(cfg["pretrained_cfg"])
    assert cfg["pretrained_cfg"]["first_conv"] == "conv1.0" and cfg["pretrained_cfg"]["classifier"] == "fc"
    assert sorted(os.listdir(hub)) == ["README.md", "config.json", "curves.png", "model.safetensors"]


def test_card_tells_the_runs_numbers_recipe_and_curves(run, hub):
    from huggingface_hub import ModelCard

    card = (hub / "README.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert card.startswith("---\ntags:\n- image-classification\n- timm\nlibrary_name: timm\n")
    # the Hub's own parser reads the front matter back
    assert ModelCard(card).data.to_dict() == {"tags": ["image-classification", "timm"], "library_name": "timm",
                                              "pipeline_tag": "image-classification"}
    assert f"| last epoch | {summary['top1']:.2f} | {summary['top5']:.2f} |" in card
    assert f"| weight average (EMA), last epoch | {summary['ema_top1']:.2f} | {summary['ema_top5']:.2f} |" in card
    assert "4 classes, 96 training and 32 validation images" in card
    assert f"python train.py {run}/config.yaml run.out={run}-again" in card
    assert "| `model.width` | `0.25` | `1.0` |" in card and "| `schedule.epochs` | `3` | `120` |" in card
    assert "resize the shorter side to 37 px (bilinear, antialiased); centre crop 32x32" in card
    assert "![Val top-1 and loss per epoch (metrics.jsonl)](curves.png)" in card
    assert (hub / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def checkpoint(tmp_path, arch, variant, more=(), size=32):
    """A checkpoint as the trainer writes it, BN statistics not the defaults (a missing buffer shows)."""
    cfg = config.load(None, [f"model.arch={arch}", f"model.variant={variant}", f"data.image_size={size}", *more])
    torch.manual_seed(0)
    model = build_model(cfg, 3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "best.pt"
    atomic_save({"model": model.state_dict(), "config": cfg.to_dict(), "num_classes": 3,
                 "classes": ["cat", "dog", "emu"], "step": 7}, path)
    return path, model.eval()


# B, C (timm's names), D with a width and another activation, C of ResNet-18 (no timm name:
# the deep stem goes into model_args), and MobileNet v1 (timm's, with ReLU where timm has ReLU6)
@pytest.mark.parametrize("arch,variant,more,name", [
    ("resnet18", "B", [], "resnet18"),
    ("resnet50", "C", ["model.width=0.25"], "resnet50c"),
    ("resnet50", "D", ["model.width=0.25", "model.act=silu"], "resnet50d"),
    ("resnet18", "C", ["model.width=0.25"], "resnet18"),
    ("mobilenet_v1", "null", [], "mobilenetv1_100"),
])
def test_every_network_timm_can_build_round_trips(tmp_path, capsys, arch, variant, more, name):
    import timm

    path, ours = checkpoint(tmp_path, arch, variant, more)
    assert export_cli.main([str(path), "--format", "hub"]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "best-hub" / "config.json").read_text())["architecture"] == name
    theirs = timm.create_model(f"local-dir:{tmp_path / 'best-hub'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)
    card = (tmp_path / "best-hub" / "README.md").read_text()  # no run folder here: the card says what it lacks
    assert "No summary.json in" in card and "No config.yaml beside the checkpoint" in card


def test_networks_timm_cannot_build_are_refused_naming_what_works(tmp_path, capsys):
    from bot.export.prune import prune

    cfg = config.load(None, ["model.arch=resnet50", "model.variant=A"])
    path = tmp_path / "a.pt"  # refused from its config, before any weight is read: none are needed
    atomic_save({"model": {}, "config": cfg.to_dict(), "num_classes": 3}, path)
    assert export_cli.main([str(path), "--format", "hub"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {path} is resnet50-A, which timm has no name or kwargs for (timm puts the stride on the 3x3 "
        f"conv), so `local-dir:` cannot rebuild it; export it with --format onnx or --format torchscript, or "
        f"--format timm (its printed call moves the stride by hand)")
    cfg = config.load(None, ["model.arch=resnet18", "model.variant=D", "data.image_size=32", "model.width=0.25"])
    model = build_model(cfg, 3).eval()
    prune(model, 0.3, 32)
    atomic_save({"model": model.state_dict(), "config": cfg.to_dict(), "num_classes": 3}, tmp_path / "slim.pt")
    for fmt in ("hub", "timm"):
        assert export_cli.main([str(tmp_path / "slim.pt"), "--format", fmt]) == 2
        assert capsys.readouterr().err.strip().endswith(
            "is slimmed (scripts/slim.py): its layers are narrower than any network timm builds; "
            "export it with --format onnx or --format torchscript")
    assert not list(tmp_path.glob("*hub*")) and not list(tmp_path.glob(".*"))


def test_the_folder_follows_the_output_rule(tmp_path, capsys, monkeypatch):
    from bot.export import hub as hub_module
    from bot.export.export import ExportMismatch

    path, _ = checkpoint(tmp_path, "resnet18", "D", ["model.width=0.25"])
    out, run = tmp_path / "hub", tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    (tmp_path / "kept").mkdir()
    shutil.copy(path, tmp_path / "kept" / "model.pt")
    for spec, target, why in ((path, run, "is a training run's folder"), (path, run / "summary.json", "is a file"),
                              (tmp_path / "kept" / "model.pt", tmp_path / "kept", "holds this command's input")):
        assert export_cli.main([str(spec), "--format", "hub", "--out", str(target)]) == 2
        assert why in capsys.readouterr().err
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert export_cli.main([str(path), "--format", "hub", "--out", str(out)]) == 2
    assert "holds files this command did not write (not a hub export)" in capsys.readouterr().err
    (out / "notes.txt").unlink()
    assert export_cli.main([str(path), "--format", "hub", "--out", str(out)]) == 0  # an empty folder is taken
    (out / "config.json").write_text('{"bot": {}}')
    assert export_cli.main([str(path), "--format", "hub", "--out", str(out)]) == 0  # an earlier export is replaced
    assert json.loads((out / "config.json").read_text())["bot"]["step"] == 7
    (out / "README.md").write_text("an earlier card, edited")  # but a card the user edited is kept
    assert export_cli.main([str(path), "--format", "hub", "--out", str(out)]) == 0
    assert (out / "README.md").read_text() == "an earlier card, edited"
    assert (out / "README.new.md").read_text().startswith("---\n")

    def mismatch(*args):
        raise ExportMismatch("timm from local-dir: logits differ")

    monkeypatch.setattr(hub_module, "_timm_check", mismatch)
    (out / "README.md").write_text("the earlier card")
    assert export_cli.main([str(path), "--format", "hub", "--out", str(out)]) == 1
    assert (out / "README.md").read_text() == "the earlier card"  # a failed export leaves it as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "hub", "kept", "run"]  # and nothing aside


def test_the_card_counts_the_data_from_the_runs_record_never_listing_the_folder(tmp_path, toy, capsys, monkeypatch):
    """ImageNet's folder holds 1.28 M files: the card takes the counts the run recorded in its
    checkpoint (bot/data/fingerprint.py); an older checkpoint says they are not recorded."""
    import bot.data.folder

    def no_listing(*args):
        raise AssertionError("the image folder was listed")

    monkeypatch.setattr(bot.data.folder, "scan_split", no_listing)
    monkeypatch.setattr(os, "scandir", no_listing)
    path, _ = checkpoint(tmp_path, "resnet18", "D", ["model.width=0.25", f"data.root={toy}"])
    old = torch.load(path, weights_only=True)
    record = {"train": {"samples": 1281167, "fingerprint": "0123456789abcdef"},
              "val": {"samples": 50000, "fingerprint": "fedcba9876543210"}}
    for name, extra, says in (("recorded.pt", {"data": record},
                               "3 classes, 1281167 training and 50000 validation images"),
                              ("older.pt", {}, f"3 classes; the image counts of `{toy}` are not recorded")):
        atomic_save({**old, **extra}, tmp_path / name)
        assert export_cli.main([str(tmp_path / name), "--format", "hub"]) == 0, capsys.readouterr().err
        assert says in (tmp_path / name.replace(".pt", "-hub") / "README.md").read_text()
