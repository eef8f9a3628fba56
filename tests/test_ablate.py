"""scripts/ablate.py and bot/ablation.py: commands, skip/resume, failures, the table.

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

from bot import ablation
from bot.errors import UserError

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
        ablation.read_grid(write_grid(tmp_path, [{"name": "a", "overides": []}]))
    with pytest.raises(UserError, match="taken by row"):
        ablation.read_grid(write_grid(tmp_path, [{"name": "b=256"}, {"name": "b 256"}]))
    with pytest.raises(UserError, match="paper"):
        ablation.read_grid(write_grid(tmp_path, [{"name": "a", "paper": {"top1": "high"}}]))
    with pytest.raises(UserError, match="run.out"):
        ablation.read_grid(write_grid(tmp_path, [{"name": "a", "overrides": ["run.out=x"]}]))


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
    grid = ablation.read_grid(write_grid(tmp_path, rows))
    out = grid.out
    curve = [{"epoch": 0, "step": 5, "lr": 0.05, "loss": 2.0, "img_per_s": 1.0}, {"epoch": 0, "top1": 40.0, "top5": 80.0},
             {"epoch": 1, "step": 15, "lr": 0.1, "loss": 1.0, "img_per_s": 1.0}, {"epoch": 1, "top1": 60.0, "top5": 90.0}]
    plant(out / "base" / "seed0", summary(76.0, 92.0), metrics=curve)
    plant(out / "base" / "seed1", summary(76.2, 93.0, time_per_epoch_s=30.0))
    plant(out / "warmup", summary(76.5, 93.5))
    plant(out / "zero-gamma", last=True)  # interrupted
    plant(out / "big-warmup", summary(75.0))

    recs = {r["row"]: r for r in ablation.table_rows(grid)}
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

    written = ablation.write_table(grid)
    assert {p.name for p in written} == {"table.md", "table.csv", "curves.png", "lr.png"}
    md = (out / "table.md").read_text()
    assert md.startswith("# Test grid")
    assert "| base | 76.10 ± 0.14 | 92.50 ± 0.71 |  | 75.87 |  | 1.0 min | 1000 | 13.3 min |" in md
    assert "| + warmup | 76.50 | 93.50 | +0.40 | 76.03 | +0.16 | 1.5 min | 1000 |" in md
    assert "| + zero gamma | (unfinished) |" in md and "| **b=1024** |" in md
    table = list(csv.DictReader((out / "table.csv").open()))
    assert [r["row"] for r in table] == [r["name"] for r in rows]
    assert float(table[0]["top1"]) == pytest.approx(76.1) and table[0]["seeds"] == "2"
    assert float(table[1]["delta_top1"]) == pytest.approx(0.4) and float(table[1]["paper_delta_top1"]) == pytest.approx(0.16)
    assert table[2]["top1"] == "" and table[2]["status"] == "unfinished"

    # val top-1: the planted eval lines, x in epochs trained (the trainer counts from 0)
    assert ablation.val_curve(grid, grid.rows[0]) == ([1.0, 2.0], [40.0, 60.0])
    # lr: the row's schedule from its config (baseline: 0.1, / 10 at 30, 60, 90 of 120)
    xs, ys = ablation.lr_curve(grid, grid.rows[0])
    assert xs[-1] < 120 and [ys[xs.index(e)] for e in (0, 29.99, 30, 60, 90)] == pytest.approx([0.1, 0.1, 0.01, 1e-3, 1e-4])
    xs, ys = ablation.lr_curve(grid, grid.rows[0], ["data.batch_size=1024", "schedule.kind=cosine"])
    assert ys[0] == pytest.approx(0.4) and ys[xs.index(60)] == pytest.approx(0.2)


def test_table_only_writes_the_table_without_running(tmp_path, capsys):
    grid = write_grid(tmp_path, [{"name": "a"}, {"name": "b"}])
    plant(tmp_path / "runs" / "grid" / "a", summary(70.0))
    assert ablate.main([str(grid), "--table-only", "--launcher", "false"]) == 0
    assert "| a | 70.00 |" in (tmp_path / "runs" / "grid" / "table.md").read_text()
    assert "| b | (not run) |" in (tmp_path / "runs" / "grid" / "table.md").read_text()
