"""Learning-rate schedules as pure functions of the global step (sections 2, 3.1, 5.1).

`lr_at(step)` is the lr of optimizer step `step` (0-based). Everything is per iteration:
warmup rises linearly, cosine decays smoothly, and step decay divides by 10 at the
first step of each milestone epoch.

`batch_growth` is step decay with the batch grown x10 at each milestone instead, up to
data.accumulate_max (Smith et al., ICLR 2018; docs/batch-growth.md). `StepPlan` holds how
many loader batches each optimizer step takes, and so the steps of each epoch.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from functools import cached_property, partial

STEP_FACTOR = 10  # section 2: the lr is divided by 10 at each milestone


def lr_at(step: int, *, peak: float, warmup_steps: int, total_steps: int, kind: str,
          milestones: tuple[int, ...] = (), decay: tuple[float, ...] = ()) -> float:
    """`milestones`: the first step of each milestone epoch; `decay[n]`: the lr's factor after n
    of them (default 0.1 ** n: step decay)."""
    if step < warmup_steps:
        # section 3.1: at batch i (1 <= i <= m) the lr is i * peak / m, so the first step is not wasted
        return peak * (step + 1) / warmup_steps
    if kind == "cosine":
        # section 5.1: lr_t = 1/2 (1 + cos(t pi / T)) lr, t counted from the end of warmup
        t, T = step - warmup_steps, max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * t / T)) * peak
    if kind in ("step", "batch_growth"):
        passed = sum(step >= m for m in milestones)
        return peak * (decay[passed] if decay else (1 / STEP_FACTOR) ** passed)
    raise ValueError(f"unknown schedule kind {kind!r}")


def growth_after(passed: int, accumulate: int, accumulate_max: int | None) -> tuple[int, float]:
    """(loader batches per optimizer step, lr factor) once `passed` milestones are behind:
    the batch grows by 10 per milestone while data.accumulate x growth <= data.accumulate_max,
    and the lr takes the rest, so batch / lr grows by exactly 10 at every milestone."""
    target = STEP_FACTOR ** passed
    limit = target if accumulate_max is None else accumulate_max // accumulate
    growth = min(target, limit)
    return growth, growth / target


@dataclass(frozen=True)
class StepPlan:
    """Optimizer steps per epoch, as a pure function of the config and the loader's length.

    `batches`: loader batches (data.batch_size images each, over all processes) per epoch;
    `growth[e]`: loader batches per optimizer step in epoch e. An epoch has
    batches // growth[e] steps; the tail that does not fill a grown step is dropped, as the
    loader drops the tail that does not fill a batch."""

    batches: int
    growth: tuple[int, ...]

    def steps_in(self, epoch: int) -> int:
        return self.batches // self.growth[epoch]

    @cached_property
    def starts(self) -> tuple[int, ...]:
        """The first step of every epoch, and the run's total last."""
        return tuple(itertools.accumulate((self.steps_in(e) for e in range(len(self.growth))), initial=0))

    def first_step(self, epoch: int) -> int:
        """The global step at which `epoch` starts (the run's total at len(growth))."""
        return self.starts[epoch]

    @property
    def total_steps(self) -> int:
        return self.first_step(len(self.growth))

    def epoch_of(self, step: int) -> float:
        """The epochs trained after `step` optimizer steps (fractional within an epoch)."""
        epoch = bisect.bisect_right(self.starts, step) - 1
        if epoch >= len(self.growth):
            return float(len(self.growth))
        n = self.steps_in(epoch)  # one division: step / steps per epoch when none grows
        return (epoch * n + step - self.first_step(epoch)) / n

    def images(self, step: int, batch_size: int) -> int:
        """Images trained on in the first `step` optimizer steps."""
        total, epoch = 0, 0
        while step > 0 and epoch < len(self.growth):
            n = min(step, self.steps_in(epoch))
            total, step, epoch = total + n * self.growth[epoch] * batch_size, step - n, epoch + 1
        return total


def peak_lr(cfg) -> float:
    """optim.lr per 256 images, scaled linearly with the global batch (section 3.1).

    batch_growth scales by data.batch_size, the batch before any growth: growing it is what
    replaces the lr's decay, so the lr must not follow it."""
    if cfg.optim.lr_scaling == "linear":
        return cfg.optim.lr * cfg.data.batch_size / 256
    return cfg.optim.lr


def build_plan(cfg, steps_per_epoch: int) -> StepPlan:
    """`steps_per_epoch`: the loader's length, its batches per epoch (one step each unless grown)."""
    s, d = cfg.schedule, cfg.data
    if s.kind != "batch_growth":
        return StepPlan(steps_per_epoch, (1,) * s.epochs)
    passed = [sum(e >= m for m in s.milestones) for e in range(s.epochs)]
    return StepPlan(steps_per_epoch, tuple(growth_after(n, d.accumulate, d.accumulate_max)[0] for n in passed))


def build_schedule(cfg, steps_per_epoch: int):
    """The run's lr as a function of the global step, with epochs turned into steps
    (`steps_per_epoch`: the loader's batches per epoch)."""
    s, plan = cfg.schedule, build_plan(cfg, steps_per_epoch)
    # warmup ends before the first milestone (bot/config_checks.py), where every step is one batch
    decay = tuple(growth_after(n, cfg.data.accumulate, cfg.data.accumulate_max)[1]
                  for n in range(len(s.milestones) + 1)) if s.kind == "batch_growth" else ()
    return partial(lr_at, peak=peak_lr(cfg), warmup_steps=round(s.warmup_epochs * steps_per_epoch),
                   total_steps=plan.total_steps, kind=s.kind, decay=decay,
                   milestones=tuple(plan.first_step(min(m, s.epochs)) for m in s.milestones))
