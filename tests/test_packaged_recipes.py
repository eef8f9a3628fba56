"""Recipes by name (bot/config.py, recipe_path): a path that exists wins; otherwise the recipe
shipped in the package (bot/recipes, the top-level recipes/ folder). tests/test_install.py
checks the same from an installed wheel."""

import pytest
from conftest import ROOT

from bot import config
from bot.errors import UserError


def test_a_name_means_the_shipped_recipe_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ here
    shipped = config.load(ROOT / "recipes/demo.yaml")
    for name in ("demo", "demo.yaml", "recipes/demo.yaml"):
        assert config.load(name) == shipped
    # a base: chain resolves among the shipped files (resnet50-all-tricks.yaml builds on others)
    assert config.load("recipes/resnet50-all-tricks.yaml") == config.load(ROOT / "recipes/resnet50-all-tricks.yaml")
    assert config.recipe_path("recipes/ablations/demo.yaml").resolve() == ROOT / "recipes/ablations/demo.yaml"
    (tmp_path / "recipes").mkdir()  # a path that exists wins
    (tmp_path / "recipes/demo.yaml").write_text("model: {arch: resnet34}\n")
    assert config.load("recipes/demo.yaml").model.arch == "resnet34" and config.load("demo").model.arch == "resnet18"


def test_a_name_never_leaves_the_shipped_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (ROOT / "configs/accelerate/8gpu.yaml").is_file()  # a YAML file beside recipes/, not a recipe
    assert config.packaged_recipe("../configs/accelerate/8gpu.yaml") is None
    with pytest.raises(UserError, match=r"^recipe not found: nope \(not a file here, nor one of the recipes shipped in "):
        config.load("nope")
