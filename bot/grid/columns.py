"""Columns of an ablation grid: one run per row and column, and the table laid out as the
paper's Tables 2 and 6 (rows are refinements, columns are networks, each cell ours beside
the paper's).

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

from dataclasses import dataclass, field
from typing import Optional

from bot import ablation_noise as noise
from bot.ablation import DELTA_LEGEND, Grid, Row, _num, _string_list, check_paper, heading, slugify
from bot.errors import UserError

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


# ---------------------------------------------------------------- the table


def _pair(top1, top5, delta: str = "", mark: str = "") -> str:
    """'top-1 / top-5 (+delta)' with whatever is known; empty when top-1 is not."""
    if top1 is None:
        return ""
    text = _num(top1) + (f" / {_num(top5)}" if top5 is not None else "")
    return text + (f" ({delta})" if delta else "") + mark


def render_columns(grid: Grid, recs: list[dict]) -> str:
    """One line per row, two cells per column: ours (mean over seeds) and the paper's."""
    head = ["row"] + [f"{c} {who}" for c in grid.columns for who in ("ours", "paper")]
    lines = heading(grid, recs) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_row: dict[str, dict] = {}
    for r in recs:
        by_row.setdefault(r["row"], {})[r["column"]] = r
    for title, cells in by_row.items():
        section = next((r["section"] for r in cells.values() if r["section"]), "")
        if section:
            lines.append(f"| **{section}** |" + " |" * (len(head) - 1))
        out = [title]
        for column in grid.columns:
            r = cells[column]
            ours = (_pair(r["top1"], r["top5"], noise.delta_text(r, with_se=False)) if r["status"] == "done"
                    else "" if r["status"] == "reference" else f"({r['status']})")
            mark = " *" if r["paper_unverified"] else ""
            paper_delta = "" if r["paper_delta_top1"] is None else _num(r["paper_delta_top1"], signed=True)
            out += [ours, _pair(r["paper_top1"], r["paper_top5"], paper_delta, mark)]
        lines.append("| " + " | ".join(out) + " |")
    note = ("Each cell: top-1 / top-5, ImageNet-style val accuracy at the last epoch (%), mean over seeds; "
            f"(Δ top-1) {DELTA_LEGEND[grid.delta]}, in its column. " + noise.legend(recs) +
            " The stds, standard errors, times and throughput: table.csv.")
    lines += ["", note, f"Runs: {grid.out.as_posix()}/<column>/<row>. Grid: {grid.path.as_posix()}.", ""]
    return "\n".join(lines)
