"""Runs' val top-1 and training loss per epoch beside a published log's, with the noise the log shows.

    python scripts/compare_log.py runs/cifar10-resnet20-v1 docs/cifar/gluoncv_cifar_resnet20_v1.csv \
        [--also runs/other-seed --also runs/reference.csv] [--epochs 8] --out docs/img/cifar10-resnet20-v1.png

RUN is a run folder (its metrics.jsonl); LOG a CSV with a header `epoch,val_acc[,train_acc,
train_loss]` (epochs from 0, accuracy as a fraction, lines starting with # are comments), as
docs/cifar/ holds gluon-cv's. --also adds curves of the same recipe: other run folders (another
seed) or CSVs of the log's form (scripts/cifar_reference.py writes one).

For every epoch the log and a curve have, it prints each curve's val top-1 and the log's, then
the same for the training loss (a run's: the mean of the epoch's logged steps, all of them under
run.log_every=1), then per curve the mean difference from the log with its standard error over
the epochs, and how many epochs lie within the band of the log's own epoch-to-epoch noise: the
standard deviation of its values around their 9-epoch moving mean, within each learning-rate
phase (a run at a constant lr scatters about as much from epoch to epoch as two seeds do at one
epoch). With --out, the curves and the band as a PNG (val top-1 above, training loss below).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


class Curve:
    """One training's per-epoch figures: `top1` {epoch: %}, `loss` {epoch: mean training loss}."""

    def __init__(self, name: str, top1: dict[int, float], loss: dict[int, float]):
        self.name, self.top1, self.loss = name, top1, loss


