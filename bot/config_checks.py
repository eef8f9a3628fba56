"""The config's values checked against each other: impossible values and combinations are
one line naming the key (exit 2), and the values derived from others are filled in
(bot/config.py's `load` calls `validate` on every Config it builds)."""

from __future__ import annotations

import math
import re

from bot.errors import UserError


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise UserError(f"{key}: {why}")


def validate(cfg):
    """Reject impossible values of a bot.config.Config; fill the values derived from others."""
    d, m, o, s, l, r = cfg.data, cfg.model, cfg.optim, cfg.schedule, cfg.loss, cfg.run
    _check(d.image_size >= 16, "data.image_size", f"must be at least 16, got {d.image_size}")
    if d.val_resize is None:  # keep the paper's 224/256 crop ratio at any size
        d.val_resize = int(round(d.image_size * 256 / 224))
    _check(d.val_resize >= d.image_size, "data.val_resize",
           f"must be at least data.image_size ({d.image_size}), got {d.val_resize}")
    _check(d.batch_size >= 1, "data.batch_size", f"must be at least 1, got {d.batch_size}")
    _check(d.accumulate >= 1, "data.accumulate", f"must be at least 1, got {d.accumulate}")
    _check(d.workers >= 0, "data.workers", f"must be 0 or more, got {d.workers}")
    for key, pair, hi in (("random_area", d.random_area, 1.0), ("random_aspect", d.random_aspect, math.inf)):
        _check(len(pair) == 2 and 0 < pair[0] <= pair[1] <= hi, f"data.{key}",
               f"must be [low, high] with 0 < low <= high{' <= 1' if hi == 1 else ''}, got {pair}")
    for key in ("brightness", "contrast", "saturation"):
        _check(0 <= getattr(d, key) <= 1, f"data.{key}",
               f"must be in [0, 1] (factor in [1 - x, 1 + x]), got {getattr(d, key)}")
    _check(0 <= d.hue <= 0.5, "data.hue", f"must be in [0, 0.5], got {d.hue}")
    _check(d.pca_lighting >= 0, "data.pca_lighting", f"must be 0 or more, got {d.pca_lighting}")
    _check(d.prefetch >= 1, "data.prefetch", f"must be at least 1, got {d.prefetch}")
    _check(d.shuffle_buffer >= 1, "data.shuffle_buffer", f"must be at least 1, got {d.shuffle_buffer}")
    _check(0 <= d.hw_decoder_load <= 1, "data.hw_decoder_load", f"must be in [0, 1], got {d.hw_decoder_load}")
    _check(d.val_split.strip() not in ("", "train") and "/" not in d.val_split, "data.val_split",
           f"must name the held-out split's folder (val, test, validation), got {d.val_split!r}")
    _check(d.padding >= 0, "data.padding", f"must be 0 or more pixels, got {d.padding}")
    _check(len(d.mean) == 3 and len(d.std) == 3 and all(s > 0 for s in d.std), "data.mean",
           f"data.mean and data.std must be 3 values (RGB, 0-255), std positive; got {d.mean} and {d.std}")
    _validate_arch(cfg)
    _check(m.init_from is None or m.init_from.strip() != "", "model.init_from",
           f"must be a checkpoint or run folder, or null, got {m.init_from!r}")
    _check(m.slim_l1 >= 0, "model.slim_l1", f"must be 0 (off) or positive, got {m.slim_l1}")
    _check(m.slim_l1 == 0 or m.arch.startswith("resnet"), "model.slim_l1",
           f"slims the channels inside residual blocks; {m.arch} has none: set model.slim_l1=0")
    _validate_qat(cfg)
    _check(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
    _check(0 <= o.momentum < 1, "optim.momentum", f"must be in [0, 1), got {o.momentum}")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be 0 or more, got {o.weight_decay}")
    _check(not o.nesterov or o.momentum > 0, "optim.nesterov", f"needs optim.momentum > 0, got {o.momentum}")
    _check(s.epochs >= 1, "schedule.epochs", f"must be at least 1, got {s.epochs}")
    _check(0 <= s.warmup_epochs < s.epochs, "schedule.warmup_epochs",
           f"must be in [0, schedule.epochs) = [0, {s.epochs}), got {s.warmup_epochs}")
    _check(all(0 < a < b for a, b in zip(s.milestones, s.milestones[1:])) and all(0 < x for x in s.milestones),
           "schedule.milestones", f"must be increasing positive epochs, got {s.milestones}")
    _validate_growth(cfg)
    _check(0 <= l.label_smoothing < 1, "loss.label_smoothing", f"must be in [0, 1), got {l.label_smoothing}")
    _check(l.mixup_alpha >= 0, "loss.mixup_alpha", f"must be 0 or more, got {l.mixup_alpha}")
    _check(0 <= l.mixup_off_epochs <= s.epochs, "loss.mixup_off_epochs",
           f"must be in [0, schedule.epochs] = [0, {s.epochs}], got {l.mixup_off_epochs}")
    _check(l.distill_temperature > 0, "loss.distill_temperature", f"must be positive, got {l.distill_temperature}")
    _check(0 <= l.distill_hard_weight <= 1, "loss.distill_hard_weight",
           f"must be in [0, 1], got {l.distill_hard_weight}")
    _check(l.distill_form == "weighted" or l.distill_hard_weight == 0.5, "loss.distill_hard_weight",
           f"weighs the weighted form; loss.distill_form=paper adds both terms whole: leave it at 0.5, got "
           f"{l.distill_hard_weight}")
    _check(l.cutmix_alpha >= 0, "loss.cutmix_alpha", f"must be 0 or more, got {l.cutmix_alpha}")
    _check(0 <= l.cutmix_prob <= 1, "loss.cutmix_prob", f"must be in [0, 1], got {l.cutmix_prob}")
    _validate_extras(cfg)
    _check(r.max_steps is None or r.max_steps >= 1, "run.max_steps", f"must be at least 1 or null, got {r.max_steps}")
    _check(r.log_every >= 1, "run.log_every", f"must be at least 1, got {r.log_every}")
    checkpoint_interval(r.checkpoint_every)
    return cfg


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|min|h)\s*$")
SECONDS = {"s": 1, "sec": 1, "min": 60, "h": 3600}


