"""`model.slim_l1`: network slimming's training half (Liu et al., ICCV 2017), an L1 penalty on
the BatchNorm scales of the slimmable channels (bot/models/slimmable.py), so that unneeded
channels end near 0 and bot/export/prune.py can remove them after training."""

from __future__ import annotations

import torch
from torch import nn

from bot.models.slimmable import slimmed_pairs


class SlimL1:
    """The training objective plus lambda * sum |gamma| over the slimmed BNs. Its gradient on
    each gamma is lambda * sign(gamma) (0 at 0) on top of the loss's: Liu et al.'s subgradient,
    separate from weight decay (which no_bias_decay keeps off BN). Resolved before the loop:
    the training step calls `prepare` and `loss` as for any objective."""

    def __init__(self, objective, model: nn.Module, lam: float):
        self.objective, self.lam = objective, lam
        self.gammas = [bn.weight for _, bn in slimmed_pairs(model)]

    def prepare(self, *args, **kwargs):
        return self.objective.prepare(*args, **kwargs)

    def penalty(self) -> torch.Tensor:
        return self.lam * sum(g.abs().sum() for g in self.gammas)

    def loss(self, *args, **kwargs) -> torch.Tensor:
        return self.objective.loss(*args, **kwargs) + self.penalty()


def with_slim_l1(objective, model: nn.Module, lam: float):
    """`objective` with the slimming penalty when `lam` > 0 (model.slim_l1)."""
    return SlimL1(objective, model, lam) if lam > 0 else objective
