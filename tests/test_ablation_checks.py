"""ablate.py against overrides that would change what a grid's rows mean (bot/grid/checks.py):
an override of a key some row, column or recipe sets is refused unless --override-rows, and
rows that resolve to the same config are warned of."""

import json
import sys

import pytest
from test_ablate import FAKE_TRAIN, ROOT, ablate, column_grid, write_grid

from bot.grid.spec import read_grid


def warmup_grid(tmp_path, **top):
    """The shape of the demo: the grid turns warmup on, the baseline row turns it off."""
    return write_grid(tmp_path, [{"name": "baseline", "overrides": ["schedule.warmup_epochs=0"]},
                                 {"name": "+ warmup"}], overrides=["schedule.warmup_epochs=1"], **top)


def test_override_of_a_key_a_row_sets_is_refused_in_one_line(tmp_path, capsys):
    grid = warmup_grid(tmp_path)
    assert ablate.main([str(grid), "--launcher", "false", "schedule.epochs=2", "schedule.warmup_epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: schedule.warmup_epochs=1 would replace the rows' own "
                                                   "schedule.warmup_epochs (0.0 in 'baseline'; 1.0 in '+ warmup')")
    assert "--override-rows" in err and "schedule.epochs=2" not in err  # no row sets the epochs
    assert not (tmp_path / "runs").exists()


def test_override_rows_applies_it_and_warns_of_rows_that_became_the_same(tmp_path, capsys):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    grid = warmup_grid(tmp_path)
    assert ablate.main([str(grid), "--launcher", f"{sys.executable} {fake}", "--override-rows",
                        "schedule.warmup_epochs=1"]) == 0
    err = capsys.readouterr().err
    assert "note: --override-rows: schedule.warmup_epochs=1 would replace" in err
    assert "warning: rows 'baseline' and '+ warmup' resolve to the same config" in err
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    baseline = next(c["argv"] for c in calls if c["name"] == "baseline")
    assert [a for a in baseline if a.startswith("schedule.warmup_epochs=")] == [  # the user's comes last: it wins
        "schedule.warmup_epochs=1", "schedule.warmup_epochs=0", "schedule.warmup_epochs=1"]


def test_rows_that_are_the_same_config_are_reported_without_overrides(tmp_path, capsys):
    grid = write_grid(tmp_path, [{"name": "a", "overrides": ["optim.lr=0.2"]}, {"name": "b"},
                                 {"name": "c", "overrides": ["optim.lr=0.2"]}], overrides=["optim.lr=0.2"])
    assert ablate.main([str(grid), "--dry-run"]) == 0
    assert "warning: rows 'a', 'b' and 'c' resolve to the same config" in capsys.readouterr().err


@pytest.mark.parametrize("override,match", [
    ("model.arch=resnet18", "model.arch (" + "'resnet50' in 'R: efficient'"),  # a column sets it
    ("optim.lr=0.5", "optim.lr ("),  # rows and cells set it
    ("data.image_size=224", "data.image_size (224 in 'R: efficient', 'R: + cosine', 'M: efficient', 'M: + cosine'; "
                             "299 in 'I: efficient', 'I: + cosine')"),
])
def test_override_of_what_columns_and_cells_set_is_refused(tmp_path, capsys, override, match):
    grid = column_grid(tmp_path)
    assert ablate.main([str(grid.path), "--dry-run", override]) == 2
    assert match in capsys.readouterr().err


def test_override_of_what_rows_share_or_differ_on_by_recipe(tmp_path, capsys):
    # two recipes: the rows differ on batch size without any override saying so
    grid = write_grid(tmp_path, [{"name": "base"}, {"name": "efficient", "recipe": str(ROOT / "recipes" / "efficient.yaml")}])
    assert ablate.main([str(grid), "--dry-run", "data.batch_size=512"]) == 2
    assert "data.batch_size (256 in 'base'; 1024 in 'efficient')" in capsys.readouterr().err
    # keys the rows neither set nor differ on, and a value no row changes, are not the rows'
    assert ablate.main([str(grid), "--dry-run", "data.root=/data/imagenet", "optim.lr=0.3", "model.arch=resnet50"]) == 0
    assert "would replace" not in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "ablations").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_grids_take_a_data_root_and_have_no_twin_rows(path):
    from bot.grid import checks

    grid = read_grid(path)
    assert checks.row_conflicts(grid.rows, ["data.root=/data/imagenet", "data.workers=4"]) == []
    assert checks.duplicate_rows(grid.rows, ["data.root=/data/imagenet"]) == []
