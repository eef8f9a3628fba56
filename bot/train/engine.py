"""The training step and evaluation: short and plain, with every trick resolved beforehand."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from bot.train.health import LossWatch


def make_accelerator():
    """accelerate's Accelerator for this process, as training and evaluation both need it.

    Under a launcher with no GPU, gloo on the CPU: accelerate would otherwise take a torchrun
    launch for a single process, and every process would write the same files.
    find_unused_parameters=True keeps DDP's first gradient buckets, so that a resumed launch
    sums gradients in the uninterrupted run's order (docs/distributed.md)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    keep_buckets = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=launched and not torch.cuda.is_available(), kwargs_handlers=[keep_buckets])


class TrainStep:
    """forward, loss, backward, step, schedule: one optimizer step on one batch.

    The batch is this process's share of the global batch; it is split into
    `accumulate` micro-batches whose gradients add up before the step (DDP syncs only
    on the last one). The lr comes from the pure schedule function of the global step.
    `ema` (bot.train.ema.WeightEma or None) folds the weights in after each optimizer step;
    `watch` (bot.train.health.LossWatch) sees every step's loss without a host sync.
    """

    def __init__(self, model, optimizer, scaler, objective, lr_at, autocast, accumulate: int,
                 accelerator, channels_last: bool, ema=None):
        self.model, self.optimizer, self.scaler, self.objective = model, optimizer, scaler, objective
        self.ema = ema
        self.lr_at, self.autocast, self.accumulate = lr_at, autocast, accumulate
        self.accelerator, self.device = accelerator, accelerator.device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.watch = LossWatch(self.device)

    def __call__(self, images, labels, step: int, epoch: int, more=()) -> torch.Tensor:
        """`more`: further (images, labels) batches of the same optimizer step, when the
        schedule grows the batch (bot/train/schedule.py, batch_growth); each is split into
        `accumulate` micro-batches as the first is, so a device holds one micro-batch at a time."""
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        batches = [(images, labels), *more]
        count = self.accumulate * len(batches)
        for b, (images, labels) in enumerate(batches):
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            labels = labels.to(self.device, non_blocking=True)
            images, targets = self.objective.prepare(images, labels, step, epoch)
            for i, (x, t) in enumerate(zip(images.chunk(self.accumulate), targets.chunk(self.accumulate))):
                last = b == len(batches) - 1 and i == self.accumulate - 1
                with nullcontext() if last else self.accelerator.no_sync(self.model):
                    with self.autocast():
                        logits = self.model(x)
                    loss = self.objective.loss(logits, t, x) / count
                    self.scaler.scale(loss).backward()
                total += loss.detach()
        self.scaler.step(self.optimizer)  # fp16: skipped when the scaled gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(step + 1)
        self.watch.update(total, step + 1)
        return total


@torch.no_grad()
def evaluate(model, loader, accelerator, autocast, channels_last: bool, per_class: int = 0) -> dict:
    """Top-1 and top-5 over the whole val set, every image counted once over all processes.

    per_class=K also counts images and top-1 hits of each of K classes (lists under
    `class_images` and `class_top1_hits`)."""
    was_training = model.training
    model.eval()
    device = accelerator.device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # top1 hits, top5 hits, loss sum, count
    classes = torch.zeros(2, per_class, dtype=torch.float64, device=device)  # images, top-1 hits per class
    for images, labels in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with autocast():
            logits = model(images)
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == labels.view(-1, 1)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        totals[:3] += torch.stack([hits[:, 0].sum(), hits.any(1).sum(), loss]).to(totals.dtype)
        totals[3] += len(labels)  # a scalar operand: no host-to-device copy, no sync
        if per_class:
            classes[0] += torch.bincount(labels, minlength=per_class).to(classes.dtype)
            classes[1] += torch.bincount(labels[hits[:, 0]], minlength=per_class).to(classes.dtype)
    totals = accelerator.reduce(totals, reduction="sum")
    model.train(was_training)
    n = max(totals[3].item(), 1)
    metrics = {"top1": 100 * totals[0].item() / n, "top5": 100 * totals[1].item() / n,
               "val_loss": totals[2].item() / n, "val_images": int(totals[3].item())}
    if per_class:
        classes = accelerator.reduce(classes, reduction="sum")
        metrics |= {"class_images": classes[0].long().tolist(), "class_top1_hits": classes[1].long().tolist()}
    return metrics
