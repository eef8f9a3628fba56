"""Is the run still healthy? Every step's loss is watched on the device; the verdict is read
before anything is logged as good or saved (docs/reliability.md, "A loss that is not finite").

A run is unhealthy, and from then on nothing is saved, when
- its loss has not been finite for more than NONFINITE_LIMIT steps in a row (fp16's loss
  scaler skips such steps and lowers its scale; fp32 and bf16 have nothing to wait for);
- its weights or BatchNorm statistics are not finite (a forward that overflows in fp16 writes
  into the running statistics even when the scaler then skips the step);
- it diverged: some step's loss went above DIVERGED_RATIO x the run's first loss.
  Cross-entropy starts near ln(classes) and falls; 10x is far above any healthy run.
"""

from __future__ import annotations

import torch

from bot.errors import UserError

NONFINITE_LIMIT = {"fp16": 50, "bf16": 0, "fp32": 0}
DIVERGED_RATIO = 10


class LossWatch:
    """Flags over every step's loss, kept as device tensors: updating them needs no host sync,
    so a GPU never waits for the check; `Health.check` reads them all in one gather.

    `first`: the run's first loss (over all processes), set by the run after its first step and
    kept in last.pt; until then nothing can diverge."""

    def __init__(self, device):
        self.nonfinite = torch.zeros((), dtype=torch.int64, device=device)  # steps in a row
        self.diverged_step = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet
        self.diverged_loss = torch.zeros((), dtype=torch.float64, device=device)
        self.first: torch.Tensor | None = None

    def update(self, loss: torch.Tensor, step: int) -> None:
        """`loss`: this process's loss of the step just taken, `step` its number (from 1)."""
        finite = torch.isfinite(loss)
        self.nonfinite = torch.where(finite, torch.zeros_like(self.nonfinite), self.nonfinite + 1)
        if self.first is not None:  # a loss that is not finite is the count's (fp16 skips a few)
            hit = finite & (loss > DIVERGED_RATIO * self.first) & (self.diverged_step == 0)
            self.diverged_step = torch.where(hit, step, self.diverged_step)
            self.diverged_loss = torch.where(hit, loss.double(), self.diverged_loss)

    def set_first(self, value: float) -> None:
        self.first = torch.tensor(value, dtype=torch.float64, device=self.nonfinite.device)


def check(model: torch.nn.Module, watch: LossWatch, accelerator, precision: str, step: int, kept: str) -> None:
    """UserError naming what went wrong, the step and the checkpoint kept (`kept`), or nothing.

    One gather over the processes, so that all of them stop together instead of one raising
    while the others wait in the next collective."""
    finite = torch.stack([torch.isfinite(t).all() for t in (*model.parameters(), *model.buffers())
                          if t.is_floating_point()]).all()
    state = torch.stack([watch.nonfinite.double(), (~finite).double(), watch.diverged_step.double(),
                         watch.diverged_loss]).view(1, 4)
    rows = accelerator.gather(state).cpu()
    bad, broken = int(rows[:, 0].max()), bool(rows[:, 1].max())
    fp16 = precision == "fp16"
    limit = NONFINITE_LIMIT[precision]
    if bad > limit:
        skipped = f" ({bad} steps in a row skipped by the fp16 loss scaler)" if fp16 else ""
        hint = "lower optim.lr" + ("" if fp16 else ", or use fp16 with its loss scaling")
        raise UserError(f"loss is not finite since step {step - bad + 1}{skipped}; stopped, {kept} ({hint})")
    if broken:
        raise UserError(f"the model's weights or BatchNorm statistics are not finite at step {step}; stopped, "
                        f"{kept} (lower optim.lr)")
    diverged = rows[rows[:, 2] > 0]
    if len(diverged):
        at, loss = diverged[diverged[:, 2].argmin()].tolist()[2:]
        first = watch.first.item()
        raise UserError(f"the run diverged at step {int(at)}: loss {loss:.4g} is above {DIVERGED_RATIO}x the first "
                        f"loss {first:.4g}; stopped, {kept} (lower optim.lr)")
