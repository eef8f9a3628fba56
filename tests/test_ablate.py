"""scripts/ablate.py and bot/grid/spec.py: commands, skip/resume, failures, the table.

No training here: a fake trainer (a few lines of Python given as --launcher) writes what
the real one would, and the table tests plant summary.json and metrics.jsonl files.
"""

import csv
import importlib.util
import json
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from bot.errors import UserError
from bot.grid import curves
from bot.grid.runs import row_config
from bot.grid.spec import read_grid
from bot.grid.table import render_markdown, table_rows, write_table

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ablate", ROOT / "scripts" / "ablate.py")
ablate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablate)

# A stand-in for train.py: `python fake_train.py train.py RECIPE key=value...`. It logs
# its call, fails for a row named "broken", and otherwise writes a finished run folder.
FAKE_TRAIN = textwrap.dedent("""
    import json, sys, yaml
    from pathlib import Path
    kv = dict(a.split("=", 1) for a in sys.argv[3:])
    out = Path(kv["run.out"])
    name = yaml.safe_load(kv["run.name"])
    resumed = (out / "last.pt").exists()
    with open(Path(sys.argv[0]).parent / "calls.jsonl", "a") as f:
        f.write(json.dumps({"name": name, "resumed": resumed, "argv": sys.argv[1:]}) + "\\n")
    if "broken" in name:
        sys.exit(3)
    out.mkdir(parents=True, exist_ok=True)
    (out / "last.pt").write_text("x")
    (out / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "step": 10, "lr": 0.1, "loss": 1.0,
                                                   "img_per_s": 9.0}) + "\\n"
                                       + json.dumps({"epoch": 0, "top1": 50.0, "top5": 90.0}) + "\\n")
    (out / "summary.json").write_text(json.dumps({"top1": 70.0 + len(name) / 10, "top5": 90.0,
        "best_top1": 71.0, "epochs": 1, "steps": 10, "time_per_epoch_s": 5.0, "train_img_per_s": 100.0,
        "params": 1, "macs": 1}))
""")


def write_grid(tmp_path, rows, **top):
    grid = {"title": "Test grid", "recipe": str(ROOT / "recipes" / "baseline.yaml"),
            "out": str(tmp_path / "runs" / "grid"), "rows": rows, **top}
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(grid))  # JSON is YAML
    return path


def summary(top1, top5=90.0, **kw):
    return {"top1": top1, "top5": top5, "best_top1": top1, "epochs": 2, "steps": 20,
            "time_per_epoch_s": 90.0, "train_img_per_s": 1000.0, "params": 1, "macs": 1, **kw}


def plant(folder: Path, summary_=None, last=False, metrics=()):
    folder.mkdir(parents=True, exist_ok=True)
    if summary_ is not None:
        (folder / "summary.json").write_text(json.dumps(summary_))
    if last:
        (folder / "last.pt").write_text("x")
    if metrics:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def commands(out: str) -> list[list[str]]:
    return [shlex.split(line) for line in out.splitlines() if line.startswith("  ")]


# ---------------------------------------------------------------- reading grids


def test_grid_rejects_unknown_keys_and_duplicate_rows(tmp_path):
    with pytest.raises(UserError, match="unknown key 'overides'"):
        read_grid(write_grid(tmp_path, [{"name": "a", "overides": []}]))
    with pytest.raises(UserError, match="taken by row"):
        read_grid(write_grid(tmp_path, [{"name": "b=256"}, {"name": "b 256"}]))
    with pytest.raises(UserError, match="paper"):
        read_grid(write_grid(tmp_path, [{"name": "a", "paper": {"top1": "high"}}]))
    with pytest.raises(UserError, match="run.out"):
        read_grid(write_grid(tmp_path, [{"name": "a", "overrides": ["run.out=x"]}]))


def test_bad_row_key_exits_2_before_anything_runs(tmp_path, capsys):
    grid = write_grid(tmp_path, [{"name": "good"}, {"name": "bad", "overrides": ["optim.lrr=1"]}])
    assert ablate.main([str(grid), "--launcher", "false"]) == 2
    err = capsys.readouterr().err
    assert "row 'bad'" in err and "did you mean optim.lr" in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- dry run


