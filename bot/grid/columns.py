"""The table of a grid with columns, laid out as the paper's Tables 2 and 6: one line per row
(a refinement), two cells per column (a network): ours beside the paper's. The columns
themselves are read in bot/grid/spec.py.
"""

from __future__ import annotations

from bot.grid import noise
from bot.grid.format import DELTA_LEGEND, heading, num
from bot.grid.spec import Grid


def _pair(top1, top5, delta: str = "", mark: str = "") -> str:
    """'top-1 / top-5 (+delta)' with whatever is known; empty when top-1 is not."""
    if top1 is None:
        return ""
    text = num(top1) + (f" / {num(top5)}" if top5 is not None else "")
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
            paper_delta = "" if r["paper_delta_top1"] is None else num(r["paper_delta_top1"], signed=True)
            out += [ours, _pair(r["paper_top1"], r["paper_top5"], paper_delta, mark)]
        lines.append("| " + " | ".join(out) + " |")
    note = ("Each cell: top-1 / top-5, ImageNet-style val accuracy at the last epoch (%), mean over seeds; "
            f"(Δ top-1) {DELTA_LEGEND[grid.delta]}, in its column. " + noise.legend(recs) +
            " The stds, standard errors, times and throughput: table.csv.")
    lines += ["", note, f"Runs: {grid.out.as_posix()}/<column>/<row>. Grid: {grid.path.as_posix()}.", ""]
    return "\n".join(lines)