def checkpoint_interval(value) -> tuple[str, float]:
    """run.checkpoint_every as ("steps", n) or ("seconds", s); UserError for anything else."""
    if isinstance(value, int):
        _check(value >= 1, "run.checkpoint_every", f"must be at least 1 step, got {value}")
        return "steps", value
    found = DURATION.match(str(value))
    _check(found is not None and float(found.group(1)) > 0, "run.checkpoint_every",
           f"must be a number of steps or a positive wall time such as 10min, 30s or 1h, got {value!r}")
    return "seconds", float(found.group(1)) * SECONDS[found.group(2)]


def _validate_qat(cfg) -> None:
    """QAT fine-tunes a trained run of a network whose every conv a BN follows, in fp32."""
    m = cfg.model
    _check(2 <= m.qat_bits <= 8, "model.qat_bits", f"must be in [2, 8], got {m.qat_bits}")
    if not m.qat:
        _check(m.qat_bits == 8, "model.qat_bits", "sets the bits of model.qat: set model.qat=true")
        return
    _check(m.init_from is not None, "model.qat", "fine-tunes a trained run: set model.init_from (a run or checkpoint)")
    _check(m.slim_l1 == 0, "model.qat", "does not train with slimming's penalty: slim first, then QAT the fine-tuned "
           "slimmed run (set model.slim_l1=0)")
    _check(m.arch.startswith("resnet") or m.arch == "mobilenet_v1", "model.qat",
           f"handles ResNets and mobilenet_v1 (every conv followed by its BN); not {m.arch}")
    _check(cfg.precision == "fp32", "precision", "model.qat simulates int8 in fp32: set precision=fp32")


