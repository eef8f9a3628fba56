"""What keeps a grid's rows apart: command-line overrides that would replace what the rows
set, and rows that resolve to the same config.

A grid's rows are what its table compares. `ablate.py GRID schedule.warmup_epochs=1` on a
grid whose baseline row sets `schedule.warmup_epochs=0` would train the baseline with
warmup, and the table would print "+ warmup ... +0.00" as if warmup did nothing. So an
override of a key the rows set (in a row's, column's or cell's overrides) or on which
their configs differ (from different recipes) is refused unless the user asks for it
(`--override-rows`); and two rows that train the same config are reported.
"""

from __future__ import annotations

from bot import config as config_mod
from bot.errors import UserError

# set per run by ablate.py (names and folders): never what tells two rows apart
NAMING_KEYS = {"run.out", "run.name", "run.group"}
MAX_NAMED = 8  # rows named in one message before "and N more"


def resolved(row, extra: list[str] = ()) -> dict:
    """The row's config as {dotted.key: value}, without its name and folder."""
    try:
        cfg = config_mod.load(row.recipe, list(row.overrides) + list(extra))
    except UserError as e:
        raise UserError(f"row {row.name!r}: {e}") from None
    return {k: v for k, v in config_mod.flat(cfg.to_dict()).items() if k not in NAMING_KEYS}


def override_key(item: str) -> str:
    return item.split("=", 1)[0].strip()


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMED])
    return shown + (f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


def _values(key: str, rows, configs: list[dict]) -> str:
    """"0.0 in 'baseline'; 1.0 in '+ warmup', ...": the rows grouped by their value of `key`."""
    groups: dict[str, list[str]] = {}
    for row, cfg in zip(rows, configs):
        groups.setdefault(repr(cfg[key]), []).append(repr(row.name))
    return "; ".join(f"{value} in {_names(names)}" for value, names in groups.items())


def row_conflicts(rows, extra: list[str]) -> list[str]:
    """One phrase per key that a command-line override changes in some row although the rows
    set it (in their own overrides) or differ on it; empty when there is none."""
    if not extra or not rows:
        return []
    before = [resolved(r) for r in rows]
    after = [resolved(r, extra) for r in rows]
    differ = {k for k in before[0] if any(b.get(k) != before[0][k] for b in before[1:])}
    row_set = {override_key(o) for r in rows for o in r.overrides[r.common:]}
    phrases = []
    for item in extra:
        prefix = override_key(item)
        for key in sorted(k for k in before[0] if _under(k, prefix)):
            guarded = key in differ or any(_under(key, s) for s in row_set)
            if guarded and any(b[key] != a[key] for b, a in zip(before, after)):
                phrases.append(f"{item} would replace the rows' own {key} ({_values(key, rows, before)})")
    return phrases


def duplicate_rows(rows, extra: list[str] = ()) -> list[list[str]]:
    """Groups of two or more rows (names) that resolve to the same config with `extra`."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        key = repr(sorted(resolved(row, extra).items()))
        groups.setdefault(key, []).append(row.name)
    return [names for names in groups.values() if len(names) > 1]
