"""The predictions file of `predict --out`, in the layout of timm's inference.py.

Columns: `filename` (the image's path as found, timm's --fullname: class folders repeat base
names), `index` (the class index; only with include_index), `label` (the class name) and
`prob` (its softmax probability). With top-k 1 each holds one value; with k > 1 a list of k,
best first, or with `separate` one column per rank: label_0 .. label_{k-1}, prob_0 .. (and
index_0 ..), as timm's --results-separate-col.

Formats (FORMATS; the --out suffix chooses unless told): csv (LF line endings; a list is a
JSON list in its cell), json (one object keyed by filename, each value that row's other
columns), json-records (JSON Lines: one object per row), parquet (through pyarrow; lists are
list columns). `is_predictions` tells any of them, so a rerun may replace its own output
and nothing else (bot/artifacts/outputs.py's rule).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from bot.errors import UserError
from bot.artifacts import outputs

FORMATS = {"csv": (".csv",), "json": (".json",), "json-records": (".jsonl", ".ndjson"), "parquet": (".parquet",)}
FIRST = "filename"  # the first column of every format


def format_of(path: Path, told: str | None) -> str:
    """The format `told` (--results-format), else the one `path`'s suffix names."""
    if told:
        return told
    for name, suffixes in FORMATS.items():
        if path.suffix.lower() in suffixes:
            return name
    known = ", ".join(s for suffixes in FORMATS.values() for s in suffixes)
    raise UserError(f"--out {path}: no predictions format has the suffix {path.suffix or '(none)'!r}: name the file "
                    f"{known}, or give --results-format {' | '.join(FORMATS)}")


def check_writer(fmt: str) -> None:
    """Parquet needs pyarrow, which bot does not require: said before any work."""
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise UserError("--results-format parquet needs pyarrow, which is not installed (pip install pyarrow); "
                            "csv, json and json-records need nothing more") from None


def columns(results: list[tuple[str, list[dict]]], topk: int, include_index: bool, separate: bool) -> dict:
    """{column: values} from (filename, [{"index", "label", "prob"} best first]) per image."""
    table = {FIRST: [name for name, _ in results]}
    for field in (["index"] if include_index else []) + ["label", "prob"]:
        values = [[entry[field] for entry in best] for _, best in results]
        if topk == 1:
            table[field] = [v[0] for v in values]
        elif separate:
            for rank in range(topk):
                table[f"{field}_{rank}"] = [v[rank] for v in values]
        else:
            table[field] = values
    return table


def rows(table: dict) -> list[dict]:
    return [dict(zip(table, values)) for values in zip(*table.values())]


def as_text(table: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps({row.pop(FIRST): row for row in rows(table)}, indent=4) + "\n"
    if fmt == "json-records":
        return "".join(json.dumps(row) + "\n" for row in rows(table))
    text = io.StringIO(newline="")
    out = csv.writer(text, lineterminator="\n")
    out.writerow(table)
    for row in rows(table):
        out.writerow(json.dumps(v) if isinstance(v, list) else v for v in row.values())
    return text.getvalue()


def write(path: Path, table: dict, fmt: str) -> None:
    """The predictions into `path`, written aside and renamed (bot/artifacts/outputs.py)."""
    if fmt != "parquet":
        outputs.write_text(path, as_text(table, fmt))
        return
    import pyarrow
    import pyarrow.parquet

    try:
        with outputs.written_aside(path) as (tmp,):
            pyarrow.parquet.write_table(pyarrow.table(table), tmp)
    except OSError as e:
        raise UserError(f"cannot write {path}: {os.strerror(e.errno) if e.errno else e}") from None


def _parquet(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PAR1":
                return False
        import pyarrow.parquet

        return pyarrow.parquet.read_schema(path).names[:1] == [FIRST]
    except (OSError, ImportError, ValueError):
        return False


def _json_object(value) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(v, dict) and ("label" in v or "label_0" in v) for v in value.values()))


_json = outputs.json_of(_json_object)
_RECOGNISERS = (
    outputs.text_starting(FIRST + ","),  # csv
    outputs.text_starting('{"' + FIRST + '": '),  # json-records
    lambda path: outputs.text_starting("{")(path) and _json(path),  # json: the whole file is read, so a glance first
    _parquet,
    outputs.text_starting("path,class_1,prob_1"),  # the CSV layout predict wrote before timm's columns
)


def is_predictions(path: Path) -> bool:
    """A predictions file of this module, in any format (the output rule's recogniser)."""
    return any(recognise(path) for recognise in _RECOGNISERS)
