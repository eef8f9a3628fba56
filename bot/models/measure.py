"""Parameters and multiply-adds of a network, the units of the paper's Table 5."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


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
