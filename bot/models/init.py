"""`model.init`: the initialisation of conv and FC weights (section 2). `kaiming` keeps the
network's own (timm's) init and needs nothing here."""

from __future__ import annotations

import math

from torch import nn


def xavier_init(model: nn.Module) -> None:
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
