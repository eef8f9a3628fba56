"""bot/ in wings: each imports only the wings below it, and no modules import each other in a
circle (pyproject.toml's [tool.importlinter], checked with import-linter's own command)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    # --no-cache: a planted import must be seen, not an earlier graph
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": str(LINT.parent)})


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """The package and its contracts, apart from the checkout, to plant bad imports in."""
    out = tmp_path_factory.mktemp("layers")
    shutil.copytree(ROOT / "bot", out / "bot", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", out)
    return out


def test_the_wings_keep_their_layers_and_no_import_circle():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize("module, planted, broken", [
    # a model file reader reaching up into the training core
    ("bot/artifacts/checkpoint.py", "import bot.train.ema", "bot.artifacts is not allowed to import bot.train"),
    # the two after-training wings are side by side: neither imports the other
    ("bot/export/prune.py", "import bot.train.schedule", "bot.export is not allowed to import bot.train"),
    # init.py is below resnet.py in the models wing; importing back makes a circle
    ("bot/models/init.py", "import bot.models.resnet", "No cycles are allowed in bot.models"),
    # a new top-level module must be given a layer (exhaustive)
    ("bot/helpers.py", "", "helpers"),
])
def test_a_planted_import_breaks_a_contract(copy, module, planted, broken):
    path = copy / module
    before = path.read_text() if path.exists() else None
    try:
        path.write_text((before or "") + f"\n{planted}\n")
        done = lint(copy)
    finally:
        if before is None:
            path.unlink()
        else:
            path.write_text(before)
    assert done.returncode != 0
    assert broken in done.stdout + done.stderr, done.stdout[-3000:]
