"""Ablation grids: a YAML list of rows, each a recipe plus overrides, turned into runs
and then into the paper's table (PAPER.md section 5); its curves: bot/ablation_curves.py.

A grid is data (recipes/ablations/table4.yaml):

    title: "Table 4: ..."             # heading of table.md (default: the file's name)
    caption: "..."                    # a line under the heading
    delta: above                      # Δ against the row above (cumulative rows, the default)
                                      # or `first`: the section's first row (rows that each
                                      # add one thing to it, as in recipes/ablations/extras.yaml)
    out: runs/table4                  # the grid's folder (default: runs/<file name>)
    recipe: ../baseline.yaml          # rows' default recipe, relative to the grid's folder
    overrides: [data.workers=8]       # applied to every row, before the row's own
    rows:
      - name: b=256 + warmup          # the run's folder is <out>/<slug of name>
        section: b=256                # optional: starts a block; deltas restart there
        recipe: ../baseline.yaml      # optional when the grid has one
        overrides: [schedule.warmup_epochs=5]
        paper: {top1: 76.03, top5: null, min_per_epoch: null}

Each row's run is `python train.py RECIPE OVERRIDES... run.out=<out>/<slug>` (and
`/seed<k>` with `run.seed=k` when several seeds are asked for). A run is finished when
its summary.json exists (the trainer writes it last); a run with last.pt but no summary
resumes by running the same command.

Columns (Tables 2 and 6: rows are refinements, columns are networks) make each row one
run per column, in <out>/<column slug>/<row slug>: bot/ablation_columns.py. A paper figure
with `unverified: true` is marked * in the table, and its caption says so.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from bot import ablation_noise as noise
from bot import config as config_mod
from bot.errors import UserError
from bot.ema import reported

GRID_KEYS = {"title", "caption", "delta", "out", "recipe", "overrides", "rows", "columns"}
DELTAS = ("above", "first")  # what a row's Δ compares it with
ROW_KEYS = {"name", "section", "recipe", "overrides", "paper", "cells", "run"}
PAPER_KEYS = {"top1", "top5", "min_per_epoch", "unverified"}
# keys that ablate.py sets for each run; the user moves a grid with --out, not run.out
MANAGED_KEYS = {"run.out"}


@dataclass
class Row:
    name: str
    slug: str
    recipe: str  # path as the user's shell sees it (relative to the working directory)
    overrides: list[str]
    section: Optional[str] = None
    paper: dict = field(default_factory=dict)
    title: str = ""  # the row's name in the table (`name` adds the column: it names the run)
    column: Optional[str] = None  # None in a grid without columns
    run: bool = True  # False: published figures only (a `run: false` row)
    common: int = 0  # how many of `overrides` are the grid's own, for every row (the rest: row, column, cell)


@dataclass
class Grid:
    path: Path
    title: str
    caption: str
    out: Path
    rows: list[Row]  # the runs, one per row and column, a column's runs together
    columns: list[Optional[str]] = field(default_factory=lambda: [None])
    cells: list[Row] = field(default_factory=list)  # the table: every row's cells, `run: false` ones too
    delta: str = "above"  # Δ against the row above, or the section's first row (DELTAS)

    @property
    def table_cells(self) -> list[Row]:
        """The table's cells, row by row, each row's in column order."""
        return self.cells or self.rows

    @property
    def group(self) -> str:
        """The wandb group of the grid's runs."""
        return self.out.name


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _shell_path(path: Path) -> str:
    """`path` relative to the working directory when it is below it, else absolute."""
    absolute = path.resolve() if not path.is_absolute() else path
    rel = os.path.relpath(absolute)
    return absolute.as_posix() if rel.startswith("..") else Path(rel).as_posix()


def _string_list(where: str, value) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise UserError(f"{where}: overrides must be a list of key=value strings, got {value!r}")
    return list(value)


