"""timm-ready weights: timm.create_model(name, num_classes=K, checkpoint_path=...) computes our logits."""

import pytest
import torch
from conftest import random_bn_statistics, run_cli

from bot import config
from bot.artifacts.checkpoint import atomic_save
from bot.models import build_model

CLASSES = ["cat", "dog", "emu"]


def checkpoint(tmp_path, variant: str, more=()):
    """A ResNet-50 checkpoint as the trainer writes it, with BN statistics that are not the
    defaults (a missing buffer would then show)."""
    cfg = config.load(None, ["model.arch=resnet50", f"model.variant={variant}", "data.image_size=64", *more])
    torch.manual_seed(0)
    model = build_model(cfg, len(CLASSES))
    random_bn_statistics(model)
    path = tmp_path / f"{variant}.pt"
    atomic_save({"model": model.state_dict(), "config": cfg.to_dict(), "num_classes": 3, "classes": CLASSES}, path)
    return path, model.eval()


def export(path, through_cli: bool) -> str:
    """The timm export of checkpoint `path`, through the command or the function it calls."""
    if through_cli:
        done = run_cli("scripts/export.py", path, "--format", "timm")
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout
    from bot.export import export as bot_export
    from bot.artifacts import trained

    info = trained.read(path)
    m = info.cfg.model
    return bot_export.to_timm(trained.build(info), m.arch, m.variant, info.classes, 64,
                              path.with_suffix(".timm.safetensors"), m.width)[1]


# the command once (D); B and C through the same function in this process (each command
# start costs a torch import)
@pytest.mark.parametrize("variant,name,through_cli", [("B", "resnet50", False), ("C", "resnet50c", False),
                                                      ("D", "resnet50d", True)])
def test_timm_create_model_gives_our_logits(tmp_path, variant, name, through_cli):
    import timm
    from safetensors import safe_open

    path, ours = checkpoint(tmp_path, variant)
    printed = export(path, through_cli)
    weights = path.with_suffix(".timm.safetensors")
    assert f"timm.create_model('{name}', num_classes=3, checkpoint_path='{weights}')" in printed
    x = torch.randn(2, 3, 64, 64)
    for file in (weights, path.with_suffix(".timm.pth")):
        theirs = timm.create_model(name, num_classes=3, checkpoint_path=str(file)).eval()
        with torch.no_grad():
            torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)
    with safe_open(str(weights), "pt") as f:
        assert f.metadata()["classes"] == '["cat", "dog", "emu"]'


def test_resnet_a_in_timm_needs_the_stride_moved(tmp_path):
    """timm has no ResNet-A: its weights load into timm's resnet50 (B), which computes another
    function until the printed stride move is applied."""
    import timm

    path, ours = checkpoint(tmp_path, "A")
    assert "stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)" in export(path, through_cli=False)
    theirs = timm.create_model("resnet50", num_classes=3, checkpoint_path=str(path.with_suffix(".timm.safetensors")))
    theirs.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(theirs(x), ours(x), atol=1e-3)
        for stage in (theirs.layer2, theirs.layer3, theirs.layer4):
            stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)


def test_a_narrower_network_reaches_timm_with_its_widths(tmp_path):
    import timm

    path, ours = checkpoint(tmp_path, "D", ["model.width=0.25"])
    printed = export(path, through_cli=False)
    weights = path.with_suffix(".timm.safetensors")
    assert ("timm.create_model('resnet50d', num_classes=3, channels=(16, 32, 64, 128), stem_width=8, "
            f"checkpoint_path='{weights}')") in printed
    theirs = timm.create_model("resnet50d", num_classes=3, channels=(16, 32, 64, 128), stem_width=8,
                               checkpoint_path=str(weights)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)
