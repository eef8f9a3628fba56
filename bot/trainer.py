"""Setting up a run and driving it: `train(cfg) -> summary`.

Everything the loop needs (loaders, model, optimizer, schedule, objective, teacher,
precision) is built and checked before the run folder is touched, so bad input costs
no checkpoint. The same command resumes from `last.pt`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import nullcontext
from functools import partial
from importlib import metadata
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from bot import backends, checkpoint, config
from bot.data import build_loaders
from bot.engine import TrainStep, evaluate, make_accelerator
from bot.errors import UserError
from bot.finetune import init_from
from bot.losses import Objective
from bot.models import build_model, count_params_macs
from bot.optim import build_optimizer, load_optimizer_state
from bot.runlog import RunLog
from bot.schedule import build_schedule
from bot.slimming import fit_shapes, with_slim_l1
from bot.sync_bn import convert_sync_batchnorm
from bot.teacher import load_teacher

# Keys that may change between a run and its resumption without changing what is trained.
RESUMABLE_CHANGES = {"run.max_steps", "run.log_every", "run.checkpoint_every", "run.wandb", "run.resume",
                     "run.name", "run.group", "run.out", "data.root", "data.workers", "data.prefetch", "compile"}
# fp16 with dynamic loss scaling only: gluon-cv used none and static scales produce NaNs.
NONFINITE_LIMIT = {"fp16": 50, "bf16": 0, "fp32": 0}


def make_autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    try:
        with torch.autocast(device.type, dtype=dtype):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except Exception:
        other = "bf16" if precision == "fp16" else "fp32"
        raise UserError(f"precision {precision} is not supported on {device.type} by this torch; "
                        f"use precision={other}") from None
    return partial(torch.autocast, device.type, dtype=dtype)


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def check_same_run(cfg, saved: dict, folder: Path) -> None:
    """Never silently resume a run folder that holds a different recipe."""
    now, before = flat(cfg.to_dict()), flat({k: v for k, v in saved.items() if k != "provenance"})
    changed = [k for k in now if k not in RESUMABLE_CHANGES and now[k] != before.get(k)]
    if changed and cfg.run.resume != "force":
        diffs = ", ".join(f"{k} {before.get(k)!r} -> {now[k]!r}" for k in changed[:3])
        raise UserError(f"run.out {folder} holds a run with another config ({diffs}); "
                        f"use a new run.out, or run.resume=force to continue it anyway")


def provenance() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    packages = {}
    for name in ("torch", "torchvision", "timm", "accelerate", "nvidia-dali-cuda130", "wandb", "numpy"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"git_commit": commit, "python": sys.version.split()[0], "packages": packages,
            "command": " ".join(sys.argv)}


def build_step(cfg, model, accelerator, num_classes: int, batch: int, steps_per_epoch: int,
               teacher=None) -> TrainStep:
    """Every trick of the config resolved into one training step (the loop never reads cfg).

    `model` is wrapped for distributed training here; `batch` is the per-process batch.
    """
    autocast = make_autocast(cfg.precision, accelerator.device)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(accelerator.device.type, enabled=cfg.precision == "fp16")
    objective = Objective(cfg, num_classes, batch // cfg.data.accumulate, teacher, autocast)
    objective = with_slim_l1(objective, model, cfg.model.slim_l1)  # network slimming's L1 on BN scales
    prepared = accelerator.prepare_model(model)
    backends.compile_for_training(model, prepared, cfg.compile)
    return TrainStep(prepared, optimizer, scaler, objective,
                     build_schedule(cfg, steps_per_epoch), autocast, cfg.data.accumulate, accelerator,
                     cfg.channels_last)


def train(cfg: config.Config) -> dict:
    folder = Path(cfg.run.out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"run.out {folder} is a file, not a folder")
    accelerator = make_accelerator()
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    autocast = make_autocast(cfg.precision, device)
    backends.configure(cfg, device)
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every process

    # ---- everything is built and checked before anything is written
    train_loader, val_loader = build_loaders(cfg, rank, world, device)
    num_classes, steps_per_epoch = len(train_loader.classes), len(train_loader)
    state = checkpoint.load_last(folder) if folder.is_dir() else None
    if state is not None:
        check_same_run(cfg, state["config"], folder)
    model = build_model(cfg, num_classes).to(device)
    if state is not None:
        fit_shapes(model, state["model"])  # a fine-tuned slimmed network keeps its narrower layers
    if cfg.model.init_from and state is None:  # fine-tuning; a resumed run continues from last.pt instead
        init_from(model, cfg.model.init_from, train_loader.classes, say=accelerator.is_main_process)
    params, macs = count_params_macs(model, cfg.data.image_size)
    if cfg.model.sync_bn and world > 1:
        model = convert_sync_batchnorm(model, device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    teacher = (load_teacher(cfg.loss.distill_teacher, train_loader.classes, device, cfg.channels_last)
               if cfg.loss.distill_teacher else None)
    train_step = build_step(cfg, model, accelerator, num_classes, train_loader.batch_size, steps_per_epoch, teacher)
    optimizer, scaler, lr_at = train_step.optimizer, train_step.scaler, train_step.lr_at
    total_steps = cfg.schedule.epochs * steps_per_epoch
    if cfg.run.max_steps is not None:
        total_steps = min(total_steps, cfg.run.max_steps)

    step, epoch, best, history = 0, 0, -1.0, {"train_time": 0.0, "evals": []}
    if state is not None:
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_states(state["rng"])
        step, epoch, best, history = state["step"], state["epoch"], state["best_top1"], state["history"]
    summary_path = folder / "summary.json"
    if state is not None and step >= total_steps and summary_path.exists():
        if accelerator.is_main_process:
            print(f"{folder}: already finished at step {step}; nothing to do")
        return json.loads(summary_path.read_text())

    main = accelerator.is_main_process
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        resolved = cfg.to_dict() | {"provenance": provenance()}
        (folder / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    log = RunLog(cfg, folder, main, resume_step=step)
    images_per_step = cfg.data.batch_size
    network = "-".join(filter(None, (cfg.model.arch, cfg.model.variant)))  # variants are ResNet-only
    log.print(f"{cfg.run.name}: {network} {params / 1e6:.2f} M params "
              f"{macs / 1e9:.2f} GMACs, {len(train_loader.classes)} classes, {steps_per_epoch} steps/epoch x "
              f"{cfg.schedule.epochs} epochs, {world} process(es) on {device.type}, {cfg.precision}"
              + (f", resuming at step {step}" if step else ""))

    def check_finite():
        # `bad`: steps in a row whose loss was not finite, the largest over processes, so that all
        # of them stop together instead of one raising while the others wait in the next collective.
        # `broken`: weights or BatchNorm statistics not finite. A step whose loss was finite can still
        # overflow its update, and a forward that overflows (fp16) writes into BN's running statistics
        # even when the scaler then skips the step: no later step repairs either, and the checkpoint
        # written in between must not hold them.
        finite = torch.stack([torch.isfinite(t).all() for t in (*model.parameters(), *model.buffers())
                              if t.is_floating_point()]).all()
        state = torch.stack([train_step.nonfinite, (~finite).long()]).view(1, 2)  # one gather, one sync
        bad, broken = (int(v) for v in accelerator.gather(state).max(0).values)
        if broken or bad > NONFINITE_LIMIT[cfg.precision]:
            if broken and bad <= NONFINITE_LIMIT[cfg.precision]:
                what = f"the model's weights or BatchNorm statistics are not finite at step {step}"
            else:
                skipped = f" ({bad} steps in a row skipped by the fp16 loss scaler)" if cfg.precision == "fp16" else ""
                what = f"loss is not finite since step {step - bad + 1}{skipped}"
            hint = "lower optim.lr" + ("" if cfg.precision == "fp16" else ", or use fp16 with its loss scaling")
            raise UserError(f"{what}; stopped, keeping the last good checkpoint in {folder} ({hint})")

    def save_last():
        check_finite()  # raises: a non-finite state is never written
        if main:
            checkpoint.save_last({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "epoch": epoch, "best_top1": best, "history": history,
                "rng": checkpoint.rng_states(), "config": cfg.to_dict(), "num_classes": num_classes,
                "classes": train_loader.classes}, folder)

    def save_best(top1):
        if main:
            checkpoint.atomic_save({"model": model.state_dict(), "config": cfg.to_dict(),
                                    "num_classes": num_classes, "classes": train_loader.classes,
                                    "top1": top1, "epoch": epoch, "step": step}, folder / checkpoint.BEST)

    while step < total_steps:
        position = step - epoch * steps_per_epoch
        train_loader.set_epoch(epoch, position)
        bar = tqdm(total=steps_per_epoch, initial=position, desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}",
                   disable=None if main else True, leave=False, dynamic_ncols=True)
        tick, tick_step, epoch_start = time.perf_counter(), step, time.perf_counter()
        for images, labels in train_loader:
            loss = train_step(images, labels, step, epoch)
            step += 1
            bar.update()
            if step % cfg.run.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                loss = accelerator.reduce(loss, reduction="mean")  # the global batch's loss, not rank 0's share
                record = {"epoch": epoch, "step": step, "lr": lr_at(step - 1), "loss": loss.item(),
                          "img_per_s": images_per_step * (step - tick_step) / (now - tick)}
                log.log(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.4g}",
                                img_s=f"{record['img_per_s']:.0f}")
                if bar.disable:
                    log.print(json.dumps(record))
                check_finite()
                tick, tick_step = time.perf_counter(), step
            if step % cfg.run.checkpoint_every == 0 and step < total_steps:
                history["train_time"] += time.perf_counter() - epoch_start
                epoch_start = time.perf_counter()
                save_last()
            if step >= total_steps:
                break
        bar.close()
        history["train_time"] += time.perf_counter() - epoch_start
        epoch_done = step % steps_per_epoch == 0
        check_finite()  # before evaluating: best.pt must not take non-finite weights either
        metrics = evaluate(model, val_loader, accelerator, autocast, cfg.channels_last)
        record = {"epoch": epoch, "step": step, **metrics}
        log.log(record)
        log.print(f"epoch {epoch + 1}/{cfg.schedule.epochs} step {step}: top1 {metrics['top1']:.2f} "
                  f"top5 {metrics['top5']:.2f} val_loss {metrics['val_loss']:.3f}")
        history["evals"].append(record)
        if metrics["top1"] > best:
            best = metrics["top1"]
            save_best(best)
        if epoch_done:
            epoch += 1
        save_last()

    final = history["evals"][-1]
    epochs_trained = step / steps_per_epoch
    summary = {"top1": final["top1"], "top5": final["top5"], "best_top1": best,
               "epochs": round(epochs_trained, 3), "steps": step,
               "time_per_epoch_s": history["train_time"] / max(epochs_trained, 1e-9),
               "train_img_per_s": step * images_per_step / max(history["train_time"], 1e-9),
               "params": params, "macs": macs, "macs_note": "multiply-accumulates per image at data.image_size"}
    if main:
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        log.print(f"{cfg.run.name}: top1 {summary['top1']:.2f} top5 {summary['top5']:.2f} "
                  f"(best {best:.2f}) in {step} steps; summary in {summary_path}")
    log.close()
    accelerator.wait_for_everyone()
    return summary
