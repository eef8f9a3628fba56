"""What a run folder must match to be resumed, and the provenance its config.yaml records.

A run folder is resumed only with the same recipe (`check_same_run`, up to the keys in
RESUMABLE_CHANGES) and the same classes (`check_same_classes`, compared by name: data.root
may move, the data may not change).
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bot import config
from bot.errors import UserError
from bot.data import fingerprint
from bot.artifacts import trained

# Keys that may change between a run and its resumption without changing what is trained.
RESUMABLE_CHANGES = {"run.max_steps", "run.log_every", "run.checkpoint_every", "run.wandb", "run.resume",
                     "run.name", "run.group", "run.out", "data.root", "data.workers", "data.prefetch", "compile"}


# key -> the key without which it does nothing (0 or off in both configs: it changes no step).
# So a changed default of such a key never refuses a resume: a run without CutMix
# (loss.cutmix_alpha 0) trains the same whatever loss.cutmix_prob is.
INERT_WITHOUT = {"loss.cutmix_prob": "loss.cutmix_alpha"}


def inert(key: str, now: dict, before: dict) -> bool:
    needs = INERT_WITHOUT.get(key)
    return needs is not None and not now.get(needs) and not before.get(needs)


def check_same_run(cfg, saved: dict, folder: Path) -> None:
    """Never silently resume a run folder that holds a different recipe."""
    now, before = config.flat(cfg.to_dict()), config.flat({k: v for k, v in saved.items() if k != "provenance"})
    # a key newer than the saved run was trained at its default, which is always "off"
    before = config.flat(config.Config().to_dict()) | before
    changed = [k for k in now if k not in RESUMABLE_CHANGES and now[k] != before.get(k) and not inert(k, now, before)]
    if changed and cfg.run.resume != "force":
        diffs = ", ".join(f"{k} {before.get(k)!r} -> {now[k]!r}" for k in changed[:3])
        raise UserError(f"run.out {folder} holds a run with another config ({diffs}); "
                        f"use a new run.out, or run.resume=force to continue it anyway")


def check_same_classes(cfg, saved: dict, classes: list[str], folder: Path) -> None:
    """data.root may move on resume (RESUMABLE_CHANGES), but never to other classes: compared by
    name, so a moved copy of the same data resumes and another dataset is one line."""
    diff = trained.class_difference(saved.get("classes"), int(saved["num_classes"]), classes)
    if diff is not None:
        raise UserError(f"data.root {cfg.data.root} has other classes than the run in {folder} was trained on "
                        f"({diff}); point data.root at that run's data, or use a new run.out")


def check_same_data(cfg, saved: dict, samples: dict, folder: Path) -> None:
    """The same samples as the run was trained on (bot/data/fingerprint.py): another image count
    changes the steps of an epoch, so last.pt's step would fall elsewhere in the schedule. A run
    recorded before the records were kept is not compared."""
    diff = fingerprint.difference(saved.get("data") or {}, samples)
    if diff is None:
        return
    same_count = all(samples[s]["samples"] == was["samples"] for s, was in saved["data"].items() if s in samples)
    if same_count and cfg.run.resume == "force":  # the schedule is the same: the user's call
        return
    force = ", or run.resume=force to go on with these samples" if same_count else ""
    raise UserError(f"data.root {cfg.data.root} holds other data than the run in {folder} was trained on ({diff}); "
                    f"point data.root at that run's data, or use a new run.out to start another run{force}")


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
