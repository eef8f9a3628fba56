"""The package installs (pyproject.toml) and works from outside the repository."""

import os
import shutil
import subprocess
import sys

from conftest import ROOT


def test_installed_package_imports_and_runs_its_commands_anywhere(tmp_path):
    target, elsewhere, source = tmp_path / "site", tmp_path / "elsewhere", tmp_path / "source"
    elsewhere.mkdir()
    # built from a copy: setuptools writes build/ into the folder it builds
    shutil.copytree(ROOT / "bot", source / "bot", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # --no-deps: the venv's packages serve; --no-build-isolation: setuptools from the venv, no network
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(source)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import bot, bot.cli.evaluate, bot.train.trainer; print(bot.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(target / "bot" / "__init__.py")  # the installed copy, not the checkout
    for name in ("bot-train", "bot-ablate", "bot-evaluate", "bot-predict", "bot-export"):
        cmd = subprocess.run([sys.executable, str(target / "bin" / name), "--help"], cwd=elsewhere, env=env,
                             capture_output=True, text=True)
        assert cmd.returncode == 0 and "usage:" in cmd.stdout, (name, cmd.stderr[-2000:])
    # the installed ablate runs rows with the installed trainer (no train.py beside a wheel's bot/)
    from_wheel = subprocess.run([sys.executable, "-c", "from bot.cli.ablate import train_command; "
                                 "print(train_command())"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert from_wheel.stdout.strip() == "['-m', 'bot.cli.train']", from_wheel.stderr
