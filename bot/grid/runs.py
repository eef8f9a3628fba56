"""The runs of a grid on disk: each row's folder(s), the overrides that make its run, whether it
is done, and the summaries it left.

Each row's run is `python train.py RECIPE OVERRIDES... run.out=<out>/<slug>` (and
`/seed<k>` with `run.seed=k` when several seeds are asked for); with columns, in
<out>/<column slug>/<row slug>. A run is finished when its summary.json exists (the trainer
writes it last); a run with last.pt but no summary resumes by running the same command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from bot import config as config_mod
from bot.errors import UserError
from bot.grid.spec import MANAGED_KEYS, Grid, Row


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
