"""`model.init`: the initialisation of conv and FC weights. `xavier` is the paper's text (section 2),
`msra` the authors' code (gluon-cv's train_imagenet.py: mx.init.MSRAPrelu()); `kaiming` keeps the
network's own (timm's) init and needs nothing here. Biases 0, BN gamma 1 and beta 0 for both;
zero gamma (section 3.1) is applied after, by the builder."""

from __future__ import annotations

import math

import torch
from torch import nn

# MXNet's MSRAPrelu(factor_type="avg", slope=0.25): Xavier with a Gaussian of variance
# magnitude / ((fan_in + fan_out) / 2), magnitude = 2 / (1 + slope^2) = 1.882 (He et al. 2015, PReLU)
MSRA_MAGNITUDE = 2.0 / (1 + 0.25 ** 2)


def xavier_init(model: nn.Module) -> None:
    """Section 2: conv and FC weights uniform in [-a, a], a = sqrt(6 / (fan_in + fan_out))
    (Xavier, gain 1; a conv's fans include its kernel area), biases 0, BN gamma 1 and beta 0.

    Fans are a unit's connections (Glorot and Bengio 2010), so a grouped conv counts them per
    group: a depthwise 3 x 3 filter has fan_in = fan_out = 9. torch's xavier_uniform_ counts
    fan_out as if ungrouped (9 x channels), which would shrink MobileNet's 1024-channel depthwise
    filters 23x; for ungrouped convs and FC layers both give the same bound."""
    def uniform(w: torch.Tensor, groups: int) -> None:
        field = w[0, 0].numel()  # kernel area; 1 for a Linear
        fan_in, fan_out = w.shape[1] * field, w.shape[0] // groups * field
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        nn.init.uniform_(w, -bound, bound)
    _init(model, uniform)


def msra_std(shape: torch.Size) -> float:
    """MXNet's Xavier(rnd_type="gaussian", factor_type="avg", magnitude=1.882) std for a weight of
    `shape`: fan_in = shape[1] x k x k, fan_out = shape[0] x k x k. Unlike xavier_init above,
    MXNet does not divide fan_out by the groups: a depthwise 3 x 3 filter of 1024 channels has
    fan_in 9 and fan_out 9216 here (std 0.020), against 9 and 9 in our Xavier."""
    field = math.prod(shape[2:])  # kernel area; 1 for a Linear
    return math.sqrt(MSRA_MAGNITUDE / ((shape[1] * field + shape[0] * field) / 2))


def msra_init(model: nn.Module) -> None:
    """The authors' code: conv and FC weights Gaussian with std `msra_std`, biases 0, BN gamma 1, beta 0."""
    _init(model, lambda w, groups: nn.init.normal_(w, 0.0, msra_std(w.shape)))


def _init(model: nn.Module, weight_init) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            weight_init(m.weight, getattr(m, "groups", 1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:  # the input BN of the CIFAR v2 nets and WRNs has none
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


INITS = {"xavier": xavier_init, "msra": msra_init}


def init_weights(model: nn.Module, init: str) -> None:
    """Apply `model.init`; "kaiming" leaves the network's own init."""
    if init in INITS:
        INITS[init](model)
