"""ResNet-18 to -152 in the paper's variants A, B, C and D, built from timm's ResNet.

Variants (paper section 4, figure 2; PAPER.md section 3):
  A  the original ResNet: a downsampling bottleneck puts stride 2 on path A's first 1x1 conv.
  B  stride 2 moves to path A's 3x3 conv (torchvision's "v1.5"; timm's `resnet50`).
  C  B with a deep stem: three 3x3 convs, widths 32, 32, 64 (timm's `resnet50c`).
  D  C with an average-pooled shortcut: 2x2 avg pool stride 2, then a 1x1 conv (`resnet50d`).
timm has no A, so A is B with the stride moved back (`stride_on_first_conv`). ResNet-18/34
use BasicBlock, whose first 3x3 conv already carries the stride: there A and B are the same
network.

Two tricks live here too: zero gamma (section 3.1) and the paper's Xavier init (section 2),
and one from beyond the paper: the activation (`model.act`: ReLU, Swish/SiLU or Mish), through
timm's `act_layer`, which reaches every block and the stem.
Inception-V3 and MobileNet v1 (Tables 2 and 6) are built in bot/models/other.py.
No weights are ever downloaded.
"""

from __future__ import annotations

from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from bot.models.activations import ACTIVATIONS
from bot.models.init import init_weights

# block type and blocks per stage (He et al. 2016, table 1; timm's resnet18 ... resnet152)
ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}

# Section 4 as timm's constructor kwargs, copied from timm's resnet50c / resnet50d.
# A is built as B and then changed by `stride_on_first_conv`.
VARIANTS = {
    "A": {},
    "B": {},
    "C": dict(stem_type="deep", stem_width=32),
    "D": dict(stem_type="deep", stem_width=32, avg_down=True),
}


def build_resnet(cfg, num_classes: int) -> nn.Module:
    """ResNet `cfg.model.arch` in variant `cfg.model.variant`, initialised as `cfg.model` says."""
    block, layers = ARCHS[cfg.model.arch]
    # zero_init_last=False: timm zeroes the last BN of every residual branch by default; here
    # that is the zero gamma trick, off unless the config turns it on (applied below).
    model = ResNet(block=block, layers=layers, num_classes=num_classes, zero_init_last=False,
                   act_layer=ACTIVATIONS[cfg.model.act],
                   **{**VARIANTS[cfg.model.variant], **widths(cfg.model.variant, cfg.model.width)})
    if cfg.model.variant == "A":
        stride_on_first_conv(model)
    init_weights(model, cfg.model.init)
    # "kaiming" keeps timm's init: kaiming normal (fan_out) convs, torch's default Linear, BN 1/0.
    if cfg.model.zero_gamma:
        # Section 3.1: each residual block then starts as the identity (its branch outputs 0),
        # which the paper finds easier to train at the start. Shortcut BNs keep gamma = 1.
        for bn in branch_end_bns(model):
            nn.init.zeros_(bn.weight)
    return model


def widths(variant: str, width: float) -> dict:
    """timm's `channels` and `stem_width` for `model.width` (variants C and D, whose deep stem
    ends in 2 x stem_width channels, the first stage's width); {} at 1, the paper's network."""
    if width == 1:
        return {}
    stem_width = round(VARIANTS[variant]["stem_width"] * width)  # 2 or more: model.width >= 1/16
    return dict(channels=tuple(2 * stem_width * k for k in (1, 2, 4, 8)), stem_width=stem_width)


def stride_on_first_conv(model: ResNet) -> None:
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


def branch_end_bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BN that ends each residual branch: bn3 of a Bottleneck, bn2 of a BasicBlock. Never a
    shortcut (`downsample`) BN, never the stem's."""
    return [m.bn3 if isinstance(m, Bottleneck) else m.bn2
            for m in model.modules() if isinstance(m, (Bottleneck, BasicBlock))]
