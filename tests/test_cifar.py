"""CIFAR: gluon-cv's networks (bot/models/cifar.py): parameters, logits, init and zero gamma against gluon-cv's."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from bot.config import load
from bot.models import build_model, count_params_macs
from bot.models.cifar import CIFAR_ARCHS, BlockV1, BlockV2, cifar_resnet, cifar_wrn
from bot.train.optim import param_groups
from conftest import ROOT

# ---------------------------------------------------------------- the networks


def gluoncv_count(arch: str, classes: int = 10) -> tuple[int, int]:
    """(trainable parameters, MACs at 32 px) of gluon-cv's network, walked from its definition
    (gluon-cv:gluoncv/model_zoo/cifarresnet.py, cifarwideresnet.py), not from ours: convs without
    bias, BN gamma + beta, the classifier's weight and bias. The input BN (scale=False,
    center=False) trains nothing; MXNet keeps a fixed gamma and beta there, not counted."""
    params = macs = 0

    def conv(cin, cout, k, side):
        nonlocal params, macs
        params, macs = params + cin * cout * k * k, macs + cin * cout * k * k * side * side

    def bn(c):
        nonlocal params
        params += 2 * c

    name = arch.removeprefix("cifar_")
    wide = name.startswith("wrn")
    if wide:
        depth, k = map(int, name.removeprefix("wrn").split("_"))
        n, widths, preact = (depth - 4) // 6, [16 * k, 32 * k, 64 * k], True
    else:
        depth, version = name.removeprefix("resnet").split("_v")
        n, widths, preact = (int(depth) - 2) // 6, [16, 32, 64], version == "2"
    conv(3, 16, 3, 32)
    if wide or not preact:
        bn(16)  # v1's stem BN; the WRN's BN after its first conv
    cin, side = 16, 32
    for i, c in enumerate(widths):
        for j in range(n):
            side = side // 2 if i and j == 0 else side
            if preact:
                bn(cin)
            conv(cin, c, 3, side)
            bn(c)
            conv(c, c, 3, side)
            if not preact:
                bn(c)
            if cin != c:  # projection shortcut: 1x1 conv (+ BN in v1)
                conv(cin, c, 1, side)
                if not preact:
                    bn(c)
            cin = c
    if preact:
        bn(cin)
    return params + cin * classes + classes, macs + cin * classes


# Parameters for 10 classes and MACs at 32 px. ResNet v1: He et al. 2016's 0.27 M / 0.85 M / 1.7 M
# are these less gluon-cv's two projection shortcuts (2,752: He et al.'s CIFAR nets pad with zeros);
# WRN-28-10: Zagoruyko and Komodakis' 36.5 M. MXNet 1.9.1 on gluon-cv's own files counts 272,474,
# 272,282 and 17,116,666 trainable parameters for resnet20_v1, resnet20_v2 and wrn16_10.
TABLE = {
    "cifar_resnet20_v1": (272_474, 40_813_184), "cifar_resnet56_v1": (855_770, 125_747_840),
    "cifar_resnet110_v1": (1_730_714, 253_149_824), "cifar_resnet20_v2": (272_282, 40_813_184),
    "cifar_resnet56_v2": (855_578, 125_747_840), "cifar_resnet110_v2": (1_730_522, 253_149_824),
    "cifar_wrn16_10": (17_116_666, 2_412_173_568), "cifar_wrn28_10": (36_479_226, 5_243_328_768),
    "cifar_wrn40_8": (35_748_346, 5_172_024_320),
}


def cifar_cfg(arch, *overrides):
    return load(None, [f"model.arch={arch}", *overrides])


def test_table_is_gluoncvs_definition():
    assert set(TABLE) == set(CIFAR_ARCHS)
    assert {arch: gluoncv_count(arch) for arch in TABLE} == TABLE


@pytest.mark.parametrize("arch", list(TABLE))
def test_params_and_macs_are_gluoncvs(arch):
    with torch.device("meta"):  # no memory, no init cost: shapes are all that is counted
        model = build_model(cifar_cfg(arch), num_classes=10)
        assert count_params_macs(model, 32) == TABLE[arch]
        assert sum(p.numel() for p in build_model(cifar_cfg(arch), num_classes=100).parameters()) == \
            gluoncv_count(arch, 100)[0]


def fill(model: nn.Module) -> None:
    """docs/cifar/gluoncv_logits.py's weights: tensor i of the state_dict (gluon-cv's parameter order)
    from its own generator, 1-D ones in [0.5, 1.5], the others in +-sqrt(3 / fan_in)."""
    tensors = [t for name, t in model.state_dict().items() if not name.endswith("num_batches_tracked")]
    for i, t in enumerate(tensors):
        rng = np.random.default_rng([2019, i])
        if t.dim() == 1:
            value = rng.uniform(0.5, 1.5, tuple(t.shape))
        else:
            bound = math.sqrt(3 / math.prod(t.shape[1:]))
            value = rng.uniform(-bound, bound, tuple(t.shape))
        t.copy_(torch.from_numpy(value.astype(np.float32)))


@pytest.mark.parametrize("name, make", [("cifar_resnet20_v1", lambda: cifar_resnet(20, 1, 10)),
                                        ("cifar_resnet20_v2", lambda: cifar_resnet(20, 2, 10)),
                                        ("cifar_wrn16_2", lambda: cifar_wrn(16, 2, 10))])
def test_same_logits_as_gluoncv(name, make):
    """gluon-cv's networks, run by MXNet on the same weights (tests/fixtures/gluoncv_cifar_logits.json):
    the order of every layer, where each shortcut starts, the stems and heads must all be gluon-cv's
    for these to agree (WRN-16-2: the WRN's structure, small)."""
    reference = json.loads((ROOT / "tests/fixtures/gluoncv_cifar_logits.json").read_text())["logits"][name]
    model = make().eval()
    fill(model)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logits, torch.tensor(reference), rtol=1e-4, atol=1e-4)


