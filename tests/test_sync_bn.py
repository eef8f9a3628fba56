"""`model.sync_bn` and the model a run builds, on whatever device it trains: what a GPU would
show first, checked on the CPU. (Synced statistics under two processes: tests/test_distributed.py.)"""

from types import SimpleNamespace

import pytest
import torch
from conftest import random_bn_statistics
from timm.layers import BatchNormAct2d

from bot import config
from bot.models import build_model
from bot.models.qat import ActivationQuant
from bot.train.sync_bn import CPUSyncBatchNorm, convert_sync_batchnorm
from bot.train.trainer import Run

SIZES = {"inception_v3": 75, "mobilenet_v1": 32, "resnet18": 32}


def test_the_model_a_run_builds_is_all_on_its_device():
    """QAT's quantizers and the synced norms are added after the model went to the device: the
    'meta' device stands in for a GPU, where a CPU buffer would fail the first step."""
    cfg = config.load(None, ["model.arch=resnet18", "model.variant=D", "model.width=0.25", "data.image_size=32",
                             "model.sync_bn=true"])
    cfg.model.qat = True  # without the trained run it fine-tunes: the quantizers are what matters here
    run = SimpleNamespace(cfg=cfg, num_classes=4, device=torch.device("meta"), world=2, classes=list("abcd"),
                          main=print)
    model = Run.make_model(run, None)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    assert [name for name, t in tensors if t.device.type != "meta"] == []
    assert any(isinstance(m, ActivationQuant) for m in model.modules())


@pytest.mark.parametrize("device", ["cpu", "cuda"])  # which conversion; the model stays on the CPU
@pytest.mark.parametrize("arch", list(SIZES))
def test_every_norm_is_synced_and_keeps_its_activation(arch, device):
    """Inception-V3 and MobileNet v1 normalize with timm's BatchNormAct2d, the activation inside
    the norm: a synced copy that dropped it would change every logit and still load the weights."""
    torch.manual_seed(0)
    model = build_model(config.load(None, [f"model.arch={arch}", "model.zero_gamma=false"]), 10)
    random_bn_statistics(model)
    x = torch.randn(2, 3, SIZES[arch], SIZES[arch])
    with torch.no_grad():
        before = model.eval()(x)
        fused = sum(type(m) is BatchNormAct2d for m in model.modules())
        synced = convert_sync_batchnorm(model, torch.device(device))
        norms = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        kind = CPUSyncBatchNorm if device == "cpu" else torch.nn.SyncBatchNorm
        assert norms and all(isinstance(m, kind) for m in norms), {type(m).__name__ for m in norms}
        assert fused == (0 if arch == "resnet18" else len(norms))
        assert torch.equal(synced.eval()(x), before)
        if device == "cpu":  # one process: the CPU's synced norm is BatchNorm, batch statistics included
            model_again = build_model(config.load(None, [f"model.arch={arch}", "model.zero_gamma=false"]), 10)
            model_again.load_state_dict(synced.state_dict())
            outputs = []
            for m in (synced, model_again):
                torch.manual_seed(1)  # Inception's dropout
                outputs.append(m.train()(x))
            assert torch.equal(*outputs)
