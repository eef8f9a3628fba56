"""Setting up a run and driving it: `train(cfg) -> summary`.

Everything the loop needs (loaders, model, optimizer, schedule, objective, teacher,
precision) is built and checked before the run folder is touched, so bad input costs
no checkpoint. The same command resumes from `last.pt`. `Run` holds one run's state;
its methods are the phases `train` calls in order.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from bot import config
from bot.config_checks import checkpoint_interval
from bot.data import build_loaders
from bot.errors import UserError
from bot.artifacts import checkpoint
from bot.models import build_model, count_params_macs, network_name
from bot.models.qat import prepare_qat
from bot.models.slimmable import fit_shapes
from bot.train import backends
from bot.train.ema import WeightEma
from bot.train.engine import TrainStep, evaluate, make_accelerator
from bot.train.finetune import init_from
from bot.train.losses import Objective
from bot.train.optim import build_optimizer, load_optimizer_state
from bot.train import health
from bot.train.preempt import Stopped, StopSignals
from bot.train.run_checks import check_same_classes, check_same_data, check_same_run, provenance
from bot.train.runlock import RunLock
from bot.train.runlog import RunLog
from bot.train.schedule import build_plan, build_schedule
from bot.train.slim_penalty import with_slim_l1
from bot.train.sync_bn import convert_sync_batchnorm, same_state_everywhere
from bot.train.teacher import load_teacher

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
    # the average is a copy of the eager model, made before any wrapper or compilation
    ema = WeightEma(model, cfg.model.ema_decay, cfg.model.ema_warmup) if cfg.model.ema_decay > 0 else None
    prepared = accelerator.prepare_model(model)
    backends.compile_for_training(model, prepared, cfg.compile)
    return TrainStep(prepared, optimizer, scaler, objective,
                     build_schedule(cfg, steps_per_epoch), autocast, cfg.data.accumulate, accelerator,
                     cfg.channels_last, ema)


class Run:
    """One training run, in the order `train` drives it:

    __init__     build and check everything (loaders, model, step) and read last.pt; writes nothing
    start        write config.yaml, open the log
    train_epoch  the steps of the current epoch from where it stands (to the run's end at most)
    validate     top-1/top-5 on the val set, best.pt, last.pt
    finish       summary.json
    """

    def __init__(self, cfg: config.Config):
        self.cfg, self.folder = cfg, Path(cfg.run.out)
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"run.out {self.folder} is a file, not a folder")
        self.accelerator = make_accelerator()
        self.device, self.world = self.accelerator.device, self.accelerator.num_processes
        self.main = self.accelerator.is_main_process
        self.autocast = make_autocast(cfg.precision, self.device)
        backends.configure(cfg, self.device)
        torch.manual_seed(cfg.run.seed)  # the same initial weights on every process

        # ---- everything is built and checked before anything is written
        self.train_loader, self.val_loader = build_loaders(cfg, self.accelerator.process_index, self.world,
                                                           self.device)
        self.classes = self.train_loader.classes
        self.num_classes, self.steps_per_epoch = len(self.classes), len(self.train_loader)
        self.samples = {"train": self.train_loader.samples, "val": self.val_loader.samples}
        self.lock = RunLock(self.folder)
        if self.main and self.folder.is_dir():  # before reading last.pt: a trainer still on it may rewrite it
            self.lock.acquire()
        try:
            saved = checkpoint.load_last(self.folder) if self.folder.is_dir() else None
            if saved is not None:
                check_same_run(cfg, saved["config"], self.folder)
                check_same_classes(cfg, saved, self.classes, self.folder)
                check_same_data(cfg, saved, self.samples, self.folder)
            self.build(saved)
        except BaseException:
            self.lock.release()
            raise

    def build(self, saved: dict | None) -> None:
        """The model, the step and the plan, at `saved`'s state when resuming (the rest of __init__)."""
        cfg = self.cfg
        self.model = self.make_model(saved)
        teacher = (load_teacher(cfg.loss.distill_teacher, self.classes, self.device, cfg.channels_last)
                   if cfg.loss.distill_teacher else None)
        self.train_step = build_step(cfg, self.model, self.accelerator, self.num_classes,
                                     self.train_loader.batch_size, self.steps_per_epoch, teacher)
        self.ema = self.train_step.ema
        self.plan = build_plan(cfg, self.steps_per_epoch)  # optimizer steps per epoch (batch growth)
        empty = [e for e in range(cfg.schedule.epochs) if self.plan.steps_in(e) < 1]  # the last epochs, if any
        if empty and (cfg.run.max_steps is None or cfg.run.max_steps > self.plan.first_step(empty[0])):
            raise UserError(f"schedule.kind=batch_growth grows the batch past the {self.steps_per_epoch} batches of an "
                            f"epoch; lower data.accumulate_max or data.batch_size")
        self.total_steps = self.plan.total_steps
        if cfg.run.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.run.max_steps)
        self.step, self.epoch, self.best, self.history = 0, 0, -1.0, {"train_time": 0.0, "evals": []}
        self.resumed = saved is not None
        # resumed from last.prev.pt because last.pt is unreadable: the next save must not rotate
        # the unreadable file into last.prev.pt, which would leave a single readable checkpoint
        self.rotate = saved is None or saved[checkpoint.READ_FROM] == checkpoint.LAST
        self.stop_signals = StopSignals(self.world)
        self.save_every = checkpoint_interval(cfg.run.checkpoint_every)  # ("steps", n) or ("seconds", s)
        if saved is not None:
            self.resume(saved)
        self.saved_step = self.step if saved is not None else None  # where last.pt stands
        self.saved_at, self.save_asked = time.monotonic(), False  # for a checkpoint_every in time

    def make_model(self, saved: dict | None) -> torch.nn.Module:
        """The model on the run's device in its final form (before any distributed wrapper): the
        shapes of `saved` (last.pt) when resuming, else from model.init_from when fine-tuning."""
        cfg = self.cfg
        model = build_model(cfg, self.num_classes).to(self.device)
        if saved is not None:
            fit_shapes(model, saved["model"])  # a fine-tuned slimmed network keeps its narrower layers
        if cfg.model.init_from and saved is None:
            init_from(model, cfg.model.init_from, self.classes, say=self.main, ours=cfg.model)
        self.params, self.macs = count_params_macs(model, cfg.data.image_size)
        if cfg.model.qat:  # after init_from, which loads the plain network's weights
            model = prepare_qat(model, cfg.model.qat_bits)
        if cfg.model.sync_bn and self.world > 1:
            model = convert_sync_batchnorm(model, self.device)
        # again: the quantizers prepare_qat adds are built on the CPU
        return model.to(self.device, memory_format=torch.channels_last if cfg.channels_last else None)

    def resume(self, state: dict) -> None:
        """Everything an uninterrupted run would hold at `state`'s step, random generators included."""
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.train_step.optimizer, state["optimizer"])
        self.train_step.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_states(state["rng"])
        if self.ema is not None:  # a run forced on with EMA newly on starts its average from the weights
            self.ema.load_state_dict(state.get("ema", state["model"]))
        self.step, self.epoch, self.best, self.history = (state["step"], state["epoch"], state["best_top1"],
                                                          state["history"])
        if "first_loss" in self.history:  # divergence is measured against the same loss as before
            self.train_step.watch.set_first(self.history["first_loss"])

    @property
    def summary_path(self) -> Path:
        return self.folder / "summary.json"

    def finished(self) -> bool:
        """Trained to the end with a readable summary.json; an unreadable one (a disk that filled
        during its write, an edit) is written again from last.pt rather than leaving the folder stuck."""
        if not (self.resumed and self.step >= self.total_steps and self.summary_path.exists()):
            return False
        try:
            json.loads(self.summary_path.read_text())
            return True
        except (OSError, ValueError) as e:
            if self.main:
                print(f"warning: {self.summary_path} is unreadable ({type(e).__name__}); writing it again "
                      f"from last.pt", file=sys.stderr)
            return False

    def start(self) -> None:
        cfg = self.cfg
        if self.main:
            resolved = cfg.to_dict() | {"provenance": provenance() | {"data": self.samples}}
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                if e.errno in checkpoint.UNWRITABLE:
                    raise checkpoint.unwritable(e, self.folder) from e
                raise
            if self.lock.file is None:  # a new folder: locked before its first write (bot/train/runlock.py)
                self.lock.acquire()
            checkpoint.atomic_write_text(self.folder / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        self.log = RunLog(cfg, self.folder, self.main, resume_step=self.step)
        network = network_name(cfg.model)
        self.log.print(f"{cfg.run.name}: {network} {self.params / 1e6:.2f} M params "
                       f"{self.macs / 1e9:.2f} GMACs, {self.num_classes} classes, {self.steps_per_epoch} steps/epoch x "
                       f"{cfg.schedule.epochs} epochs, {self.world} process(es) on {self.device.type}, {cfg.precision}"
                       + (f", resuming at step {self.step}" if self.step else ""))

    # ------------------------------------------------------------ training

    def train_epoch(self) -> None:
        """The steps of the current epoch from where the run stands, to the run's end at most."""
        plan, grow = self.plan, self.plan.growth[self.epoch]
        position = self.step - plan.first_step(self.epoch)
        if not 0 <= position < plan.steps_in(self.epoch):  # an epoch without a step would be repeated for ever
            raise UserError(f"step {self.step} is not in epoch {self.epoch + 1} (steps {plan.first_step(self.epoch)} "
                            f"to {plan.first_step(self.epoch + 1) - 1}) of this data and config; use a new run.out")
        self.train_loader.set_epoch(self.epoch, position * grow)  # in loader batches
        self.bar = tqdm(total=plan.steps_in(self.epoch), initial=position,
                        desc=f"epoch {self.epoch + 1}/{self.cfg.schedule.epochs}",
                        disable=None if self.main else True, leave=False, dynamic_ncols=True)
        self.tick, self.tick_step, self.clock = time.perf_counter(), self.step, time.perf_counter()
        batches = iter(self.train_loader)
        for _ in range(plan.steps_in(self.epoch) - position):
            (images, labels), *more = (next(batches) for _ in range(grow))  # grow > 1: schedule.kind=batch_growth
            loss = self.train_step(images, labels, self.step, self.epoch, more)  # the step: bot.train.engine.TrainStep
            self.step += 1
            self.bar.update()
            self.after_step(loss)
            decision = self.stop_signals.decide(save_due=self.checkpoint_due())
            if self.step >= self.total_steps:  # the one place the loop decides whether to go on
                break
            if decision.stop:
                self.stop(decision.stop)
            if decision.save and self.step != plan.first_step(self.epoch + 1):  # validate saves the epoch's end
                self.count_train_time()
                self.save_last()
        self.bar.close()
        self.count_train_time()

    def stop(self, signal_name: str) -> None:
        """End on a scheduler's signal (bot/train/preempt.py): last.pt at this step, then Stopped."""
        self.bar.close()
        self.count_train_time()
        self.save_last()
        self.log.print(f"stopped by {signal_name} at step {self.step}; run the same command to resume")
        self.log.close()
        self.accelerator.wait_for_everyone()  # no process exits while rank 0 still writes
        raise Stopped(signal_name, self.step)

    def checkpoint_due(self) -> bool:
        """run.checkpoint_every as a wall time: rank 0's clock asks once, the processes agree on the
        step (StopSignals.decide); asked again only after last.pt is written."""
        kind, every = self.save_every
        due = (kind == "seconds" and self.main and not self.save_asked
               and time.monotonic() - self.saved_at >= every)
        self.save_asked = self.save_asked or due
        return due

    def after_step(self, loss: torch.Tensor) -> None:
        """The training line every run.log_every steps, last.pt every run.checkpoint_every steps (when
        it counts steps; a wall time is train_epoch's, agreed by all processes)."""
        step, run = self.step, self.cfg.run
        if self.train_step.watch.first is None:  # the yardstick of divergence: this run's first loss
            self.history["first_loss"] = self.accelerator.reduce(loss, reduction="mean").item()
            self.train_step.watch.set_first(self.history["first_loss"])
        log_now = step % run.log_every == 0 or step == self.total_steps
        kind, every = self.save_every
        # the epoch's end is saved by validate, after its evaluation: saving here too would put
        # last.pt and last.prev.pt at one step, and a kill in between would log the evaluation twice
        save_now = (kind == "steps" and step % every == 0 and step < self.total_steps
                    and step != self.plan.first_step(self.epoch + 1))
        if not (log_now or save_now):
            return
        if log_now:
            value = self.accelerator.reduce(loss, reduction="mean").item()  # the global batch's, not rank 0's share
            now = time.perf_counter()
            record = {"epoch": self.epoch, "step": step, "lr": self.train_step.lr_at(step - 1), "loss": value,
                      "img_per_s": (self.images(step) - self.images(self.tick_step)) / (now - self.tick)}
            self.log.log(record)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.4g}",
                                 img_s=f"{record['img_per_s']:.0f}")
            if self.bar.disable:
                self.log.print_step(record)  # a readable line where no bar shows
            self.tick, self.tick_step = time.perf_counter(), step
        self.check_health()  # every step's loss so far, not only the logged ones: no save after a divergence
        if save_now:
            self.count_train_time()
            self.save_last()

    def images(self, step: int) -> int:
        """Images trained on in the first `step` steps (more per step once batch growth grows it)."""
        return self.plan.images(step, self.cfg.data.batch_size)

    def count_train_time(self) -> None:
        now = time.perf_counter()
        self.history["train_time"] += now - self.clock
        self.clock = now

    def check_health(self) -> None:
        """UserError, naming the step and the checkpoint kept, once the loss has not been finite too
        often, the weights or BatchNorm statistics are not finite, or the run diverged (bot/train/health.py)."""
        health.check(self.model, self.train_step.watch, self.accelerator, self.cfg.precision, self.step, self.kept())

    def kept(self) -> str:
        if self.saved_step is None:
            return f"nothing saved in {self.folder} yet"
        return f"keeping {self.folder / checkpoint.LAST} at step {self.saved_step}"

    # ------------------------------------------------------------ evaluation and checkpoints

    def validate(self) -> None:
        """Evaluate at the end of an epoch (or of a capped run), keep best.pt, write last.pt."""
        epoch_done = self.step == self.plan.first_step(self.epoch + 1)
        self.check_health()  # before evaluating: best.pt must not take diverged weights either
        if not self.cfg.model.sync_bn:  # one model evaluated and saved, not one per process
            same_state_everywhere(self.model)
        metrics = evaluate(self.model, self.val_loader, self.accelerator, self.autocast, self.cfg.channels_last)
        text = f"top1 {metrics['top1']:.2f} top5 {metrics['top5']:.2f} val_loss {metrics['val_loss']:.3f}"
        if self.ema is not None:
            self.ema.sync()
            averaged = evaluate(self.ema.module, self.val_loader, self.accelerator, self.autocast,
                                self.cfg.channels_last)
            metrics |= {f"ema_{k}": v for k, v in averaged.items() if k != "val_images"}
            text += f", ema top1 {metrics['ema_top1']:.2f} top5 {metrics['ema_top5']:.2f}"
        record = {"epoch": self.epoch, "step": self.step, **metrics}
        self.log.log(record)
        self.log.print(f"epoch {self.epoch + 1}/{self.cfg.schedule.epochs} step {self.step}: {text}")
        if not math.isfinite(metrics["val_loss"]):  # diverged logits: neither best.pt nor last.pt takes them
            raise UserError(f"the run diverged at step {self.step}: val loss is {metrics['val_loss']}; stopped, "
                            f"{self.kept()} (lower optim.lr)")
        self.history["evals"].append(record)
        score = metrics["ema_top1" if self.cfg.run.best_of == "ema" else "top1"]
        if score > self.best:
            self.best = score
            self.save_best(self.best)
        if epoch_done:
            self.epoch += 1
        self.save_last()

    def identity(self) -> dict:
        """What every checkpoint carries to be read on its own."""
        return {"config": self.cfg.to_dict(), "num_classes": self.num_classes, "classes": self.classes,
                "data": self.samples}

    def averaged(self) -> dict:
        """The weight average under the key `ema` (a state_dict with the model's keys), if kept."""
        if self.ema is None:
            return {}
        self.ema.sync()  # every process saves (and goes on with) rank 0's average
        return {"ema": self.ema.state_dict()}

    def save_last(self) -> None:
        self.check_health()  # raises: a diverged or non-finite state is never written
        ema = self.averaged()
        if self.main:
            ts = self.train_step
            checkpoint.save_last({
                "model": self.model.state_dict(), "optimizer": ts.optimizer.state_dict(),
                "scaler": ts.scaler.state_dict(), "step": self.step, "epoch": self.epoch, "best_top1": self.best,
                "history": self.history, "rng": checkpoint.rng_states(), **ema, **self.identity()}, self.folder,
                rotate=self.rotate)
        self.rotate, self.saved_step = True, self.step
        self.saved_at, self.save_asked = time.monotonic(), False

    def save_best(self, top1: float) -> None:
        """best.pt: under `model` the weights run.best_of names (raw or the average), and the
        average under `ema` when the run keeps one; `top1` is the chosen weights' val top-1."""
        ema = self.averaged()
        if self.main:
            best_of = self.cfg.run.best_of
            weights = ema["ema"] if best_of == "ema" else self.model.state_dict()
            checkpoint.atomic_save({"model": weights, **ema, "best_of": best_of, **self.identity(), "top1": top1,
                                    "epoch": self.epoch, "step": self.step}, self.folder / checkpoint.BEST)

    def finish(self) -> dict:
        final, history = self.history["evals"][-1], self.history
        epochs_trained = self.plan.epoch_of(self.step)
        summary = {"top1": final["top1"], "top5": final["top5"], "best_top1": self.best,
                   "epochs": round(epochs_trained, 3), "steps": self.step,
                   # measured over one epoch at least: a few capped steps (run.max_steps) would make it
                   # an extrapolation dominated by the first, slow steps
                   "time_per_epoch_s": history["train_time"] / epochs_trained if epochs_trained >= 1 else None,
                   "train_time_s": history["train_time"],
                   "train_img_per_s": self.images(self.step) / max(history["train_time"], 1e-9),
                   "params": self.params, "macs": self.macs,
                   "macs_note": "multiply-accumulates per image at data.image_size"}
        if self.ema is not None:
            summary |= {"ema_top1": final["ema_top1"], "ema_top5": final["ema_top5"], "best_of": self.cfg.run.best_of}
        if self.main:
            checkpoint.atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")
            self.log.summarize(summary)
            self.log.print(f"{self.cfg.run.name}: top1 {summary['top1']:.2f} top5 {summary['top5']:.2f} "
                           f"(best {self.best:.2f}) in {self.step} steps; summary in {self.summary_path}")
        self.log.close()
        self.accelerator.wait_for_everyone()
        return summary


def train(cfg: config.Config) -> dict:
    """Train `cfg`'s run to its end, resuming from its folder's last.pt if there is one."""
    run = Run(cfg)
    try:
        if run.finished():
            if run.main:
                print(f"{run.folder}: already finished at step {run.step}; nothing to do")
            return json.loads(run.summary_path.read_text())
        run.start()
        with run.stop_signals:
            while run.step < run.total_steps:
                before = run.step
                run.train_epoch()
                run.validate()
                if run.step <= before:  # never evaluate and save the same step again and again
                    raise RuntimeError(f"an epoch of run {run.folder} ended at step {run.step}, where it began")
        return run.finish()
    finally:
        run.lock.release()
