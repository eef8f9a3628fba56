"""A grid's results as the paper's table: table.md (and table.csv) with mean and std over
seeds, the deltas and whether they stand out from the noise (bot/grid/noise.py), beside
the paper's figures; curves.png and lr.png (bot/grid/curves.py) next to it. Grids with
columns are laid out by bot/grid/columns.py.
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Optional

from bot.grid import noise
from bot.grid.columns import render_columns
from bot.grid.curves import lr_curve, plot, val_curve
from bot.grid.format import DELTA_LEGEND, duration, heading, num
from bot.grid.runs import row_folders, row_summaries
from bot.grid.spec import Grid


def kept_weights_accuracy(summary: dict, key: str) -> Optional[float]:
    """A run's `top1` or `top5` of the weights its best.pt keeps: the weight average's when
    run.best_of is ema, else the raw weights'."""
    return summary.get(f"ema_{key}") if summary.get("best_of") == "ema" else summary.get(key)


def _mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def table_rows(grid: Grid) -> list[dict]:
    """One dict of numbers per row: mean and std over the seeds found, and the deltas.

    A delta compares a row with the row above it in the same section and column (Table 4
    restarts at each batch size), or with the section's first row under `delta: first`; it is
    empty when either has no result. Its standard error
    and whether it is within the seeds' noise: bot/grid/noise.py. With columns,
    there is one dict per row and column, row by row.
    """
    out, prevs = [], {}
    for row in grid.table_cells:
        if row.section is not None:
            prevs[row.column] = None
        prev = prevs.get(row.column)
        summaries = row_summaries(grid, row) if row.run else []
        folders = row_folders(grid, row) if row.run else []
        top1, top1_std = _mean_std([kept_weights_accuracy(s, "top1") for s in summaries])
        top5, top5_std = _mean_std([kept_weights_accuracy(s, "top5") for s in summaries])
        status = "done" if summaries else ("unfinished" if folders or (grid.out / row.slug / "last.pt").is_file()
                                           else "not run" if row.run else "reference")
        rec = {
            "row": row.title or row.name, "column": row.column or "", "slug": row.slug,
            "section": row.section or "", "status": status,
            "seeds": len(summaries),
            "top1": top1, "top1_std": top1_std, "top5": top5, "top5_std": top5_std,
            "best_top1": _mean_std([s.get("best_top1") for s in summaries])[0],
            "delta_top1": None, "delta_top1_se": None, "delta_within_noise": None,
            "paper_top1": row.paper.get("top1"), "paper_top5": row.paper.get("top5"),
            "paper_delta_top1": None, "paper_unverified": bool(row.paper.get("unverified")),
            "time_per_epoch_s": _mean_std([s.get("time_per_epoch_s") for s in summaries])[0],
            "img_per_s": _mean_std([s.get("train_img_per_s") for s in summaries])[0],
            "paper_min_per_epoch": row.paper.get("min_per_epoch"),
            "epochs": _mean_std([s.get("epochs") for s in summaries])[0],
        }
        if prev is not None:
            if rec["top1"] is not None and prev["top1"] is not None:
                rec["delta_top1"] = rec["top1"] - prev["top1"]
                rec["delta_top1_se"] = noise.delta_se(rec, prev)
                rec["delta_within_noise"] = noise.within_noise(rec["delta_top1"], rec["delta_top1_se"])
            if rec["paper_top1"] is not None and prev["paper_top1"] is not None:
                rec["paper_delta_top1"] = rec["paper_top1"] - prev["paper_top1"]
        out.append(rec)
        if grid.delta == "above" or prev is None:
            prevs[row.column] = rec
    return out


def render_markdown(grid: Grid, recs: list[dict]) -> str:
    if len(grid.columns) > 1:
        return render_columns(grid, recs)
    paper_time = any(r["paper_min_per_epoch"] is not None for r in recs)
    head = ["row", "top-1", "top-5", "Δ top-1", "paper top-1", "paper Δ", "time/epoch", "img/s"]
    if paper_time:
        head.append("paper time/epoch")
    lines = heading(grid, recs)
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    most = max((r["seeds"] for r in recs), default=0)
    for r in recs:
        if r["section"]:
            lines.append(f"| **{r['section']}** |" + " |" * (len(head) - 1))
        if r["status"] == "done":
            n = noise.seeds_suffix(r, most)
            top1, top5 = num(r["top1"], r["top1_std"]) + n, num(r["top5"], r["top5_std"])
        else:
            top1, top5 = f"({r['status']})", ""
        paper = num(r["paper_top1"]) + (" *" if r["paper_unverified"] and r["paper_top1"] is not None else "")
        cells = [r["row"], top1, top5, noise.delta_text(r), paper,
                 num(r["paper_delta_top1"], signed=True), duration(r["time_per_epoch_s"]),
                 f"{r['img_per_s']:.0f}" if r["img_per_s"] is not None else ""]
        if paper_time:
            cells.append(f"{r['paper_min_per_epoch']:.1f} min" if r["paper_min_per_epoch"] is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Top-1 / top-5: ImageNet-style val accuracy at the last epoch (%). " + noise.legend(recs) +
            f" Δ: {DELTA_LEGEND[grid.delta]}. img/s: training throughput, all processes.")
    lines += ["", note, f"Runs: {grid.out.as_posix()}/<row>. Grid: {grid.path.as_posix()}.", ""]
    return "\n".join(lines)


CSV_FIELDS = ["row", "column", "slug", "section", "status", "seeds", "top1", "top1_std", "top5", "top5_std",
              "best_top1", "delta_top1", "paper_top1", "paper_top5", "paper_delta_top1", "paper_unverified",
              "time_per_epoch_s", "img_per_s", "paper_min_per_epoch", "epochs", "delta_top1_se", "delta_within_noise"]


def render_csv(recs: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in recs:
        writer.writerow({k: ("" if r[k] is None else (round(r[k], 6) if isinstance(r[k], float) else r[k]))
                         for k in CSV_FIELDS})
    return buf.getvalue()


def write_table(grid: Grid, extra: list[str] = ()) -> list[Path]:
    """Write table.md, table.csv, curves.png and lr.png into the grid's folder; `extra`
    are the overrides given to every row (they can change a schedule: batch, epochs)."""
    grid.out.mkdir(parents=True, exist_ok=True)
    recs = table_rows(grid)
    written = []
    for name, text in (("table.md", render_markdown(grid, recs)), ("table.csv", render_csv(recs))):
        (grid.out / name).write_text(text)
        written.append(grid.out / name)
    if plot(grid, grid.out / "curves.png", val_curve, "val top-1 (%)", f"{grid.title}: validation top-1"):
        written.append(grid.out / "curves.png")
    if plot(grid, grid.out / "lr.png", lambda g, r: lr_curve(g, r, extra), "learning rate",
            f"{grid.title}: learning rate"):
        written.append(grid.out / "lr.png")
    return written
