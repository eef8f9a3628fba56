"""What a run writes as it goes: metrics.jsonl, the console and (optionally) wandb.

Only the main process writes; the others get a RunLog that does nothing. On a terminal the
training steps show in tqdm's bar; off one (a pipe, a SLURM log) the bar is off and each
logged step is a readable line instead (`print_step`), while metrics.jsonl keeps the JSON.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from bot.artifacts import checkpoint


def _step(line: str) -> float:
    """A metrics line's step; infinity for a line cut short by a kill, so that it is dropped."""
    try:
        return json.loads(line)["step"] if line.endswith("\n") else float("inf")
    except (ValueError, KeyError, TypeError):
        return float("inf")


def step_line(record: dict, epochs: int) -> str:
    """A training record of metrics.jsonl as one line, in the form of the evaluation lines."""
    return (f"epoch {record['epoch'] + 1}/{epochs} step {record['step']}: loss {record['loss']:.4f} "
            f"lr {record['lr']:.4g} {record['img_per_s']:.0f} img/s")


WANDB_ID = "wandb-id"  # in the run folder


def wandb_id(folder: Path) -> str:
    """The run's wandb id, kept in the run folder: a resume continues the same wandb run, and a
    new run in a reused path (the folder deleted, another machine) starts a new one: one made
    from the path would continue the old run, and wandb drops every step at or below its last."""
    path = folder / WANDB_ID
    if path.exists():
        return path.read_text().strip()
    run_id = secrets.token_hex(8)
    checkpoint.atomic_write_text(path, run_id + "\n")
    return run_id


class RunLog:
    def __init__(self, cfg, folder: Path, enabled: bool, resume_step: int = 0):
        self.enabled, self.path, self.wandb = enabled, folder / "metrics.jsonl", None
        self.epochs = cfg.schedule.epochs
        if enabled:
            self._forget_after(resume_step)
        if enabled and cfg.run.wandb != "off":  # wandb itself, not accelerate's tracker (docs/libraries.md)
            import wandb

            self.wandb = wandb.init(project="bot", name=cfg.run.name, group=cfg.run.group, id=wandb_id(folder),
                                    resume="allow", dir=str(folder), mode=cfg.run.wandb, config=cfg.to_dict())

    def _forget_after(self, step: int) -> None:
        """Drop the lines of steps after `step`, the checkpoint a run resumes from: they are about
        to be trained again, and each step should appear once. Written aside, then renamed."""
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        keep = [line for line in lines if _step(line) <= step]
        if len(keep) < len(lines):
            checkpoint.atomic_write_text(self.path, "".join(keep))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            if e.errno in checkpoint.UNWRITABLE:
                raise checkpoint.unwritable(e, self.path.parent) from e
            raise
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record.get("step"))

    def print(self, *args) -> None:
        if self.enabled:
            print(*args, flush=True)

    def print_step(self, record: dict) -> None:
        self.print(step_line(record, self.epochs))

    def summarize(self, summary: dict) -> None:
        """summary.json's figures as the wandb run's summary (its table columns), beside the last logged values."""
        if self.wandb is not None:
            self.wandb.summary.update(summary)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