def run_curve(run: Path) -> Curve:
    """A run folder's evaluations at epoch ends (a resumed epoch: the last) and the mean of each
    epoch's logged training losses."""
    top1, losses = {}, {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if "top1" in record:
            top1[record["epoch"]] = record["top1"]
        elif "loss" in record:
            losses.setdefault(record["epoch"], {})[record["step"]] = record["loss"]  # a step logged twice: once
    return Curve(run.name, top1, {e: statistics.fmean(v.values()) for e, v in losses.items()})


def log_columns(path: Path) -> dict[str, dict[int, float]]:
    """{column: {epoch: value}} of a CSV whose header names `epoch` and its other columns."""
    rows = [line.split(",") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {name: {int(r[0]): float(r[i]) for r in rows[1:]} for i, name in enumerate(rows[0]) if i}


def csv_curve(path: Path) -> Curve:
    columns = log_columns(path)
    return Curve(path.stem, {e: 100 * v for e, v in columns["val_acc"].items()}, columns.get("train_loss", {}))


def curve(path: Path) -> Curve:
    return run_curve(path) if path.is_dir() else csv_curve(path)


def noise(values: dict[int, float], phases: list[int]) -> float:
    """The log's epoch-to-epoch scatter: std of each value around the mean of the 9 epochs around it,
    inside the lr phase it belongs to (phases: the epochs where the lr changes)."""
    bounds = [0, *phases, max(values) + 1]
    residuals = []
    for lo, hi in zip(bounds, bounds[1:]):
        epochs = [e for e in sorted(values) if lo <= e < hi]
        for i, e in enumerate(epochs[4:-4], start=4):
            window = [values[x] for x in epochs[i - 4:i + 5]]
            residuals.append(values[e] - statistics.mean(window))
    return statistics.pstdev(residuals) if len(residuals) > 1 else 0.0


def mean_se(diffs: list[float]) -> str:
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return f"{statistics.fmean(diffs):+.2f} +- {se:.2f}" if abs(statistics.fmean(diffs)) >= 0.1 else \
        f"{statistics.fmean(diffs):+.3f} +- {se:.3f}"


def table(curves: list[Curve], log: Curve, key: str, label: str, fmt: str) -> list[int]:
    """Print one markdown table of `key` (top1 or loss) per epoch; return the epochs printed."""
    epochs = sorted({e for c in curves for e in getattr(c, key)} & set(getattr(log, key)))
    if not epochs:
        return []
    print(f"| epoch | {' | '.join(c.name for c in curves)} | {label} |\n|---{'|---' * (len(curves) + 1)}|")
    for e in epochs:
        ours = [format(getattr(c, key)[e], fmt) if e in getattr(c, key) else "" for c in curves]
        print(f"| {e + 1} | {' | '.join(ours)} | {format(getattr(log, key)[e], fmt)} |")
    print()
    return epochs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("log", type=Path)
    p.add_argument("--also", type=Path, action="append", default=[],
                   help="another curve of the same recipe: a run folder or a CSV of the log's form")
    p.add_argument("--phases", default="100,150", help="epochs where the lr changes (the log's: gluon-cv's 100,150)")
    p.add_argument("--epochs", type=int, help="compare the first N epochs only (the part of a run that trained "
                   "as the log's recipe, e.g. a shorter schedule's epochs before its first lr step)")
    p.add_argument("--label", default="gluon-cv's log")
    p.add_argument("--out", type=Path, help="a PNG of the curves")
    a = p.parse_args(argv)
    curves = [curve(x) for x in [a.run, *a.also]]
    if a.epochs:
        for c in curves:
            c.top1 = {e: v for e, v in c.top1.items() if e < a.epochs}
            c.loss = {e: v for e, v in c.loss.items() if e < a.epochs}
    log = csv_curve(a.log)
    band = 2 * noise(log.top1, [int(x) for x in a.phases.split(",") if x])
    both = table(curves, log, "top1", f"{a.label} top-1", ".2f")
    if not both:
        print(f"error: {a.run} and {a.log} have no epoch in common", file=sys.stderr)
        return 2
    table(curves, log, "loss", f"{a.label} loss", ".4f")
    for c in curves:
        common = sorted(set(c.top1) & set(log.top1))
        diffs = [c.top1[e] - log.top1[e] for e in common]
        inside = sum(abs(d) <= band for d in diffs)
        line = (f"{c.name}: {len(common)} epochs in common; top-1 minus the log's {mean_se(diffs)} points "
                f"(mean +- its standard error); {inside} of {len(common)} within +-{band:.2f} (2 x the log's "
                f"own epoch-to-epoch noise, {band / 2:.2f} points)")
        common = sorted(set(c.loss) & set(log.loss))
        if common:
            line += f"; training loss minus the log's {mean_se([c.loss[e] - log.loss[e] for e in common])}"
        print(line)
    if len(curves) > 1:
        print(spread_line(curves, log))
    if a.out:
        plot(curves, log, band, a.label, a.out)
    return 0


def spread_line(curves: list[Curve], log: Curve) -> str:
    """The curves' own seed noise: at each epoch all of them and the log have, their mean and std;
    how far the log is from that mean, and at how many epochs within 2 of those stds."""
    epochs = sorted(set.intersection(*(set(c.top1) for c in curves)) & set(log.top1))
    means = {e: statistics.fmean(c.top1[e] for c in curves) for e in epochs}
    stds = {e: statistics.stdev(c.top1[e] for c in curves) for e in epochs}
    inside = sum(abs(log.top1[e] - means[e]) <= 2 * stds[e] for e in epochs)
    return (f"the {len(curves)} curves at the {len(epochs)} epochs they all have: top-1 std between them "
            f"{statistics.fmean(stds.values()):.2f} points on average (their seed noise); their mean minus the log's "
            f"{mean_se([means[e] - log.top1[e] for e in epochs])} points; the log within 2 of their stds of their "
            f"mean at {inside} of {len(epochs)} epochs")


def plot(curves: list[Curve], log: Curve, band: float, label: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = max(max(c.top1) for c in curves) + 1  # the epochs our curves reach, and one more
    epochs = [e for e in sorted(log.top1) if e <= last]
    panels = 2 if log.loss and any(c.loss for c in curves) else 1
    fig, axes = plt.subplots(panels, 1, figsize=(8, 3.6 * panels), sharex=True, squeeze=False)
    ax = axes[0][0]
    ax.fill_between([e + 1 for e in epochs], [log.top1[e] - band for e in epochs],
                    [log.top1[e] + band for e in epochs], color="tab:gray", alpha=0.25, label=f"{label} +- 2 x its noise")
    ax.plot([e + 1 for e in epochs], [log.top1[e] for e in epochs], color="black", lw=1.5, marker="o", label=label)
    for c in curves:
        ax.plot([e + 1 for e in sorted(c.top1)], [c.top1[e] for e in sorted(c.top1)], lw=1.2, marker=".", label=c.name)
    ax.set_ylabel("val top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if panels == 2:
        ax = axes[1][0]
        ax.plot([e + 1 for e in epochs if e in log.loss], [log.loss[e] for e in epochs if e in log.loss],
                color="black", lw=1.5, marker="o", label=label)
        for c in curves:
            ax.plot([e + 1 for e in sorted(c.loss)], [c.loss[e] for e in sorted(c.loss)], lw=1.2, marker=".",
                    label=c.name)
        ax.set_ylabel("training loss (epoch mean)")
        ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


if __name__ == "__main__":
    sys.exit(main())
