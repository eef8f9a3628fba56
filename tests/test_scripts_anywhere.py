"""The scripts run from any folder without an install: each puts its checkout on the path before
it imports bot (Python puts only the script's own folder, scripts/, there)."""

import ast
import os
import subprocess
import sys

from conftest import ROOT


def first_bot_import(tree: ast.Module) -> int | None:
    lines = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "bot"]
    lines += [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Import)
              and any(a.name.split(".")[0] == "bot" for a in n.names)]
    return min(lines, default=None)


def test_every_script_puts_its_checkout_on_the_path_before_importing_bot():
    late = []
    for script in sorted((ROOT / "scripts").glob("*.py")):
        text = script.read_text()
        first = first_bot_import(ast.parse(text))
        if first is None:
            continue
        insert = next((i for i, line in enumerate(text.splitlines(), 1) if "sys.path.insert(0" in line), None)
        if insert is None or insert > first:
            late.append(f"{script.name}: bot imported at line {first}, the checkout on the path at {insert}")
    assert not late, "\n".join(late)


def test_a_script_runs_from_another_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for script in (ROOT / "scripts" / "check_dataset.py", ROOT / "train.py"):
        done = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "usage" in done.stdout, done.stderr[-2000:]
