"""An exponential moving average of the weights (Polyak averaging), beyond the paper.

timm's ModelEma semantics: after every optimizer step the floating-point state (weights
*and* BN running statistics) follows ema <- d ema + (1 - d) model, and the integer state is
copied. With `warmup`, update t decays by min(d, (1 + t) / (10 + t)) (TensorFlow's
num_updates), so a short run forgets the random init (d = 0.9998 alone keeps 82% of it after
1,000 steps); the decay depends on the update count only, so a resume continues the average.
Saved under `ema` in last.pt and best.pt; BN statistics differ per process without SyncBN,
so `sync` hands rank 0's average to all.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(decay: float, update: int, warmup: bool) -> float:
    """The decay of update `update` (1-based)."""
    return min(decay, (1 + update) / (10 + update)) if warmup else decay


class WeightEma:
    def __init__(self, model: nn.Module, decay: float, warmup: bool):
        self.decay, self.warmup = decay, warmup
        self.source = model
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        average = self.module.state_dict()  # its own tensors: nothing wraps or moves the copy
        self.floats = {k: v for k, v in average.items() if v.is_floating_point()}
        self.others = {k: v for k, v in average.items() if not v.is_floating_point()}

    @torch.no_grad()
    def update(self, updates: int) -> None:
        """Fold the model's current state in; `updates` counts this one (1 after the first step).

        The model's tensors are looked up at every update, not kept from the start: wrapping the
        model in DistributedDataParallel gives them new storage, and the old ones stay the init."""
        source = self.source.state_dict()
        torch._foreach_lerp_(list(self.floats.values()), [source[k] for k in self.floats],
                             1 - ema_decay_at(self.decay, updates, self.warmup))
        for k, average in self.others.items():
            average.copy_(source[k])

    @torch.no_grad()
    def sync(self) -> None:
        """Rank 0's average on every process (nothing to do for one)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for tensor in self.module.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
