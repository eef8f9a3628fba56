"""Training img/s of the project's step against a bare PyTorch loop, side by side.

    python scripts/bench_train.py [--arch resnet18 --variant D --image-size 64 --batch 32 --steps 10 --rounds 5]
    python scripts/bench_train.py --arch resnet50 --image-size 224 --batch 128 --precision bf16 --channels-last  (GPU)
    python scripts/bench_train.py --recipe recipes/cifar10/resnet20-v1.yaml --data data/cifar10   (CIFAR on a CPU)
    python scripts/bench_train.py --recipe recipes/demo.yaml model.width=0.25 data.image_size=64   (a recipe, changed)

Both loops train the same model on the same synthetic batch (no loader). The bare loop is
forward, F.cross_entropy, backward, SGD step. The project's step is bot's TrainStep built
by the trainer from a config: with no tricks, and with every trick but distillation
(zero gamma, no bias decay, warmup + cosine, label smoothing, mixup), and with those and
the extras from beyond the paper that act in the step (CutMix switched with mixup, Swish,
the weight EMA; Cutout and random shapes are the loader's). Both loops build the model from
the same config, so model.act changes both alike. The EMA's update is also timed on its own
(ms per step and share of the step). Rounds alternate
between the loops so that a noisy machine slows both alike; the median round counts.
With --recipe, the one row is that recipe's own config (network, size, batch, memory format,
tricks), the bare loop is also timed in the other memory format (is channels_last faster
here?), and with --data the recipe's train loaders (torch, then DALI on the CPU) are timed
alone over the real images: a loader keeps up when it gives more img/s than the step takes.
Prints a table, appends nothing else, and ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from accelerate import Accelerator  # noqa: E402

from bot import config  # noqa: E402
from bot.models import build_model, network_name  # noqa: E402
from bot.train.trainer import build_step, make_autocast  # noqa: E402

TRICKS = {
    "none": [],
    "all but distillation": ["model.zero_gamma=true", "optim.no_bias_decay=true", "schedule.warmup_epochs=1",
                             "schedule.kind=cosine", "loss.label_smoothing=0.1", "loss.mixup_alpha=0.2"],
}
TRICKS["all but distillation + extras"] = TRICKS["all but distillation"] + [
    "loss.cutmix_alpha=1.0", "loss.cutmix_prob=0.5", "model.act=silu", "model.ema_decay=0.9999"]


def bare_loop(cfg, device, x, y):
    torch.manual_seed(0)
    model = build_model(cfg, 10).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    autocast = make_autocast(cfg.precision, device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def step():
        with autocast():
            loss = F.cross_entropy(model(x.contiguous(memory_format=fmt)), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def project_loop(cfg, accelerator, x, y):
    torch.manual_seed(0)
    model = build_model(cfg, 10).to(accelerator.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_step = build_step(cfg, model, accelerator, 10, len(x), steps_per_epoch=100)
    counter = iter(range(10**9))
    step = lambda: train_step(x, y, next(counter), 0)  # noqa: E731
    step.ema = train_step.ema
    return step


def timed(step, n: int, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        loss = step()
    loss.item()  # wait for the device
    return time.perf_counter() - start


def loader_img_per_s(cfg, backend: str, batches: int) -> float:
    """The recipe's train loader alone (decode and augmentation, no model), after a first batch."""
    from bot.data import build_loaders

    cfg = config.from_dict(cfg.to_dict() | {"data": cfg.data.__dict__ | {"backend": backend}})
    train, _ = build_loaders(cfg, 0, 1, torch.device("cpu"))
    train.set_epoch(0)
    it = iter(train)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * train.batch_size / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--variant", default="D")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--recipe", help="time this recipe's own config (its network, size, batch, memory format, tricks)")
    p.add_argument("--data", help="with --recipe: a data.root whose train loaders are timed too")
    p.add_argument("--loader-batches", type=int, default=100)
    p.add_argument("--workers", type=int, help="with --data: data.workers for the loaders (default: the recipe's)")
    p.add_argument("overrides", nargs="*", help="with --recipe: dotted.key=value changes to it, as train.py takes them")
    a = p.parse_args(argv)
    if a.overrides and not a.recipe:
        p.error("overrides change a recipe: give --recipe")
    accelerator = Accelerator()
    device = accelerator.device
    if a.recipe:
        given = ([f"data.root={a.data}"] if a.data else []) + ([f"data.workers={a.workers}"] if a.workers else [])
        given += a.overrides
        cfg = config.load(a.recipe, given)
        a.arch, a.variant, a.image_size = cfg.model.arch, cfg.model.variant, cfg.data.image_size
        a.batch, a.precision, a.channels_last = cfg.data.batch_size, cfg.precision, cfg.channels_last
        TRICKS.clear()
        TRICKS[" ".join([f"{a.recipe} as it is", *a.overrides])] = []
    base = [f"model.arch={a.arch}", f"model.variant={a.variant}", f"data.image_size={a.image_size}",
            f"data.batch_size={a.batch}", f"precision={a.precision}", f"channels_last={a.channels_last}"]
    x = torch.randn(a.batch, 3, a.image_size, a.image_size, device=device)
    y = torch.randint(0, 10, (a.batch,), device=device)
    network = network_name(argparse.Namespace(arch=a.arch, variant=a.variant))
    print(f"{network} {a.image_size}px batch {a.batch} {a.precision}"
          f"{' channels_last' if a.channels_last else ''} on {device.type} ({torch.get_num_threads()} threads), "
          f"{a.rounds} rounds x {a.steps} steps, median")
    rows, ema_cost, extra = [], None, {}
    for name, tricks in TRICKS.items():
        cfg = config.load(a.recipe, given + tricks) if a.recipe else config.load(None, base + tricks)
        loops = {"bare": bare_loop(cfg, device, x, y), "bot": project_loop(cfg, accelerator, x, y)}
        if a.recipe:  # the other memory format, bare: is the recipe's the faster one here?
            other = config.from_dict(cfg.to_dict() | {"channels_last": not cfg.channels_last})
            loops["bare, other format"] = bare_loop(other, device, x, y)
        for step in loops.values():  # warm up both
            timed(step, 2, device)
        times = {k: [] for k in loops}
        for _ in range(a.rounds):
            for k, step in loops.items():
                times[k].append(timed(step, a.steps, device))
        ips = {k: a.steps * a.batch / statistics.median(v) for k, v in times.items()}
        rows.append({"tricks": name, "bare_img_per_s": round(ips["bare"], 1), "bot_img_per_s": round(ips["bot"], 1),
                     "ratio": round(ips["bot"] / ips["bare"], 3)})
        if "bare, other format" in ips:
            extra[f"bare_img_per_s_channels_last_{not cfg.channels_last}"] = round(ips["bare, other format"], 1)
        if loops["bot"].ema is not None:
            ema = loops["bot"].ema
            per_update = statistics.median(timed(lambda: ema.update(10**6) or torch.zeros((), device=device),
                                                 a.steps, device) / a.steps for _ in range(a.rounds))
            step_s = statistics.median(times["bot"]) / a.steps
            ema_cost = {"ema_update_ms": round(1e3 * per_update, 3), "step_ms": round(1e3 * step_s, 2),
                        "ema_share_of_step_pct": round(100 * per_update / step_s, 2)}
    print(f"| tricks | bare PyTorch img/s | bot step img/s | bot / bare |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['tricks']} | {r['bare_img_per_s']:.1f} | {r['bot_img_per_s']:.1f} | {r['ratio']:.3f} |")
    if ema_cost:
        print(f"EMA update: {ema_cost['ema_update_ms']:.3f} ms per step, {ema_cost['ema_share_of_step_pct']:.2f}% "
              f"of the {ema_cost['step_ms']:.1f} ms step with the extras")
    for key, value in extra.items():
        print(f"bare loop with channels_last={key.endswith('True')}: {value:.1f} img/s")
    if a.recipe and a.data:
        for backend in ("torch", "dali"):
            extra[f"{backend}_loader_img_per_s"] = round(loader_img_per_s(cfg, backend, a.loader_batches), 1)
            print(f"{backend} train loader alone ({cfg.data.workers} workers/threads): "
                  f"{extra[f'{backend}_loader_img_per_s']:.1f} img/s")
    print(json.dumps({"device": device.type, "arch": network, "image_size": a.image_size,
                      "batch": a.batch, "precision": a.precision, "channels_last": a.channels_last, "rows": rows,
                      "ema": ema_cost, **extra}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
