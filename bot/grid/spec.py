"""An ablation grid, as data: a YAML list of rows, each a recipe plus overrides, optionally
in columns (one network per column, Tables 2 and 6). This module reads and checks a grid file
and knows nothing of runs on disk (bot/grid/runs.py) or of the table (bot/grid/table.py).

A grid (recipes/ablations/table4.yaml):

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

A paper figure with `unverified: true` is marked * in the table, and its caption says so.
Columns (Tables 2 and 6: rows are refinements, columns are networks) make each row one
run per column:

    columns:
      - name: ResNet-50-D             # optional recipe: and overrides: for the whole column
      - name: MobileNet
        overrides: [model.arch=mobilenet_v1, model.zero_gamma=false]
    rows:
      - name: efficient
        cells:                        # optional, per column: recipe, overrides, paper
          ResNet-50-D: {recipe: ../resnet50-d.yaml, paper: {top1: 77.16, top5: 93.52}}
          MobileNet: {recipe: ../mobilenet-v1.yaml, paper: {top1: 71.90, unverified: true}}
      - name: reference               # run: false: published figures only, nothing is run
        run: false
        cells: {MobileNet: {paper: {top1: 70.6}}}

A grid without `columns:` has one unnamed column, and its rows are its runs as before.
With columns, a row's run in a column takes, the most specific first:
  recipe     the cell's, the column's, the row's, the grid's
  overrides  the grid's, then the row's, the column's, the cell's (the later wins): a
             column says what its network changes, over any row
  paper      the cell's (a row's own `paper:` belongs to grids without columns)
Its run is named "<column>: <row>" and lives in <out>/<column slug>/<row slug>.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from bot.errors import UserError

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


def shell_path(path: Path) -> str:
    """`path` relative to the working directory when it is below it, else absolute."""
    absolute = path.resolve() if not path.is_absolute() else Path(os.path.normpath(path))  # no `dir/../`
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
            cell.recipe = shell_path(path.parent / recipe) if isinstance(recipe, str) else ""
            cells.append(cell)
    order = {c.name: i for i, c in enumerate(columns)}  # a column's runs together, in row order
    runs = sorted((c for c in cells if c.run), key=lambda c: order[c.column])
    folder = Path(out) if out is not None else Path(raw.get("out") or Path("runs") / path.stem)
    return Grid(path=path, title=str(raw.get("title") or path.stem), caption=str(raw.get("caption") or ""),
                out=folder, rows=runs, columns=[c.name for c in columns], cells=cells, delta=delta)


# ---------------------------------------------------------------- columns

COLUMN_KEYS = {"name", "recipe", "overrides"}
CELL_KEYS = {"recipe", "overrides", "paper"}


@dataclass
class Column:
    name: Optional[str]  # None: the one column of a grid without columns
    recipe: Optional[str] = None
    overrides: list[str] = field(default_factory=list)


def read_columns(path, raw: dict) -> list[Column]:
    if raw.get("columns") is None:
        return [Column(None)]
    where = f"grid {path} columns"
    value = raw["columns"]
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: must be a non-empty list of {{name: ..., recipe: ..., overrides: [...]}}")
    columns, seen = [], set()
    for c in value:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not slugify(c["name"]):
            raise UserError(f"{where}: each column needs a name, got {c!r}")
        if set(c) - COLUMN_KEYS:
            raise UserError(f"{where}: column {c['name']!r} has unknown key {sorted(set(c) - COLUMN_KEYS)[0]!r} "
                            f"(keys: {', '.join(sorted(COLUMN_KEYS))})")
        if slugify(c["name"]) in seen:
            raise UserError(f"{where}: two columns are named {c['name']!r} (or the same but for punctuation)")
        seen.add(slugify(c["name"]))
        columns.append(Column(c["name"], c.get("recipe"), _string_list(f"{where} {c['name']!r}", c.get("overrides"))))
    return columns


def row_cells(where: str, raw: dict, r: dict, columns: list[Column],
              common: list[str]) -> list[tuple[Row, Optional[str]]]:
    """(run, recipe path relative to the grid's folder) of row `r` in each column; `common`
    are the grid's overrides."""
    run = r.get("run", True)
    if not isinstance(run, bool):
        raise UserError(f"{where}: run must be true or false, got {run!r}")
    named = columns[0].name is not None
    cells = r.get("cells") or {}
    if not named and "cells" in r:
        raise UserError(f"{where}: cells need columns: at the grid's top level")
    if named and "paper" in r:
        raise UserError(f"{where}: in a grid with columns, paper figures go in the row's cells")
    if not isinstance(cells, dict) or set(cells) - {c.name for c in columns}:
        raise UserError(f"{where}: cells must map column names ({', '.join(c.name for c in columns)}) "
                        f"to {{recipe, overrides, paper}}, got {cells!r}")
    out = []
    for column in columns:
        cell = cells.get(column.name) or {}
        at = where if column.name is None else f"{where} column {column.name!r}"
        if not isinstance(cell, dict) or set(cell) - CELL_KEYS:
            raise UserError(f"{at}: a cell has keys {', '.join(sorted(CELL_KEYS))}, got {cell!r}")
        recipe = cell.get("recipe") or column.recipe or r.get("recipe") or raw.get("recipe")
        overrides = common + _string_list(where, r.get("overrides")) + column.overrides + _string_list(
            at, cell.get("overrides"))
        paper = check_paper(at, cell.get("paper") if named else r.get("paper"))
        title = r["name"]
        name, slug = (title, slugify(title)) if not named else (f"{column.name}: {title}",
                                                               f"{slugify(column.name)}/{slugify(title)}")
        out.append((Row(name=name, slug=slug, recipe="", overrides=overrides, section=r.get("section"), paper=paper,
                        title=title, column=column.name, run=run, common=len(common)), recipe))
    return out
