"""bot/models/init.py: model.init=msra (the authors' MXNet MSRAPrelu) against its closed form."""

import math

import pytest
import torch
from torch import nn

from bot.config import load
from bot.models import build_model
from bot.models.init import msra_init


def msra_closed_form(fan_in, fan_out):
    # MXNet: Xavier(rnd_type="gaussian", factor_type="avg", magnitude=2 / (1 + 0.25^2))
    return math.sqrt(2 / (1 + 0.25 ** 2) / ((fan_in + fan_out) / 2))


@pytest.mark.parametrize("layer, fan_in, fan_out", [
    (nn.Conv2d(64, 128, 3), 64 * 9, 128 * 9),
    (nn.Conv2d(256, 256, 3, groups=256), 9, 256 * 9),  # depthwise: MXNet does not divide by the groups
    (nn.Conv2d(64, 128, 3, groups=4), 16 * 9, 128 * 9),
    (nn.Linear(512, 1000), 512, 1000),
], ids=["conv", "depthwise", "grouped", "fc"])
def test_msra_std_is_mxnets_closed_form(layer, fan_in, fan_out):
    torch.manual_seed(0)
    nn.init.constant_(layer.bias, 1.0)
    msra_init(layer)
    w, std = layer.weight.detach().flatten().double(), msra_closed_form(fan_in, fan_out)
    n = w.numel()
    # a Gaussian's sample std has std ~ std / sqrt(2n), its mean std / sqrt(n): 5 of each
    assert abs(w.std().item() - std) < 5 * std / math.sqrt(2 * n)
    assert abs(w.mean().item()) < 5 * std / math.sqrt(n)
    if n > 10_000:  # Gaussian, not uniform: kurtosis 3 (a uniform's is 1.8), its std sqrt(24 / n)
        assert abs(((w - w.mean()) ** 4).mean().item() / w.var().item() ** 2 - 3) < 5 * math.sqrt(24 / n)
    assert not layer.bias.any()


@pytest.mark.parametrize("arch, overrides", [("resnet18", ["model.variant=D", "model.zero_gamma=true"]),
                                             ("mobilenet_v1", [])])
def test_msra_for_every_network_keeps_bn_and_zero_gamma(arch, overrides):
    torch.manual_seed(0)
    model = build_model(load(None, [f"model.arch={arch}", "model.init=msra", *overrides]), num_classes=10)
    zeroed = 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            field = m.weight[0, 0].numel()
            std = msra_closed_form(m.weight.shape[1] * field, m.weight.shape[0] * field)
            assert m.weight.std().item() == pytest.approx(std, rel=0.3 if m.weight.numel() < 1000 else 0.1), name
            assert m.bias is None or not m.bias.any(), name
        elif isinstance(m, nn.BatchNorm2d):
            zeroed += not m.weight.any()
            assert not m.bias.any() and ((m.weight == 1).all() or not m.weight.any()), name
    assert zeroed == (8 if arch == "resnet18" else 0)  # ResNet-18: one zeroed BN per basic block


@pytest.mark.parametrize("layer, fan_in, fan_out", [
    (nn.Conv2d(64, 128, 3), 64 * 9, 128 * 9),
    (nn.Conv2d(256, 256, 3, groups=256), 9, 9),  # depthwise: a unit's connections, per group (Glorot)
    (nn.Conv2d(64, 128, 3, groups=4), 16 * 9, 32 * 9),
    (nn.Linear(512, 1000), 512, 1000),
    (nn.Linear(512, 1), 512, 1),  # a one-output head
], ids=["conv", "depthwise", "grouped", "fc", "one-output"])
def test_xavier_bound_is_the_papers_closed_form(layer, fan_in, fan_out):
    """Section 2: uniform in [-a, a], a = sqrt(6 / (fan_in + fan_out)); biases 0."""
    from bot.models.init import xavier_init

    torch.manual_seed(0)
    nn.init.constant_(layer.bias, 1.0)
    xavier_init(layer)
    w, bound = layer.weight.detach().abs().flatten(), math.sqrt(6 / (fan_in + fan_out))
    assert w.max().item() <= bound
    if w.numel() >= 500:  # a uniform's largest of n draws is within a / n of a, mostly
        assert w.max().item() > bound * (1 - 20 / w.numel())
        assert abs(w.mean().item() - bound / 2) < 5 * bound / math.sqrt(12 * w.numel())  # E|w| = a / 2
    assert not layer.bias.any()
