"""The training objective: label smoothing, mixup and distillation (paper section 5), and
CutMix (Yun et al., ICCV 2019), mixup's sibling from beyond the paper.

`Objective` is resolved once from the config before the loop; the training step calls
`prepare` (targets, then mixup or CutMix) and `loss` and never reads the config.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from bot.errors import UserError


def smooth_targets(labels: torch.Tensor, num_classes: int, eps: float, form: str) -> torch.Tensor:
    """One-hot targets with label smoothing (section 5.2).

    paper:   1 - eps on the true class, eps / (K - 1) on the others (the text, eq. 4)
    uniform: 1 - eps + eps / K and eps / K (gluon-cv's code, timm, torch's label_smoothing)
    """
    if form == "paper":
        on, off = 1.0 - eps, eps / (num_classes - 1)
    elif form == "uniform":
        on, off = 1.0 - eps + eps / num_classes, eps / num_classes
    else:
        raise ValueError(f"unknown smoothing form {form!r}")
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), on)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CE(targets, softmax(logits)) averaged over the batch, computed in fp32."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def mixup_lambda(seed: int, step: int, alpha: float) -> float:
    """lambda ~ Beta(alpha, alpha) (section 5.4), a pure function of (seed, step) so resume is exact."""
    return float(np.random.default_rng([seed, step, 0x5EED]).beta(alpha, alpha))


def mixup(images: torch.Tensor, targets: torch.Tensor, lam: float):
    """Mix each sample with the one at the mirrored position of the batch (gluon-cv).

    Mixing with the reversed batch needs no even batch size: for an odd size the middle
    sample mixes with itself. Targets are mixed from the (smoothed) one-hots.
    """
    return (lam * images + (1 - lam) * images.flip(0),
            lam * targets + (1 - lam) * targets.flip(0))


def cutmix_draw(seed: int, step: int, alpha: float, height: int, width: int) -> tuple[float, int, int]:
    """(lambda ~ Beta(alpha, alpha), centre row, centre column, uniform over the image): CutMix's
    draws of one step, a pure function of (seed, step) so resume is exact."""
    rng = np.random.default_rng([seed, step, 0xC07])
    return float(rng.beta(alpha, alpha)), int(rng.integers(height)), int(rng.integers(width))


def uses_cutmix(seed: int, step: int, prob: float) -> bool:
    """Whether this step uses CutMix: with probability `prob` (Yun et al.'s cutmix_prob); with
    mixup on too, the steps that do not use CutMix use mixup (timm's switch_prob)."""
    return bool(np.random.default_rng([seed, step, 0x5117C4]).random() < prob)


def cutmix_box(lam: float, cy: int, cx: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a box of sides sqrt(1 - lam) x the image's, centred at (cy, cx), clipped
    to the image (the centre is uniform, so the box may reach past a border): timm's rand_bbox."""
    ratio = math.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    return (min(max(cy - cut_h // 2, 0), height), min(max(cy + (cut_h + 1) // 2, 0), height),
            min(max(cx - cut_w // 2, 0), width), min(max(cx + (cut_w + 1) // 2, 0), width))


def cutmix(images: torch.Tensor, targets: torch.Tensor, box: tuple[int, int, int, int]):
    """Paste `box` of the mirrored sample of the batch (pairs as in `mixup`) into each image;
    targets mix with lambda = 1 - the clipped box's share of the image (Yun et al., timm)."""
    y0, y1, x0, x1 = box
    height, width = images.shape[-2:]
    lam = 1 - (y1 - y0) * (x1 - x0) / (height * width)
    mixed = images.clone()
    mixed[..., y0:y1, x0:x1] = images.flip(0)[..., y0:y1, x0:x1]
    return mixed, lam * targets + (1 - lam) * targets.flip(0)


def distillation_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 CE(softmax(r / T), softmax(z / T)) (section 5.3, eq. 6); T^2 keeps gradients' scale."""
    soft = F.softmax(teacher.float() / temperature, dim=-1)
    return temperature ** 2 * soft_cross_entropy(student / temperature, soft)


class Objective:
    """Targets, mixup and loss of one run, resolved from the config once."""

    def __init__(self, cfg, num_classes: int, micro_batch: int, teacher=None, autocast=nullcontext):
        l = cfg.loss
        self.num_classes, self.eps, self.form = num_classes, l.label_smoothing, l.smoothing_form
        self.seed, self.alpha = cfg.run.seed, l.mixup_alpha
        self.cutmix_alpha, self.cutmix_prob = l.cutmix_alpha, l.cutmix_prob
        # gluon-cv: no mixup in the last epochs; timm's mixup_off_epoch stops CutMix with it
        self.mixup_until = cfg.schedule.epochs - l.mixup_off_epochs
        for key, on in (("mixup_alpha", self.alpha > 0), ("cutmix_alpha", self.cutmix_alpha > 0)):
            if on and micro_batch < 2:
                raise UserError(f"loss.{key} needs at least 2 images per micro-batch, but data.batch_size "
                                f"{cfg.data.batch_size} gives {micro_batch} per process and accumulation step")
        self.teacher, self.autocast = teacher, autocast
        self.temperature = l.distill_temperature
        # eq. 6 adds the two terms whole; gluon-cv weighs them w and 1 - w
        self.hard_weight, self.soft_weight = ((1.0, 1.0) if l.distill_form == "paper"
                                              else (l.distill_hard_weight, 1 - l.distill_hard_weight))

    def prepare(self, images: torch.Tensor, labels: torch.Tensor, step: int, epoch: int):
        """(inputs, soft targets) of one step: smoothed one-hots, then mixup or CutMix."""
        targets = smooth_targets(labels, self.num_classes, self.eps, self.form)
        if epoch >= self.mixup_until:
            return images, targets
        if self.cutmix_alpha > 0 and uses_cutmix(self.seed, step, self.cutmix_prob):
            lam, cy, cx = cutmix_draw(self.seed, step, self.cutmix_alpha, *images.shape[-2:])
            return cutmix(images, targets, cutmix_box(lam, cy, cx, *images.shape[-2:]))
        if self.alpha > 0:
            images, targets = mixup(images, targets, mixup_lambda(self.seed, step, self.alpha))
        return images, targets

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        hard = soft_cross_entropy(logits, targets)
        if self.teacher is None:
            return hard
        with torch.no_grad(), self.autocast():  # the teacher sees the same (mixed) inputs (gluon-cv)
            teacher_logits = self.teacher(images)
        soft = distillation_term(logits, teacher_logits, self.temperature)
        return self.hard_weight * hard + self.soft_weight * soft
