"""Text shared by the table's two layouts (bot/grid/table.py, bot/grid/columns.py)."""

from __future__ import annotations

from typing import Optional

from bot.grid.spec import Grid


def num(v: Optional[float], std: Optional[float] = None, signed: bool = False) -> str:
    if v is None:
        return ""
    text = f"{v:+.2f}" if signed else f"{v:.2f}"
    return text + (f" ± {std:.2f}" if std is not None else "")


def duration(seconds: Optional[float]) -> str:
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
