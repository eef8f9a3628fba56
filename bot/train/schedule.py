"""Learning-rate schedules as pure functions of the global step (sections 2, 3.1, 5.1).

`lr_at(step)` is the lr of optimizer step `step` (0-based). Everything is per iteration:
warmup rises linearly, cosine decays smoothly, and step decay divides by 10 at the
first step of each milestone epoch.
"""

from __future__ import annotations

import math
from functools import partial


def lr_at(step: int, *, peak: float, warmup_steps: int, total_steps: int, kind: str,
          milestones: tuple[int, ...] = ()) -> float:
    if step < warmup_steps:
        # section 3.1: at batch i (1 <= i <= m) the lr is i * peak / m, so the first step is not wasted
        return peak * (step + 1) / warmup_steps
    if kind == "cosine":
        # section 5.1: lr_t = 1/2 (1 + cos(t pi / T)) lr, t counted from the end of warmup
        t, T = step - warmup_steps, max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * t / T)) * peak
    if kind == "step":
        return peak * 0.1 ** sum(step >= m for m in milestones)
    raise ValueError(f"unknown schedule kind {kind!r}")


def peak_lr(cfg) -> float:
    """optim.lr per 256 images, scaled linearly with the global batch (section 3.1)."""
    if cfg.optim.lr_scaling == "linear":
        return cfg.optim.lr * cfg.data.batch_size / 256
    return cfg.optim.lr


def build_schedule(cfg, steps_per_epoch: int):
    """The run's lr as a function of the global step, with epochs turned into steps."""
    s = cfg.schedule
    return partial(lr_at, peak=peak_lr(cfg), warmup_steps=round(s.warmup_epochs * steps_per_epoch),
                   total_steps=s.epochs * steps_per_epoch, kind=s.kind,
                   milestones=tuple(m * steps_per_epoch for m in s.milestones))
