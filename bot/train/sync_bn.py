"""`model.sync_bn`: BatchNorm statistics over the global batch of all processes.

On GPUs this is torch's SyncBatchNorm. torch refuses it on the CPU (its forward raises
"SyncBatchNorm expected input tensor to be on GPU", and DDP rejects it for CPU modules),
so CPU runs - the multi-process tests, gloo - get `CPUSyncBatchNorm`: the same two-pass
mean and variance, with the sums all-reduced through torch.distributed.nn (which carries
gradients back across processes, as torch's SyncBatchNorm does in its backward).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
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


def convert_sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if device.type != "cpu":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            sync = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return model