def check_paper(where: str, paper) -> dict:
    """A row's or cell's paper figures: numbers (or null), and `unverified: true|false`."""
    paper = paper or {}
    if not isinstance(paper, dict) or set(paper) - PAPER_KEYS or not all(
            (isinstance(v, bool) if k == "unverified" else v is None or isinstance(v, (int, float))
             and not isinstance(v, bool)) for k, v in paper.items()):
        raise UserError(f"{where}: paper must map {sorted(PAPER_KEYS - {'unverified'})} to numbers "
                        f"(and unverified to true or false), got {paper!r}")
    return dict(paper)


def read_grid(path: str | Path, out: str | Path | None = None) -> Grid:
    """Read and check a grid file; `out` replaces the grid's folder."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"grid {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"grid {path} must be a mapping with a rows: list")
    for key in raw:
        if key not in GRID_KEYS:
            raise UserError(f"grid {path}: unknown key {key!r} (keys: {', '.join(sorted(GRID_KEYS))})")
    delta = raw.get("delta", "above")
    if delta not in DELTAS:
        raise UserError(f"grid {path}: delta must be {' or '.join(DELTAS)}, got {delta!r}")
    rows_raw = raw.get("rows")
    if not isinstance(rows_raw, list) or not rows_raw:
        raise UserError(f"grid {path}: rows must be a non-empty list")
    from bot.ablation_columns import read_columns, row_cells

    columns = read_columns(path, raw)
    common = _string_list(f"grid {path}", raw.get("overrides"))
    cells, seen = [], {}
    for i, r in enumerate(rows_raw):
        where = f"grid {path} row {i + 1}"
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or not r["name"].strip():
            raise UserError(f"{where}: each row needs a name")
        where = f"grid {path} row {r['name']!r}"
        for key in r:
            if key not in ROW_KEYS:
                raise UserError(f"{where}: unknown key {key!r} (keys: {', '.join(sorted(ROW_KEYS))})")
        for cell, recipe in row_cells(where, raw, r, columns, common):
            if cell.run and not isinstance(recipe, str):
                raise UserError(f"{where}: needs a recipe (in the row or at the grid's top level)")
            if not cell.slug or cell.slug in seen:
                raise UserError(f"{where}: its folder name {cell.slug!r} is empty or taken by row "
                                f"{seen.get(cell.slug)!r}")
            seen[cell.slug] = cell.name
            for item in cell.overrides:
                if item.split("=", 1)[0].strip() in MANAGED_KEYS:
                    raise UserError(f"{where}: run.out is set by the grid (its out: key), not by a row")
            cell.recipe = _shell_path(path.parent / recipe) if isinstance(recipe, str) else ""
            cells.append(cell)
    order = {c.name: i for i, c in enumerate(columns)}  # a column's runs together, in row order
    runs = sorted((c for c in cells if c.run), key=lambda c: order[c.column])
    folder = Path(out) if out is not None else Path(raw.get("out") or Path("runs") / path.stem)
    return Grid(path=path, title=str(raw.get("title") or path.stem), caption=str(raw.get("caption") or ""),
                out=folder, rows=runs, columns=[c.name for c in columns], cells=cells, delta=delta)


# ---------------------------------------------------------------- runs


def run_dirs(grid: Grid, row: Row, seeds: int) -> list[tuple[Path, Optional[int]]]:
    """(run folder, seed) of each run of a row: one folder, or seed0..seed<n-1>."""
    base = grid.out / row.slug
    if seeds <= 1:
        return [(base, None)]
    return [(base / f"seed{k}", k) for k in range(seeds)]


def run_overrides(grid: Grid, row: Row, out: Path, seed: Optional[int], extra: list[str]) -> list[str]:
    """The overrides of one run, in order: grid and row, naming, the user's, then the folder."""
    for item in extra:
        if item.split("=", 1)[0].strip() in MANAGED_KEYS:
            raise UserError("run.out is set per row by ablate.py: move the grid with --out DIR")
    name = row.name if seed is None else f"{row.name} seed{seed}"
    # json.dumps quotes the name as YAML, so 'b=256: x' stays a string
    naming = [f"run.name={json.dumps(name)}", f"run.group={json.dumps(grid.group)}"]
    tail = [f"run.out={out.as_posix()}"] + ([f"run.seed={seed}"] if seed is not None else [])
    return row.overrides + naming + list(extra) + tail


