"""Run an ablation grid (recipes/ablations/*.yaml) and write its table  (installed as `bot-ablate`)

    python scripts/ablate.py recipes/ablations/demo.yaml data.root=data/toy --seeds 3
    python scripts/ablate.py recipes/ablations/table6.yaml --dry-run      # the commands it would run
    python scripts/ablate.py recipes/ablations/table4.yaml data.root=/data/imagenet \
        --launcher "accelerate launch --config_file configs/accelerate/8gpu.yaml"
    python scripts/ablate.py recipes/ablations/demo.yaml --table-only     # the table of the runs on disk
    bot-ablate ablations/demo data.root=data/toy      # installed: a grid shipped with bot, from any folder

GRID is a grid file; when no such file exists, a name such as `ablations/demo` or
`recipes/ablations/demo.yaml` means the grid shipped inside the package (its rows' recipes
are the shipped ones too).

Each row whose run has no summary.json is started, or resumed when it has a last.pt
(the trainer resumes from it); a finished row is never rerun. The key=value arguments
apply to every row (e.g. data.root=/data/imagenet); one that would change a key the
grid's rows set (or differ on) exits 2 naming the key and the rows, unless
--override-rows says to replace the rows' values anyway. Two rows that resolve to the same
config are reported before anything runs. Then table.md, table.csv,
curves.png and lr.png are written into the grid's folder. A failed row is reported and
the next one runs; the exit status is then 1. Bad input (grid, row, key) exits 2.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time

from bot.cli import checkout_file, command_parser
from bot.config import recipe_path
from bot.errors import UserError, one_line
from bot.grid import checks
from bot.grid.runs import row_config, run_dirs, run_overrides, run_status
from bot.grid.spec import read_grid, shell_path
from bot.grid.table import write_table


def train_command() -> list[str]:
    """What runs one row after the launcher: the checkout's train.py, or the installed module."""
    path = checkout_file("train.py")
    return [shell_path(path)] if path else ["-m", "bot.cli.train"]


def parse(argv: list[str]) -> argparse.Namespace:
    p = command_parser(__doc__)
    p.add_argument("grid", help="a grid file, e.g. recipes/ablations/table4.yaml")
    p.add_argument("overrides", nargs="*", help="dotted.key=value applied to every row")
    p.add_argument("--dry-run", action="store_true", help="print each row's command and state; run nothing")
    p.add_argument("--seeds", type=int, default=1, help="runs per row, in <row>/seed<k> with run.seed=k")
    p.add_argument("--launcher", default=None,
                   help='replaces "python", e.g. "accelerate launch --config_file configs/accelerate/8gpu.yaml"')
    p.add_argument("--out", default=None, help="the grid's folder (default: the grid's out:, else runs/<grid>)")
    p.add_argument("--table-only", action="store_true", help="write the table from the runs on disk; run nothing")
    p.add_argument("--override-rows", action="store_true",
                   help="let a key=value replace what the grid's rows set (refused otherwise: the rows are what "
                        "the table compares)")
    args = p.parse_intermixed_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"overrides must look like key.sub=value, got {bad[0]!r}")
    return args


def check_rows(grid, overrides: list[str], override_rows: bool) -> None:
    """Refuse (or with --override-rows, report) overrides of what the rows set; warn about rows
    that train the same config."""
    conflicts = checks.row_conflicts(grid.rows, overrides)
    if conflicts and not override_rows:
        raise UserError(f"{', and '.join(conflicts)}: a grid's rows are what its table compares; edit the "
                        "grid, or add --override-rows to apply the override to every row anyway")
    for phrase in conflicts:
        print(f"note: --override-rows: {phrase}", file=sys.stderr)
    for names in checks.duplicate_rows(grid.rows, overrides):
        listed = ", ".join(repr(n) for n in names[:-1]) + f" and {names[-1]!r}"
        print(f"warning: rows {listed} resolve to the same config: the table will show no difference "
              "between them", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
    train = train_command()
    try:
        grid = read_grid(recipe_path(args.grid), args.out)
        for row in grid.rows:  # every row must load before the first one runs
            row_config(grid, row, args.overrides, args.seeds)
        check_rows(grid, args.overrides, args.override_rows)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2

    failed = []
    if not args.table_only:
        runs = [(row, folder, seed) for row in grid.rows for folder, seed in run_dirs(grid, row, args.seeds)]
        for i, (row, folder, seed) in enumerate(runs, 1):
            state = run_status(folder)
            cmd = launcher + train + [row.recipe] + run_overrides(grid, row, folder, seed, args.overrides)
            label = f"[{i}/{len(runs)}] {row.name}" + (f" seed {seed}" if seed is not None else "")
            if state == "done":
                print(f"{label}: done, skipped ({folder.as_posix()}/summary.json)", flush=True)
                continue
            print(f"{label}: {state} -> {folder.as_posix()}", flush=True)
            if args.dry_run:
                print("  " + shlex.join(cmd), flush=True)
                continue
            t0 = time.time()
            rc = subprocess.call(cmd)
            took = f"{(time.time() - t0) / 60:.1f} min"
            if rc != 0 or run_status(folder) != "done":
                why = f"exit status {rc}" if rc != 0 else "exited 0 but wrote no summary.json"
                print(f"{label}: FAILED ({why}, {took}); going on with the next row", flush=True)
                failed.append(label)
            else:
                print(f"{label}: finished in {took}", flush=True)
            write_table(grid, args.overrides)  # the table grows as rows finish
    if args.dry_run:
        return 0
    written = write_table(grid, args.overrides)
    print("\n" + (grid.out / "table.md").read_text())  # the grid's result, where the user is looking
    for path in written:
        print(f"wrote {path.as_posix()}")
    if failed:
        print(f"{len(failed)} run(s) failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
