"""How torch runs the model on the device: cuDNN autotuning, TF32, and torch.compile.

Nothing here changes what is trained (the recipe does); it changes how fast, and, for
TF32, how exactly the paper's FP32 baseline is computed.
"""

from __future__ import annotations

import torch
from torch import nn


def configure(cfg, device: torch.device) -> None:
    """Set torch's backend switches for this run (once, before the model is built).

    - cuDNN autotuning: every batch has the same shape, so the fastest algorithm is
      searched once per shape, as NVIDIA's ResNet-50 example does.
    - TF32 off under `precision: fp32`, which would otherwise not be the paper's FP32
      baseline (section 3.2); fp16 and bf16 keep torch's defaults (docs/gpu.md).
    """
    if torch.device(device).type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    if cfg.precision == "fp32":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def compile_kwargs(setting) -> dict | None:
    """torch.compile's keyword arguments for the config's `compile` value, or None when off."""
    if setting is False:
        return None
    return {} if setting is True else {"mode": setting}


def compile_model(model: nn.Module, setting) -> nn.Module:
    """Compile `model` in place (nn.Module.compile): the same object, the same state_dict keys
    (no `_orig_mod.` prefix, as torch.compile's wrapper would add), so checkpoints of
    compiled and eager runs load into each other. Returns the model."""
    kwargs = compile_kwargs(setting)
    if kwargs is not None:
        model.compile(**kwargs)
    return model


def compile_for_training(model: nn.Module, prepared: nn.Module, setting) -> None:
    """Compile the model a run trains and evaluates.

    `prepared` is what accelerate made of `model`: `model` itself for one process, a
    DistributedDataParallel wrapper for several. The wrapper is compiled too so that
    dynamo's DDP optimizer splits the graph at gradient buckets and all-reduces overlap
    the backward; evaluation calls `model` itself, compiled alike.
    """
    compile_model(model, setting)
    if prepared is not model:
        compile_model(prepared, setting)
