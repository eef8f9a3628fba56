"""The curves of an ablation grid: val top-1 per epoch from each row's metrics.jsonl (mean
over its seeds) and each row's lr schedule, one line per row, one panel per column
(curves.png and lr.png beside table.md; bot/grid/table.py writes them)."""

from __future__ import annotations

import json
import statistics
import textwrap
from pathlib import Path

import yaml

from bot.grid.runs import row_config, row_folders
from bot.grid.spec import Grid, Row


def _metric_lines(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            obj = json.loads(text)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(obj, dict):
            lines.append(obj)
    return lines


def val_curve(grid: Grid, row: Row) -> tuple[list[float], list[float]]:
    """(epochs trained, mean val top-1 over the row's seeds) from metrics.jsonl's eval lines:
    the weight average's under run.best_of=ema, as in the table (bot.grid.table.kept_weights_accuracy)."""
    by_epoch: dict[float, list[float]] = {}
    for folder in row_folders(grid, row):
        key = "ema_top1" if _best_of(folder) == "ema" else "top1"
        last: dict[float, float] = {}  # a resumed run may repeat an epoch: keep the last
        for m in _metric_lines(folder):
            if key in m and "epoch" in m:
                last[float(m["epoch"]) + 1] = float(m[key])  # the trainer counts epochs from 0
        for e, v in last.items():
            by_epoch.setdefault(e, []).append(v)
    epochs = sorted(by_epoch)
    return epochs, [statistics.fmean(by_epoch[e]) for e in epochs]


def _best_of(folder: Path) -> str:
    """run.best_of of the run in `folder`, from the config.yaml it wrote first ("raw" without one)."""
    try:
        return (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("run", {}).get("best_of", "raw")
    except (OSError, yaml.YAMLError):
        return "raw"


LR_STEPS_PER_EPOCH = 100  # resolution of lr.png; a schedule in epochs does not depend on it


def lr_curve(grid: Grid, row: Row, extra: list[str] = ()) -> tuple[list[float], list[float]]:
    """(epoch, lr) of the row's schedule, from its config through bot.train.schedule (the
    trainer's own function), so lr.png shows every row, run or not."""
    from bot.train.schedule import build_plan, build_schedule

    cfg = row_config(grid, row, extra)
    lr_at, plan = build_schedule(cfg, LR_STEPS_PER_EPOCH), build_plan(cfg, LR_STEPS_PER_EPOCH)
    steps = range(plan.total_steps)  # fewer once batch growth makes steps larger
    return [plan.epoch_of(s) for s in steps], [lr_at(s) for s in steps]


def plot(grid: Grid, path: Path, curve, ylabel: str, title: str) -> bool:
    """Draw one line per row with data, one panel per column; False (and no file) when no
    row has any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(row, *curve(grid, row)) for row in grid.rows]
    series = [s for s in series if s[1]]
    if not series:
        return False
    columns = [c for c in grid.columns if any(row.column == c for row, _, _ in series)]
    fig, axes = plt.subplots(1, len(columns), figsize=(8 * len(columns), 5), squeeze=False)
    for ax, column in zip(axes[0], columns):
        mine = [s for s in series if s[0].column == column]
        for i, (row, xs, ys) in enumerate(mine):  # line styles keep identical curves visible
            ax.plot(xs, ys, label=row.title or row.name, marker="." if len(xs) < 30 else None, linewidth=1.2,
                    linestyle=["-", "--", "-.", ":"][i % 4])
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(textwrap.fill(title if column is None else f"{title}\n{column}", 64, replace_whitespace=False))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
