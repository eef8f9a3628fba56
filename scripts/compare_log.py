"""A run's val top-1 per epoch beside a published log's, with the noise the log itself shows.

    python scripts/compare_log.py runs/cifar10-resnet20-v1 docs/cifar/gluoncv_cifar_resnet20_v1.csv \
        --out docs/img/cifar10-resnet20-v1.png

RUN is a run folder (its metrics.jsonl); LOG a CSV of `epoch,val_acc` (epochs from 0, accuracy
as a fraction, lines starting with # are comments), as docs/cifar/ holds gluon-cv's. For every
epoch both have it prints ours, theirs and the difference, then a line: how many epochs lie
within the band of the log's own epoch-to-epoch noise. The noise of one epoch's figure is
estimated from the log: the standard deviation of its values around their 9-epoch moving
mean, within each learning-rate phase (a run at a constant lr scatters about as much from
epoch to epoch as two seeds do at one epoch). With --out, both curves and the band as a PNG.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def our_curve(run: Path) -> dict[int, float]:
    """{epoch from 0: top-1 in %} of the run's evaluations at epoch ends (a resumed epoch: the last)."""
    curve = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if "top1" in record:
            curve[record["epoch"]] = record["top1"]
    return curve


def log_curve(path: Path) -> dict[int, float]:
    rows = [line.split(",") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {int(e): 100 * float(v) for e, v in rows[1:]}


def noise(curve: dict[int, float], phases: list[int]) -> float:
    """The log's epoch-to-epoch scatter: std of each value around the mean of the 9 epochs around it,
    inside the lr phase it belongs to (phases: the epochs where the lr changes)."""
    bounds = [0, *phases, max(curve) + 1]
    residuals = []
    for lo, hi in zip(bounds, bounds[1:]):
        epochs = [e for e in sorted(curve) if lo <= e < hi]
        for i, e in enumerate(epochs[4:-4], start=4):
            window = [curve[x] for x in epochs[i - 4:i + 5]]
            residuals.append(curve[e] - statistics.mean(window))
    return statistics.pstdev(residuals) if len(residuals) > 1 else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("log", type=Path)
    p.add_argument("--phases", default="100,150", help="epochs where the lr changes (the log's: gluon-cv's 100,150)")
    p.add_argument("--label", default="gluon-cv's log")
    p.add_argument("--out", type=Path, help="a PNG of both curves")
    a = p.parse_args(argv)
    ours, theirs = our_curve(a.run), log_curve(a.log)
    band = 2 * noise(theirs, [int(x) for x in a.phases.split(",") if x])
    both = sorted(set(ours) & set(theirs))
    if not both:
        print(f"error: {a.run} and {a.log} have no epoch in common", file=sys.stderr)
        return 2
    print(f"| epoch | ours top-1 | {a.label} | ours - theirs |\n|---|---|---|---|")
    for e in both:
        print(f"| {e + 1} | {ours[e]:.2f} | {theirs[e]:.2f} | {ours[e] - theirs[e]:+.2f} |")
    inside = sum(abs(ours[e] - theirs[e]) <= band for e in both)
    diffs = [ours[e] - theirs[e] for e in both]
    print(f"\n{len(both)} epochs in common; mean difference {statistics.mean(diffs):+.2f} points; "
          f"{inside} of {len(both)} within +-{band:.2f} (2 x the log's own epoch-to-epoch noise, "
          f"{band / 2:.2f} points)")
    if a.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5))
        epochs = sorted(theirs)
        ax.fill_between([e + 1 for e in epochs], [theirs[e] - band for e in epochs], [theirs[e] + band for e in epochs],
                        color="tab:gray", alpha=0.25, label=f"{a.label} +- 2 x its noise")
        ax.plot([e + 1 for e in epochs], [theirs[e] for e in epochs], color="tab:gray", lw=1, label=a.label)
        ax.plot([e + 1 for e in sorted(ours)], [ours[e] for e in sorted(ours)], color="tab:blue", lw=1.5,
                label=f"ours ({a.run.name})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("val top-1 (%)")
        ax.set_ylim(max(0, min(min(ours.values()), min(theirs.values())) - 5), 100)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(a.out, dpi=110)
        print(f"plot: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
