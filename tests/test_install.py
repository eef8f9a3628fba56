"""The package installs (pyproject.toml) and works from outside the repository: its commands,
its shipped recipes and grids, and the README's "From Python" example."""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import ROOT


def readme_python_example() -> str:
    """The script of the README's "From Python" section (its `python - <<EOF` block)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**From Python**"):]
    return re.search(r"\$ python - <<EOF\n(.*?)\nEOF\n", section, re.S).group(1)


def test_installed_package_runs_its_commands_recipes_and_readme_example_anywhere(tmp_path):
    target, elsewhere, source = tmp_path / "site", tmp_path / "elsewhere", tmp_path / "source"
    elsewhere.mkdir()
    # built from a copy laid out as a clone (bot/recipes a link to recipes/): setuptools writes
    # build/ into the folder it builds
    shutil.copytree(ROOT / "bot", source / "bot", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "recipes", source / "recipes")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # --no-deps: the venv's packages serve; --no-build-isolation: setuptools from the venv, no network
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(source)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert not (target / "bot" / "recipes").is_symlink()  # the recipes themselves, not a link to the checkout
    env = {**os.environ, "PYTHONPATH": str(target)}

    def command(*argv, stdin=None):
        name, *args = argv
        exe = [sys.executable, str(target / "bin" / name)] if name.startswith("bot-") else [sys.executable, name]
        done = subprocess.run([*exe, *map(str, args)], cwd=elsewhere, env=env, capture_output=True, text=True,
                              input=stdin, timeout=300)
        assert done.returncode == 0, (argv, done.stderr[-2000:])
        return done.stdout

    # every command of [project.scripts] is installed and its module loads (one process: torch once)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert sorted(p.name for p in (target / "bin").iterdir()) == sorted(scripts)
    loaded = command("-c", "import importlib, sys; [getattr(importlib.import_module(m), 'main') for m in sys.argv[1:]]; "
                     "import bot; print(bot.__file__)", *(spec.split(":")[0] for spec in scripts.values()))
    assert loaded.strip() == str(target / "bot" / "__init__.py")  # the installed copy, not the checkout
    assert "bot-make-toy-data data/toy" in command("bot-make-toy-data", "--help")  # usage examples in --help

    # shipped recipes by name or by their checkout path; base: chains resolve inside the package
    demo = command("bot-train", "demo", "--print-config")
    assert "arch: resnet18" in demo and command("bot-train", "recipes/demo.yaml", "--print-config") == demo
    assert "variant: D" in command("bot-train", "recipes/resnet50-all-tricks.yaml", "--print-config")
    (elsewhere / "recipes").mkdir()  # a path that exists wins over the shipped recipe
    (elsewhere / "recipes" / "demo.yaml").write_text("model: {arch: resnet34}\n")
    assert "arch: resnet34" in command("bot-train", "recipes/demo.yaml", "--print-config")
    shutil.rmtree(elsewhere / "recipes")
    command("bot-make-toy-data", "data/toy", "--classes", "2", "--train", "16", "--val", "2", "--size", "32")
    # a shipped grid's rows are the shipped recipes, trained by the installed module
    dry = command("bot-ablate", "ablations/demo", "data.root=data/toy", "--dry-run")
    first = shlex.split(dry.splitlines()[1])
    assert first[1:3] == ["-m", "bot.cli.train"] and Path(first[3]).resolve() == (target / "bot/recipes/demo.yaml").resolve()

    # the README's "From Python" example, as it is, on the toy data made above
    printed = command("-", stdin=readme_python_example())
    assert printed.startswith("torch.Size([32, 3, 32, 32]) torch.float32 [")


def test_readme_lists_the_commands_pyproject_installs():
    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    readme = (ROOT / "README.md").read_text()
    install = readme[readme.index("**Install**"):readme.index("**From Python**")]
    assert set(re.findall(r"`(bot-[a-z-]+)`", install)) == scripts
    assert set(re.findall(r"(?<![/\w])bot-[a-z][a-z-]*[a-z]", readme)) <= scripts  # no other command anywhere


def test_every_commands_help_shows_usage_examples(capsys):
    import importlib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, spec in scripts.items():
        module = importlib.import_module(spec.split(":")[0])
        try:
            module.main(["--help"])
        except SystemExit as e:
            assert e.code == 0, name
        out = capsys.readouterr().out
        options_end = out.index("  -h, --help")
        examples = [line for line in out[options_end:].splitlines()
                    if re.match(r"    (python |torchrun |accelerate |bot-[a-z-]+ )", line)]  # below the options
        assert examples, (name, out)