def row_config(grid: Grid, row: Row, extra: list[str] = (), seeds: int = 1):
    """The checked Config of a row's first run (raises UserError on a bad row)."""
    out, seed = run_dirs(grid, row, seeds)[0]
    try:
        return config_mod.load(row.recipe, run_overrides(grid, row, out, seed, list(extra)))
    except UserError as e:
        raise UserError(f"grid {grid.path} row {row.name!r}: {e}") from None


def run_status(folder: Path) -> str:
    """done (summary.json), resume (last.pt but no summary) or start."""
    if (folder / "summary.json").is_file():
        return "done"
    if (folder / "last.pt").is_file():
        return "resume"
    return "start"


# ---------------------------------------------------------------- results


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def row_folders(grid: Grid, row: Row) -> list[Path]:
    """Every run folder of a row on disk: the row's folder and its seed<k> folders."""
    base = grid.out / row.slug
    seeds = sorted((p for p in base.glob("seed*") if p.is_dir() and p.name[4:].isdigit()),
                   key=lambda p: int(p.name[4:]))
    return ([base] if (base / "summary.json").is_file() or (base / "metrics.jsonl").is_file() else []) + seeds


def row_summaries(grid: Grid, row: Row) -> list[dict]:
    found = (_read_json(f / "summary.json") for f in row_folders(grid, row))
    return [s for s in found if s]


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
    and whether it is within the seeds' noise: bot/ablation_noise.py. With columns,
    there is one dict per row and column, row by row.
    """
    out, prevs = [], {}
    for row in grid.table_cells:
        if row.section is not None:
            prevs[row.column] = None
        prev = prevs.get(row.column)
        summaries = row_summaries(grid, row) if row.run else []
        folders = row_folders(grid, row) if row.run else []
        top1, top1_std = _mean_std([reported(s, "top1") for s in summaries])  # bot.ema: run.best_of
        top5, top5_std = _mean_std([reported(s, "top5") for s in summaries])
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


# ---------------------------------------------------------------- rendering


def _num(v: Optional[float], std: Optional[float] = None, signed: bool = False) -> str:
    if v is None:
        return ""
    text = f"{v:+.2f}" if signed else f"{v:.2f}"
    return text + (f" ± {std:.2f}" if std is not None else "")


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


DELTA_LEGEND = {"above": "against the row above in its section", "first": "against the first row of its section"}
UNVERIFIED = "Paper figures marked * are unverified; the grid file gives each figure's provenance."


def heading(grid: Grid, recs: list[dict]) -> list[str]:
    """Title and caption; the caption says so when a paper figure is unverified."""
    lines = [f"# {grid.title}", ""]
    if grid.caption:
        lines += [grid.caption, ""]
    if any(r["paper_unverified"] for r in recs):
        lines += [UNVERIFIED, ""]
    return lines


def render_markdown(grid: Grid, recs: list[dict]) -> str:
    if len(grid.columns) > 1:
        from bot.ablation_columns import render_columns
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
            top1, top5 = _num(r["top1"], r["top1_std"]) + n, _num(r["top5"], r["top5_std"])
        else:
            top1, top5 = f"({r['status']})", ""
        paper = _num(r["paper_top1"]) + (" *" if r["paper_unverified"] and r["paper_top1"] is not None else "")
        cells = [r["row"], top1, top5, noise.delta_text(r), paper,
                 _num(r["paper_delta_top1"], signed=True), _duration(r["time_per_epoch_s"]),
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
    from bot.ablation_curves import lr_curve, plot, val_curve

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
