"""ResNet-18 to -152 in the paper's variants A, B, C and D, built from timm's ResNet.

Variants (paper section 4, figure 2; PAPER.md section 3):
  A  the original ResNet: a downsampling bottleneck puts stride 2 on path A's first 1x1 conv.
  B  stride 2 moves to path A's 3x3 conv (torchvision's "v1.5"; timm's `resnet50`).
  C  B with a deep stem: three 3x3 convs, widths 32, 32, 64 (timm's `resnet50c`).
  D  C with an average-pooled shortcut: 2x2 avg pool stride 2, then a 1x1 conv (`resnet50d`).
timm has no A, so A is B with the stride moved back (`_stride_on_first_conv`). ResNet-18/34
use BasicBlock, whose first 3x3 conv already carries the stride: there A and B are the same
network.

Two tricks live here too: zero gamma (section 3.1) and the paper's Xavier init (section 2),
and one from beyond the paper: the activation (`model.act`: ReLU, Swish/SiLU or Mish), through
timm's `act_layer`, which reaches every block and the stem.
Inception-V3 and MobileNet v1 (Tables 2 and 6) are built in bot/models_other.py.
No weights are ever downloaded.
"""

from __future__ import annotations

import math

import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# block type and blocks per stage (He et al. 2016, table 1; timm's resnet18 ... resnet152)
ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}

# Section 4 as timm's constructor kwargs, copied from timm's resnet50c / resnet50d.
# A is built as B and then changed by `_stride_on_first_conv`.
VARIANTS = {
    "A": {},
    "B": {},
    "C": dict(stem_type="deep", stem_width=32),
    "D": dict(stem_type="deep", stem_width=32, avg_down=True),
}


# model.act: parameter-free modules, so parameters and MACs are those of ReLU
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "mish": nn.Mish}


def build_model(cfg, num_classes: int = 1000) -> nn.Module:
    """ResNet `cfg.model.arch` in variant `cfg.model.variant`, initialised as `cfg.model` says;
    the other networks of Tables 2 and 6 come from bot/models_other.py."""
    if cfg.model.arch not in ARCHS:
        from bot.models_other import build_other
        return build_other(cfg, num_classes)
    block, layers = ARCHS[cfg.model.arch]
    # zero_init_last=False: timm zeroes the last BN of every residual branch by default; here
    # that is the zero gamma trick, off unless the config turns it on (applied below).
    model = ResNet(block=block, layers=layers, num_classes=num_classes, zero_init_last=False,
                   act_layer=ACTIVATIONS[cfg.model.act],
                   **{**VARIANTS[cfg.model.variant], **widths(cfg.model.variant, cfg.model.width)})
    if cfg.model.variant == "A":
        _stride_on_first_conv(model)
    if cfg.model.init == "xavier":
        _xavier_init(model)
    # "kaiming" keeps timm's init: kaiming normal (fan_out) convs, torch's default Linear, BN 1/0.
    if cfg.model.zero_gamma:
        # Section 3.1: each residual block then starts as the identity (its branch outputs 0),
        # which the paper finds easier to train at the start. Shortcut BNs keep gamma = 1.
        for bn in _branch_end_bns(model):
            nn.init.zeros_(bn.weight)
    return model


def widths(variant: str, width: float) -> dict:
    """timm's `channels` and `stem_width` for `model.width` (variants C and D, whose deep stem
    ends in 2 x stem_width channels, the first stage's width); {} at 1, the paper's network."""
    if width == 1:
        return {}
    stem_width = max(1, round(VARIANTS[variant]["stem_width"] * width))
    return dict(channels=tuple(2 * stem_width * k for k in (1, 2, 4, 8)), stem_width=stem_width)


def _stride_on_first_conv(model: ResNet) -> None:
    """ResNet-B -> ResNet-A: in the first (downsampling) bottleneck of stages 2-4, stride 2 goes
    back from the 3x3 conv2 to the 1x1 conv1 (figure 2a). No weight changes shape, and the output
    size does not change either: a 1x1 conv with stride 2, padding 0 and a 3x3 conv with stride 2,
    padding 1 both give ceil(h / 2). The 1x1 conv then skips 3/4 of its input, which is why A
    costs 3.8 G multiply-adds against B's 4.1 (Table 5). BasicBlock (ResNet-18/34) has no 1x1
    conv on path A: A and B are the same there and nothing changes."""
    for stage in (model.layer2, model.layer3, model.layer4):
        block = stage[0]
        if isinstance(block, Bottleneck):
            block.conv1.stride, block.conv2.stride = block.conv2.stride, block.conv1.stride


def _xavier_init(model: nn.Module) -> None:
    """Section 2: conv and FC weights uniform in [-a, a], a = sqrt(6 / (fan_in + fan_out))
    (Xavier, gain 1; a conv's fans include its kernel area), biases 0, BN gamma 1 and beta 0.

    Fans are a unit's connections (Glorot and Bengio 2010), so a grouped conv counts them per
    group: a depthwise 3 x 3 filter has fan_in = fan_out = 9. torch's xavier_uniform_ counts
    fan_out as if ungrouped (9 x channels), which would shrink MobileNet's 1024-channel depthwise
    filters 23x; for ungrouped convs and FC layers both give the same bound."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight
            field = w[0, 0].numel()  # kernel area; 1 for a Linear
            fan_in, fan_out = w.shape[1] * field, w.shape[0] // getattr(m, "groups", 1) * field
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            nn.init.uniform_(w, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _branch_end_bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BN that ends each residual branch: bn3 of a Bottleneck, bn2 of a BasicBlock. Never a
    shortcut (`downsample`) BN, never the stem's."""
    return [m.bn3 if isinstance(m, Bottleneck) else m.bn2
            for m in model.modules() if isinstance(m, (Bottleneck, BasicBlock))]


def count_params_macs(model: nn.Module, image_size: int) -> tuple[int, int]:
    """(parameters, MACs) of `model`; MACs are the multiply-accumulates of one forward pass of
    one 3 x image_size x image_size image.

    MACs (multiply-adds) are the unit of the paper's Table 5 "GFLOPs" column (ResNet-50-B at
    224: 4.1 G). FlopCounterMode counts 2 flops per multiply-add for convs and matmuls and
    nothing for BN, ReLU, pooling or the residual sums, so MACs = flops / 2.

    The model is run in eval mode under no_grad, so BN neither uses nor updates batch
    statistics; each module's train/eval mode is restored afterwards.
    """
    params = sum(p.numel() for p in model.parameters())
    first = next(model.parameters())
    x = torch.zeros(1, 3, image_size, image_size, device=first.device, dtype=first.dtype)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for m, training in modes.items():
            m.training = training
    return params, counter.get_total_flops() // 2
