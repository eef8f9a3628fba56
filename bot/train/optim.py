"""NAG with the paper's weight decay, and the no-bias-decay trick (sections 2 and 3.1)."""

from __future__ import annotations

import torch
from torch import nn

from bot.train.schedule import peak_lr

DECAYED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # depthwise convs too (MobileNet), as gluon-cv


def param_groups(model: nn.Module, weight_decay: float, no_bias_decay: bool) -> list[dict]:
    """One group, or (section 3.1) decay on conv/linear weights only.

    Chosen by module type, not by a name substring: `"bn" in name` would miss the
    shortcut BN (`downsample.1`), which must not be decayed either.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_bias_decay:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [m.weight for m in model.modules() if isinstance(m, DECAYED) and m.weight.requires_grad]
    chosen = {id(p) for p in decay}
    rest = [p for p in params if id(p) not in chosen]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = param_groups(model, o.weight_decay, o.no_bias_decay)
    # On CUDA the fused kernel: one launch for all parameters, and with fp16 it takes the loss
    # scale and the overflow flag as device tensors (GradScaler's path for optimizers that
    # `_step_supports_amp_scaling`), where the foreach step makes the scaler read the flag
    # with .item(), a host sync every step. Elsewhere torch's default (foreach) step.
    return torch.optim.SGD(groups, lr=peak_lr(cfg), momentum=o.momentum, nesterov=o.nesterov,
                           fused=use_fused(model) or None)


def use_fused(model: nn.Module) -> bool:
    """Whether to take the fused SGD step: on CUDA (see build_optimizer)."""
    return next(model.parameters()).is_cuda


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """optimizer.load_state_dict, keeping this run's step implementation (fused, foreach): torch
    takes those from the checkpoint's groups, so a run resumed on a GPU from a CPU checkpoint
    would lose the fused step, and one resumed on a CPU would keep a CUDA choice."""
    keep = [{k: group.get(k) for k in ("fused", "foreach")} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, keep):
        group.update(flags)
