"""What network slimming (Liu et al., ICCV 2017) acts on, and how a slimmed network is rebuilt.

The slimmable channels are the inner channels of every residual block (BasicBlock: conv1/bn1;
Bottleneck: conv1/bn1 and conv2/bn2): the penalty (bot/train/slim_penalty.py) and the pruner
(bot/export/prune.py) use the same pairs. A residual sum's channels are kept, as Liu et al.
keep them (their section 4): the branch gammas do not measure them (docs/compress.md).

`fit_shapes` gives a freshly built network a slimmed checkpoint's channel counts, so a slimmed
best.pt loads wherever a model is read back (evaluate, fine-tuning, the teacher, resume).
"""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn


def slimmed_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, the BN after it) for every inner channel set of the ResNet's blocks, in order."""
    pairs = []
    for block in model.modules():
        if isinstance(block, Bottleneck):
            pairs += [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        elif isinstance(block, BasicBlock):
            pairs.append((block.conv1, block.bn1))
    return pairs


def _resized(param: torch.Tensor, shape) -> torch.Tensor:
    """`param` cut (or zero-padded) to `shape`: cutting keeps the model's own initialisation."""
    out = torch.zeros(shape, dtype=param.dtype, device=param.device)
    common = tuple(slice(0, min(a, b)) for a, b in zip(param.shape, shape))
    out[common] = param.detach()[common]
    return out


def fit_shapes(model: nn.Module, weights: dict) -> None:
    """Give `model`'s convs, BNs and classifier input the channel counts of state_dict
    `weights` (a slimmed checkpoint), in place; kernels, strides and the classes are not
    changed, so any other difference still fails in load_state_dict. A no-op for a
    checkpoint of the full network."""
    for name, m in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if key not in weights or not isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            continue
        shape = tuple(weights[key].shape)
        if isinstance(m, nn.Linear):
            shape = (m.out_features, shape[1])  # the classes are this model's (fine-tuning may change them)
        if shape == tuple(m.weight.shape) or len(shape) != m.weight.dim():
            continue
        if isinstance(m, nn.Conv2d):
            if shape[2:] != tuple(m.weight.shape[2:]):
                continue
            m.out_channels, m.in_channels = shape[0], shape[1] * m.groups
        elif isinstance(m, nn.BatchNorm2d):
            m.num_features = shape[0]
            for buf in ("running_mean", "running_var"):
                setattr(m, buf, _resized(getattr(m, buf), shape))
        else:
            m.in_features = shape[1]
        m.weight = nn.Parameter(_resized(m.weight, shape))
        if getattr(m, "bias", None) is not None and m.bias.shape[0] != shape[0]:
            m.bias = nn.Parameter(_resized(m.bias, shape[:1]))