def test_dry_run_prints_the_commands_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    grid = ROOT / "recipes" / "ablations" / "table4.yaml"
    out = tmp_path / "t4"
    assert ablate.main([str(grid), "--dry-run", "--out", str(out), "data.root=/data/imagenet"]) == 0
    cmds = commands(capsys.readouterr().out)
    assert len(cmds) == 10
    first, last = cmds[0], cmds[-1]
    assert first[:3] == [sys.executable, "train.py", "recipes/baseline.yaml"]
    assert first[3:] == ["data.batch_size=256", 'run.name="b=256 linear scaling"', 'run.group="t4"',
                         "data.root=/data/imagenet", f"run.out={out}/b-256-linear-scaling"]
    assert "precision=fp16" in last and "data.batch_size=1024" in last
    assert last[-1] == f"run.out={out}/b-1024-fp16"
    assert not out.exists()


def test_dry_run_with_seeds_and_launcher(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    grid = ROOT / "recipes" / "ablations" / "table3.yaml"
    launcher = "accelerate launch --config_file configs/accelerate/8gpu.yaml"
    assert ablate.main([str(grid), "--dry-run", "--seeds", "3", "--launcher", launcher,
                        "--out", str(tmp_path / "t3")]) == 0
    cmds = commands(capsys.readouterr().out)
    assert len(cmds) == 6
    assert all(c[:5] == shlex.split(launcher) + ["train.py"] for c in cmds)
    assert [c[5] for c in cmds] == ["recipes/baseline.yaml"] * 3 + ["recipes/efficient.yaml"] * 3
    assert [c[-2:] for c in cmds[:3]] == [[f"run.out={tmp_path}/t3/baseline-b-256-fp32/seed{k}", f"run.seed={k}"]
                                          for k in range(3)]
    assert 'run.name="efficient b=1024 FP16 seed2"' in cmds[-1]


# ---------------------------------------------------------------- running


def test_skip_resume_start_and_failures(tmp_path, capsys):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    rows = [{"name": "finished"}, {"name": "interrupted"}, {"name": "broken"}, {"name": "fresh"}]
    grid = write_grid(tmp_path, rows)
    out = tmp_path / "runs" / "grid"
    plant(out / "finished", summary(80.0), last=True)
    plant(out / "interrupted", last=True)
    launcher = ["--launcher", f"{sys.executable} {fake}"]

    assert ablate.main([str(grid), *launcher, "optim.lr=0.2"]) == 1  # the broken row failed
    text = capsys.readouterr()
    assert "finished: done, skipped" in text.out
    assert "interrupted: resume" in text.out and "fresh: start" in text.out
    assert "broken: FAILED (exit status 3" in text.out and "1 run(s) failed" in text.err
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [(c["name"], c["resumed"]) for c in calls] == [("interrupted", True), ("broken", False), ("fresh", False)]
    assert all("optim.lr=0.2" in c["argv"] for c in calls)
    # the same command for a resume as for a start: train.py resumes from last.pt
    assert Path(calls[0]["argv"][1]).resolve() == ROOT / "recipes" / "baseline.yaml"
    assert (out / "table.md").is_file() and (out / "table.csv").is_file() and (out / "curves.png").is_file()

    # a second pass reruns nothing that finished
    (tmp_path / "calls.jsonl").unlink()
    assert ablate.main([str(grid), *launcher]) == 1
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [c["name"] for c in calls] == ["broken"]
    assert json.loads((out / "finished" / "summary.json").read_text())["top1"] == 80.0

    # once the broken row is fixed (here: planted), everything is done and nothing runs
    plant(out / "broken", summary(1.0))
    (tmp_path / "calls.jsonl").unlink()
    assert ablate.main([str(grid), *launcher]) == 0
    assert not (tmp_path / "calls.jsonl").exists()


# ---------------------------------------------------------------- the table


def test_table_numbers_from_planted_summaries(tmp_path):
    rows = [
        {"name": "base", "section": "b=256", "paper": {"top1": 75.87, "top5": 92.70, "min_per_epoch": 13.3}},
        {"name": "+ warmup", "paper": {"top1": 76.03}},
        {"name": "+ zero gamma", "paper": {"top1": 76.19}},
        {"name": "big base", "section": "b=1024", "paper": {"top1": 75.17}},
        {"name": "+ big warmup", "paper": {"top1": 75.93}},
    ]
    grid = read_grid(write_grid(tmp_path, rows))
    out = grid.out
    curve = [{"epoch": 0, "step": 5, "lr": 0.05, "loss": 2.0, "img_per_s": 1.0}, {"epoch": 0, "top1": 40.0, "top5": 80.0},
             {"epoch": 1, "step": 15, "lr": 0.1, "loss": 1.0, "img_per_s": 1.0}, {"epoch": 1, "top1": 60.0, "top5": 90.0}]
    plant(out / "base" / "seed0", summary(76.0, 92.0), metrics=curve)
    plant(out / "base" / "seed1", summary(76.2, 93.0, time_per_epoch_s=30.0))
    plant(out / "warmup", summary(76.5, 93.5))
    plant(out / "zero-gamma", last=True)  # interrupted
    plant(out / "big-warmup", summary(75.0))

    recs = {r["row"]: r for r in table_rows(grid)}
    base = recs["base"]
    assert base["seeds"] == 2 and base["top1"] == pytest.approx(76.1) and base["top1_std"] == pytest.approx(0.141421, abs=1e-5)
    assert base["top5"] == pytest.approx(92.5) and base["time_per_epoch_s"] == pytest.approx(60.0)
    assert base["delta_top1"] is None and base["paper_delta_top1"] is None
    warm = recs["+ warmup"]
    assert warm["seeds"] == 1 and warm["top1_std"] is None
    assert warm["delta_top1"] == pytest.approx(0.4) and warm["paper_delta_top1"] == pytest.approx(0.16)
    zero = recs["+ zero gamma"]
    assert zero["status"] == "unfinished" and zero["top1"] is None and zero["paper_delta_top1"] == pytest.approx(0.16)
    assert recs["big base"]["status"] == "not run"
    big = recs["+ big warmup"]  # its section restarts deltas; the row above has no result
    assert big["delta_top1"] is None and big["paper_delta_top1"] == pytest.approx(0.76)

    written = write_table(grid)
    assert {p.name for p in written} == {"table.md", "table.csv", "curves.png", "lr.png"}
    md = (out / "table.md").read_text()
    assert md.startswith("# Test grid")
    assert "| base | 76.10 ± 0.14 | 92.50 ± 0.71 |  | 75.87 |  | 1.0 min | 1000 | 13.3 min |" in md
    # fewer seeds than the fullest row: said beside the mean; one seed has no std, so no noise mark
    assert "| + warmup | 76.50 (n=1) | 93.50 | +0.40 | 76.03 | +0.16 | 1.5 min | 1000 |" in md
    assert "| + zero gamma | (unfinished) |" in md and "| **b=1024** |" in md
    table = list(csv.DictReader((out / "table.csv").open()))
    assert [r["row"] for r in table] == [r["name"] for r in rows]
    assert float(table[0]["top1"]) == pytest.approx(76.1) and table[0]["seeds"] == "2"
    assert float(table[1]["delta_top1"]) == pytest.approx(0.4) and float(table[1]["paper_delta_top1"]) == pytest.approx(0.16)
    assert table[2]["top1"] == "" and table[2]["status"] == "unfinished"

    # val top-1: the planted eval lines, x in epochs trained (the trainer counts from 0)
    assert curves.val_curve(grid, grid.rows[0]) == ([1.0, 2.0], [40.0, 60.0])
    # lr: the row's schedule from its config (baseline: 0.1, / 10 at 30, 60, 90 of 120)
    xs, ys = curves.lr_curve(grid, grid.rows[0])
    assert xs[-1] < 120 and [ys[xs.index(e)] for e in (0, 29.99, 30, 60, 90)] == pytest.approx([0.1, 0.1, 0.01, 1e-3, 1e-4])
    xs, ys = curves.lr_curve(grid, grid.rows[0], ["data.batch_size=1024", "schedule.kind=cosine"])
    assert ys[0] == pytest.approx(0.4) and ys[xs.index(60)] == pytest.approx(0.2)


def test_table_only_writes_the_table_without_running(tmp_path, capsys):
    grid = write_grid(tmp_path, [{"name": "a"}, {"name": "b"}])
    plant(tmp_path / "runs" / "grid" / "a", summary(70.0))
    assert ablate.main([str(grid), "--table-only", "--launcher", "false"]) == 0
    table = (tmp_path / "runs" / "grid" / "table.md").read_text()
    assert "| a | 70.00 |" in table and "| b | (not run) |" in table
    assert table in capsys.readouterr().out  # printed where the user looks, not only written


# ---------------------------------------------------------------- columns (Tables 2 and 6)


def column_grid(tmp_path):
    """Two refinements on three networks, a reference row, figures in cells, some unverified."""
    cells = lambda a, b, c: {"R": {"paper": a}, "I": {"paper": b}, "M": {"paper": c}}  # noqa: E731
    rows = [
        {"name": "efficient", "overrides": ["optim.lr=0.2"],
         "cells": {**cells({"top1": 77.16, "top5": 93.52}, {"top1": 77.5, "top5": 93.6, "unverified": True},
                           {"top1": 71.9, "top5": 90.53, "unverified": True}),
                   "M": {"recipe": str(ROOT / "recipes" / "efficient.yaml"), "overrides": ["optim.lr=0.3"],
                         "paper": {"top1": 71.9, "top5": 90.53, "unverified": True}}}},
        {"name": "+ cosine", "overrides": ["schedule.kind=cosine"],
         "cells": cells({"top1": 77.91, "top5": 93.81}, {"top1": 78.19, "top5": 94.06, "unverified": True},
                        {"top1": 72.83, "top5": 91.0})},
        {"name": "reference", "section": "published", "run": False,
         "cells": cells({"top1": 75.3, "top5": 92.2}, {"top1": 78.8, "top5": 94.4}, {"top1": 70.6})},
    ]
    columns = [{"name": "R"}, {"name": "I", "overrides": ["model.arch=inception_v3", "data.image_size=299"]},
               {"name": "M", "overrides": ["model.arch=mobilenet_v1", "model.zero_gamma=false", "optim.lr=0.25"]}]
    return read_grid(write_grid(tmp_path, rows, columns=columns, overrides=["data.workers=8"]))


def test_columns_make_one_run_per_row_and_column(tmp_path):
    grid = column_grid(tmp_path)
    assert grid.columns == ["R", "I", "M"]
    assert [r.name for r in grid.rows] == ["R: efficient", "R: + cosine", "I: efficient", "I: + cosine",
                                           "M: efficient", "M: + cosine"]  # a column's runs together
    assert [r.slug for r in grid.rows[:2]] == ["r/efficient", "r/cosine"]
    assert [(c.title, c.column, c.run) for c in grid.cells[-3:]] == [("reference", col, False) for col in "RIM"]
    # overrides: grid, row, column, cell; the cell's recipe wins over the grid's
    m_eff = grid.rows[4]
    assert m_eff.overrides == ["data.workers=8", "optim.lr=0.2", "model.arch=mobilenet_v1", "model.zero_gamma=false",
                               "optim.lr=0.25", "optim.lr=0.3"]
    assert Path(m_eff.recipe).resolve() == ROOT / "recipes" / "efficient.yaml"
    cfg = row_config(grid, m_eff)
    assert (cfg.model.arch, cfg.optim.lr, cfg.data.batch_size, cfg.run.out) == (
        "mobilenet_v1", 0.3, 1024, f"{grid.out.as_posix()}/m/efficient")
    i_cos = row_config(grid, grid.rows[3])
    assert (i_cos.model.arch, i_cos.data.image_size, i_cos.schedule.kind, i_cos.optim.lr) == (
        "inception_v3", 299, "cosine", 0.1)


@pytest.mark.parametrize("top,rows,match", [
    ({"columns": [{"name": "a", "overides": []}]}, [{"name": "x"}], "unknown key 'overides'"),
    ({"columns": [{"name": "a"}, {"name": "A"}]}, [{"name": "x"}], "two columns are named"),
    ({"columns": [{"name": "a"}]}, [{"name": "x", "cells": {"b": {}}}], "cells must map column names"),
    ({"columns": [{"name": "a"}]}, [{"name": "x", "paper": {"top1": 1}}], "paper figures go in the row's cells"),
    ({"columns": [{"name": "a"}]}, [{"name": "x", "cells": {"a": {"paper": {"top1": "high"}}}}], "column 'a': paper"),
    ({}, [{"name": "x", "cells": {"a": {}}}], "cells need columns"),
    ({}, [{"name": "x", "run": "no"}], "run must be true or false"),
    ({}, [{"name": "x", "paper": {"top1": 1, "unverified": "yes"}}], "unverified to true or false"),
])
def test_bad_columns_and_cells_are_refused(tmp_path, top, rows, match):
    with pytest.raises(UserError, match=match):
        read_grid(write_grid(tmp_path, rows, **top))


def test_table6_dry_run_shows_all_18_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "t6"
    assert ablate.main([str(ROOT / "recipes" / "ablations" / "table6.yaml"), "--dry-run", "--out", str(out),
                        "data.root=/data/imagenet"]) == 0
    cmds = commands(capsys.readouterr().out)
    assert len(cmds) == 18
    recipes = [c[2] for c in cmds]
    assert recipes[:6] == ["recipes/resnet50-d.yaml", "recipes/resnet50-d-cosine.yaml", "recipes/resnet50-d-ls.yaml",
                           "recipes/resnet50-d-distill.yaml", "recipes/resnet50-d-mixup.yaml",
                           "recipes/resnet50-all-tricks.yaml"]
    for stem, part in (("inception-v3", recipes[6:12]), ("mobilenet-v1", recipes[12:])):
        assert part == [f"recipes/{stem}{s}.yaml" for s in ("", "-cosine", "-ls", "-distill", "-mixup", "-all-tricks")]
    assert cmds[7][-1] == f"run.out={out}/inception-v3/cosine-decay"
    assert 'run.name="MobileNet: + distillation and mixup"' in cmds[-1]
    assert not out.exists()


def md_table(text: str) -> list[dict]:
    """The markdown table of table.md as dicts keyed by its header."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_columns_table_puts_each_figure_in_its_cell(tmp_path):
    grid = column_grid(tmp_path)
    plant(grid.out / "r" / "efficient", summary(77.0, 93.0), metrics=[{"epoch": 0, "top1": 77.0, "top5": 93.0}])
    plant(grid.out / "r" / "cosine", summary(77.5, 93.4))
    plant(grid.out / "i" / "cosine", summary(70.0, 90.0))
    plant(grid.out / "m" / "efficient", last=True)
    recs = table_rows(grid)
    assert [(r["row"], r["column"]) for r in recs] == [(t, c) for t in ("efficient", "+ cosine", "reference")
                                                      for c in "RIM"]
    by = {(r["row"], r["column"]): r for r in recs}
    assert by["+ cosine", "R"]["delta_top1"] == pytest.approx(0.5)  # deltas within a column
    assert by["+ cosine", "I"]["delta_top1"] is None and by["+ cosine", "I"]["paper_delta_top1"] == pytest.approx(0.69)
    assert by["reference", "R"]["status"] == "reference" and by["reference", "R"]["paper_delta_top1"] is None

    written = write_table(grid)
    assert {p.name for p in written} == {"table.md", "table.csv", "curves.png", "lr.png"}
    md = (grid.out / "table.md").read_text()
    assert "Paper figures marked * are unverified" in md.split("| row |")[0]  # in the caption, above the table
    table = md_table(md)
    assert list(table[0]) == ["row", "R ours", "R paper", "I ours", "I paper", "M ours", "M paper"]
    eff, cos, section, ref = table
    assert eff == {"row": "efficient", "R ours": "77.00 / 93.00", "R paper": "77.16 / 93.52", "I ours": "(not run)",
                   "I paper": "77.50 / 93.60 *", "M ours": "(unfinished)", "M paper": "71.90 / 90.53 *"}
    assert cos == {"row": "+ cosine", "R ours": "77.50 / 93.40 (+0.50)", "R paper": "77.91 / 93.81 (+0.75)",
                   "I ours": "70.00 / 90.00", "I paper": "78.19 / 94.06 (+0.69) *", "M ours": "(not run)",
                   "M paper": "72.83 / 91.00 (+0.93)"}
    assert section["row"] == "**published**"
    assert ref == {"row": "reference", "R ours": "", "R paper": "75.30 / 92.20", "I ours": "", "I paper": "78.80 / 94.40",
                   "M ours": "", "M paper": "70.60"}
    rows = list(csv.DictReader((grid.out / "table.csv").open()))
    assert [(r["row"], r["column"], r["paper_unverified"]) for r in rows[:3]] == [
        ("efficient", "R", "False"), ("efficient", "I", "True"), ("efficient", "M", "True")]


def test_unverified_figure_is_marked_in_a_single_column_table(tmp_path):
    grid = read_grid(write_grid(tmp_path, [{"name": "a", "paper": {"top1": 70.6, "unverified": True}},
                                                    {"name": "b", "paper": {"top1": 75.3}}]))
    md = render_markdown(grid, table_rows(grid))
    assert "Paper figures marked * are unverified" in md.split("| row |")[0]
    assert [r["paper top-1"] for r in md_table(md)] == ["70.60 *", "75.30"]


def test_columns_grid_runs_every_cell_and_skips_the_reference(tmp_path, capsys):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    grid = column_grid(tmp_path)
    assert ablate.main([str(grid.path), "--launcher", f"{sys.executable} {fake}"]) == 0
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [c["name"] for c in calls] == [r.name for r in grid.rows] and len(calls) == 6
    assert all((grid.out / r.slug / "summary.json").is_file() for r in grid.rows)
    # the fake trainer's top-1 is 70 + len(run name) / 10: "R: efficient" 71.2, "R: + cosine" 71.1
    cosine = md_table((grid.out / "table.md").read_text())[1]
    assert (cosine["R ours"], cosine["R paper"]) == ("71.10 / 90.00 (-0.10)", "77.91 / 93.81 (+0.75)")


# ---------------------------------------------------------------- noise of the deltas


def test_deltas_within_the_seeds_noise_are_marked(tmp_path):
    """Δ ± sqrt(s1²/n1 + s2²/n2); ~ when |Δ| < 2 of those (not the std of single runs)."""
    rows = [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}, {"name": "e"}]
    grid = read_grid(write_grid(tmp_path, rows))
    seeds = {"a": [70, 71, 72], "b": [75, 76, 77], "c": [76.5, 77.5, 78.5], "d": [78.2, 79.2, 80.2], "e": [79.0]}
    for name, values in seeds.items():
        for k, v in enumerate(values):
            plant(grid.out / name / f"seed{k}", summary(v))
    recs = {r["row"]: r for r in table_rows(grid)}
    se = (2 / 3) ** 0.5  # every std is 1 over 3 seeds: sqrt(1/3 + 1/3)
    assert [recs[n]["top1_std"] for n in "abcd"] == pytest.approx([1.0] * 4)
    assert [recs[n]["delta_top1"] for n in "bcde"] == pytest.approx([5.0, 1.5, 1.7, -0.2])
    assert [recs[n]["delta_top1_se"] for n in "bcd"] == pytest.approx([se] * 3) and recs["e"]["delta_top1_se"] is None
    # 1.5 is more than the combined std sqrt(2) = 1.41 of one run each, but less than 2 se = 1.63
    assert [recs[n]["delta_within_noise"] for n in "abcde"] == [None, False, True, False, None]
    table = md_table(render_markdown(grid, list(recs.values())))
    assert [r["Δ top-1"] for r in table] == ["", "+5.00 ± 0.82", "+1.50 ± 0.82 ~", "+1.70 ± 0.82", "-0.20"]
    assert [r["top-1"] for r in table] == ["71.00 ± 1.00", "76.00 ± 1.00", "77.50 ± 1.00", "79.20 ± 1.00",
                                           "79.00 (n=1)"]
    write_table(grid)
    md = (grid.out / "table.md").read_text()
    assert "Mean ± std over 3 seeds (n=k: a row with fewer finished)" in md and "~ marks a Δ smaller than 2 standard" in md
    csv_rows = {r["row"]: r for r in csv.DictReader((grid.out / "table.csv").open())}
    assert float(csv_rows["c"]["delta_top1_se"]) == pytest.approx(se, abs=1e-6)
    assert (csv_rows["c"]["delta_within_noise"], csv_rows["b"]["delta_within_noise"]) == ("True", "False")


def test_one_seed_table_says_its_noise_is_unknown(tmp_path):
    grid = read_grid(write_grid(tmp_path, [{"name": "a"}, {"name": "b"}]))
    plant(grid.out / "a", summary(70.0))
    plant(grid.out / "b", summary(70.1))
    md = render_markdown(grid, table_rows(grid))
    assert [r["Δ top-1"] for r in md_table(md)] == ["", "+0.10"]
    assert "One seed: the noise of each figure is unknown and no delta is marked" in md


def test_columns_table_marks_deltas_within_noise(tmp_path):
    grid = column_grid(tmp_path)
    for k, (eff, cos) in enumerate([(77.0, 77.4), (78.0, 78.2), (79.0, 79.6)]):
        plant(grid.out / "r" / "efficient" / f"seed{k}", summary(eff, 93.0))
        plant(grid.out / "r" / "cosine" / f"seed{k}", summary(cos, 93.0))
    eff, cos = md_table(render_markdown(grid, table_rows(grid)))[:2]
    assert (eff["R ours"], cos["R ours"]) == ("78.00 / 93.00", "78.40 / 93.00 (+0.40 ~)")


def test_delta_first_compares_each_row_with_its_sections_first_row(tmp_path):
    rows = [{"name": "all", "section": "s1"}, {"name": "+ x"}, {"name": "+ y"}, {"name": "base2", "section": "s2"},
            {"name": "+ z"}]
    grid = read_grid(write_grid(tmp_path, rows, delta="first"))
    for name, v in {"all": 70, "x": 72, "y": 69, "base2": 60, "z": 61}.items():
        plant(grid.out / name, summary(v))
    recs = {r["row"]: r for r in table_rows(grid)}
    # against "all" (70), not the row above: + y is -1, not -3
    assert [recs[n]["delta_top1"] for n in ("all", "+ x", "+ y", "base2", "+ z")] == [None, 2.0, -1.0, None, 1.0]
    assert "Δ: against the first row of its section." in render_markdown(grid, list(recs.values()))
    with pytest.raises(UserError, match="delta must be above or first, got 'below'"):
        read_grid(write_grid(tmp_path, rows, delta="below"))


def test_a_row_that_keeps_the_weight_average_plots_the_averages_accuracy(tmp_path):
    grid = read_grid(write_grid(tmp_path, [{"name": "raw"}, {"name": "ema"}]))
    evals = [{"epoch": 0, "top1": 40.0, "ema_top1": 30.0}, {"epoch": 1, "top1": 50.0, "ema_top1": 55.0}]
    for name, best_of in (("raw", "raw"), ("ema", "ema")):
        plant(grid.out / name, summary(50.0), metrics=evals)
        (grid.out / name / "config.yaml").write_text(f"run:\n  best_of: {best_of}\n")
    assert curves.val_curve(grid, grid.rows[0]) == ([1.0, 2.0], [40.0, 50.0])
    assert curves.val_curve(grid, grid.rows[1]) == ([1.0, 2.0], [30.0, 55.0])