def blocks(model):
    return [m for m in model.modules() if isinstance(m, (BlockV1, BlockV2))]


@pytest.mark.parametrize("arch, init", [("cifar_resnet20_v1", "xavier"), ("cifar_resnet20_v2", "msra"),
                                        ("cifar_wrn16_10", "kaiming")])
def test_zero_gamma_starts_every_block_as_its_shortcut_and_every_branch_trains(arch, init):
    torch.manual_seed(0)
    model = build_model(cifar_cfg(arch, "model.zero_gamma=true", f"model.init={init}"), num_classes=10).train()
    ends = [b.bn2 if isinstance(b, BlockV1) else b.conv2 for b in blocks(model)]
    assert len(ends) == {"cifar_resnet20_v1": 9, "cifar_resnet20_v2": 9, "cifar_wrn16_10": 6}[arch]
    for block, end in zip(blocks(model), ends):
        assert not end.weight.any()
        kept = [m.weight for m in block.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) and m is not end]
        assert all(w.any() for w in kept)  # shortcut BNs and convs, the other layers: their init

    def identity(block, inputs, output):
        x, = inputs
        if isinstance(block, BlockV1):
            shortcut = block.act(x if block.downsample is None else block.downsample(x))
        elif block.downsample is None:
            shortcut = x
        else:
            shortcut = block.downsample(block.act(block.bn1(x)) if block.project_preactivated else x)
        torch.testing.assert_close(output, shortcut)

    hooks = [b.register_forward_hook(identity) for b in blocks(model)]
    model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
    for h in hooks:
        h.remove()
    assert all(end.weight.grad.abs().sum() > 0 for end in ends)  # the branches can leave 0

    if isinstance(blocks(model)[0], BlockV2):  # why not bn2 there: ReLU's gradient at exact 0 is 0
        block = blocks(model)[1]
        nn.init.zeros_(block.bn2.weight)
        nn.init.normal_(block.conv2.weight)
        model.zero_grad()
        model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
        assert not block.bn2.weight.grad.any() and not block.bn2.bias.grad.any()
        assert not block.conv2.weight.grad.any() and not block.conv1.weight.grad.any()


def test_no_zero_gamma_means_no_zero_weight():
    model = build_model(cifar_cfg("cifar_resnet20_v1"), num_classes=10)
    assert all(m.weight.any() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)))


@pytest.mark.parametrize("init", ["xavier", "msra", "kaiming"])
@pytest.mark.parametrize("arch", ["cifar_resnet20_v1", "cifar_resnet20_v2"])
def test_init_reaches_every_layer(arch, init):
    """xavier (gluon-cv's CIFAR scripts: mx.init.Xavier(), uniform, magnitude 3), msra, kaiming
    (timm's ResNet: normal, std sqrt(2 / fan_out)) on every conv and the classifier; BN 1 and 0,
    and the input BN of v2, which has neither, left alone."""
    torch.manual_seed(0)
    model = build_model(cifar_cfg(arch, f"model.init={init}"), num_classes=10)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and init != "kaiming"):
            fan_in, fan_out = m.weight[0].numel(), m.weight.shape[0] * m.weight[0, 0].numel()
            if init == "xavier":
                bound = math.sqrt(6 / (fan_in + fan_out))
                assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound, name
            else:
                std = math.sqrt((2 / (1 + 0.25 ** 2)) / ((fan_in + fan_out) / 2)) if init == "msra" else \
                    math.sqrt(2 / fan_out)
                assert m.weight.std().item() == pytest.approx(std, rel=0.35 if m.weight.numel() < 1000 else 0.1), name
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            assert (m.weight == 1).all() and not m.bias.any(), name
    if arch.endswith("v2"):
        assert not model.stem[0].affine


def test_no_bias_decay_decays_conv_and_fc_weights_only():
    model = build_model(cifar_cfg("cifar_resnet20_v2"), num_classes=10)
    decay, rest = param_groups(model, 1e-4, no_bias_decay=True)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert {id(p) for p in decay["params"]} == {id(p) for p in weights}
    assert len(weights) == 1 + 3 * 3 * 2 + 2 + 1  # stem, 9 blocks x 2, 2 projections, fc
    assert rest["weight_decay"] == 0 and len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))
    assert all(p.dim() == 1 for p in rest["params"])  # BN gammas and betas, the fc bias


@pytest.mark.parametrize("arch", ["cifar_resnet20_v1", "cifar_resnet20_v2"])
def test_trains_a_step_with_another_activation(arch):
    torch.manual_seed(0)
    model = build_model(cifar_cfg(arch, "model.act=silu", "model.zero_gamma=true"), num_classes=10)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == 9 + (arch.endswith("v2"))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert nn.functional.cross_entropy(model(x), y) != loss and model(x).shape == (8, 10)