def _validate_growth(cfg) -> None:
    """Batch growth (Smith et al.): the accumulation limit, and warmup over before the batch grows."""
    d, s = cfg.data, cfg.schedule
    _check(d.accumulate_max is None or d.accumulate_max >= d.accumulate, "data.accumulate_max",
           f"must be at least data.accumulate ({d.accumulate}) or null, got {d.accumulate_max}")
    _check(d.accumulate_max is None or s.kind == "batch_growth", "data.accumulate_max",
           f"limits schedule.kind=batch_growth; schedule.kind is {s.kind}: set data.accumulate_max=null")
    _check(s.kind != "batch_growth" or not s.milestones or s.warmup_epochs <= s.milestones[0],
           "schedule.warmup_epochs",
           f"must end by the first milestone ({s.milestones[:1]}) when the batch grows, got {s.warmup_epochs}")


def _validate_extras(cfg) -> None:
    """The fields from beyond the paper that are data or model (README "Beyond the paper")."""
    d, m, r = cfg.data, cfg.model, cfg.run
    _check(0 <= d.cutout < 1, "data.cutout", f"must be in [0, 1) (a fraction of the image side), got {d.cutout}")
    _check(all(x >= 16 for x in d.train_sizes), "data.train_sizes", f"sizes must be at least 16, got {d.train_sizes}")
    _check(d.size_every >= 1, "data.size_every", f"must be at least 1 (epochs), got {d.size_every}")
    if d.size_schedule == "progressive" and d.train_sizes:
        _check(len(d.train_sizes) == 2 and all(x % 32 == 0 for x in d.train_sizes), "data.train_sizes",
               f"progressive takes [first, last], multiples of 32 (FFCV), got {d.train_sizes}")
    if m.arch == "inception_v3":
        _check(all(x >= 75 for x in d.train_sizes), "data.train_sizes",
               f"inception_v3 needs at least 75 px, got {d.train_sizes}")
    _check(0 <= m.ema_decay < 1, "model.ema_decay", f"must be in [0, 1), got {m.ema_decay}")
    _check(r.best_of == "raw" or m.ema_decay > 0, "run.best_of", f"ema needs model.ema_decay > 0, got {m.ema_decay}")


def _validate_arch(cfg) -> None:
    """What only some networks have: ResNet variants, residual blocks (zero gamma), a minimum size."""
    m, d = cfg.model, cfg.data
    if m.arch.startswith("cifar_"):  # gluon-cv's networks, as they are: residual blocks, no variants or width
        _check(m.variant is None, "model.variant", f"chooses an ImageNet ResNet variant; {m.arch} has none: "
               "set model.variant=null")
        _check(m.width == 1, "model.width", f"scales ImageNet ResNets; {m.arch} has no such option: set model.width=1")
        return
    if m.arch.startswith("resnet"):
        m.variant = m.variant or "A"
        _check(1 / 16 <= m.width <= 4, "model.width", f"must be in [0.0625, 4], got {m.width}")
        # timm's plain stem (A, B) always ends in 64 channels; the deep stem ends in 2 x stem_width
        _check(m.width == 1 or m.variant in ("C", "D"), "model.width",
               f"scales the deep stem of variants C and D; variant {m.variant} keeps 64 channels: use C or D")
        return
    _check(m.width == 1, "model.width", f"scales ResNet channels; {m.arch} has no such option: set model.width=1")
    _check(m.variant is None, "model.variant",
           f"chooses a ResNet variant (section 4); {m.arch} has none: set model.variant=null")
    # Section 3.1 zeroes the BN that ends a residual branch: Inception-V3 and MobileNet v1 have no
    # residual blocks, so the trick has nothing to act on (their Table 6 columns train without it).
    _check(not m.zero_gamma, "model.zero_gamma",
           f"zeroes the last BN of each residual block (section 3.1); {m.arch} has no residual blocks: "
           "set model.zero_gamma=false")
    # Inception-V3's unpadded stem and reductions need 75 px to leave a 1 x 1 map (torchvision, timm)
    _check(m.arch != "inception_v3" or d.image_size >= 75, "data.image_size",
           f"inception_v3 needs at least 75 px, got {d.image_size} (the paper trains it at 299)")
