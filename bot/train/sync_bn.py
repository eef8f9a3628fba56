"""`model.sync_bn`: BatchNorm statistics over the global batch of all processes.

On GPUs this is torch's SyncBatchNorm, through timm's conversion: Inception-V3 and MobileNet
v1 normalize with timm's BatchNormAct2d (the norm, then its activation, in one module), which
torch's own conversion turns into a plain SyncBatchNorm that never calls the activation.
torch refuses SyncBatchNorm on the CPU (its forward raises "SyncBatchNorm expected input tensor
to be on GPU", and DDP rejects it for CPU modules), so CPU runs - the multi-process tests,
gloo - get `CPUSyncBatchNorm`: the same two-pass mean and variance, with the sums all-reduced
through torch.distributed.nn (which carries gradients back across processes, as torch's
SyncBatchNorm does in its backward).
"""

from __future__ import annotations

import timm.layers
import torch
import torch.distributed as dist
from timm.layers import BatchNormAct2d
from torch.distributed.nn.functional import all_reduce


class CPUSyncBatchNorm(torch.nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        count = all_reduce(torch.tensor([float(x.numel() // x.shape[1])], dtype=x.dtype))
        mean = all_reduce(x.sum(dims)) / count
        centred = x - mean.view(1, -1, 1, 1)
        var = all_reduce((centred * centred).sum(dims)) / count  # biased, for normalising
        with torch.no_grad():  # running statistics as BatchNorm keeps them: unbiased variance
            self.num_batches_tracked.add_(1)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        return out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class CPUSyncBatchNormAct(CPUSyncBatchNorm):
    """timm's BatchNormAct2d synced: the norm, then the same dropout and activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def convert_sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every BatchNorm2d of `model` synced, an activation fused into one kept (timm's BatchNormAct2d)."""
    if device.type != "cpu":
        return timm.layers.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) in (torch.nn.BatchNorm2d, BatchNormAct2d):
            fused = type(child) is BatchNormAct2d
            sync = (CPUSyncBatchNormAct if fused else CPUSyncBatchNorm)(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            if fused:
                sync.drop, sync.act = child.drop, child.act
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return model


def same_state_everywhere(model: torch.nn.Module) -> None:
    """Every process's model in the same state, before an evaluation under several processes.

    DDP keeps the weights equal, but without model.sync_bn each process's BatchNorm running
    statistics follow its own batches, so each process would evaluate another model and the
    top-1 over all of them would be of none (nor of the best.pt rank 0 saves). The statistics
    are averaged, as timm's distribute_bn(reduce=True) does: the mean of the processes' estimates
    draws on all their batches, where rank 0's alone would drop the others'. Other floating
    buffers (QAT's observed ranges, for which a mean means nothing) take rank 0's."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    stats, others = [], []
    for module in model.modules():
        for name, t in module.named_buffers(recurse=False):
            if not t.is_floating_point():
                continue  # counts: the same on every process
            bn = isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and name in ("running_mean", "running_var")
            (stats if bn else others).append(t)
    if stats:
        flat = torch.cat([t.flatten() for t in stats])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for t, mean in zip(stats, flat.split([t.numel() for t in stats])):
            t.copy_(mean.view_as(t))
    for t in others:
        dist.broadcast(t, 0)
