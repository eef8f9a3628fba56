"""scripts/bench_gpu.py: without CUDA it says so and exits 2; --cpu-smoke runs every part of it
(step loops, loaders, train.py end to end) tiny on the CPU, so the script is known to work
before a GPU is lent to measure with it."""

import json

import torch

from conftest import run_cli


def test_bench_gpu_runs_every_part_on_the_cpu(tmp_path):
    if not torch.cuda.is_available():
        done = run_cli("scripts/bench_gpu.py", "--json", tmp_path / "none.json")
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--cpu-smoke" in done.stderr
    done = run_cli("scripts/bench_gpu.py", "--cpu-smoke", "--json", tmp_path / "b.json")
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["cpu_smoke"] and figures["batch"] == 8 and "not a measurement" in figures["device"]
    rows = {(r["part"], r["what"]): r for r in figures["rows"]}
    steps = [r for r in figures["rows"] if r["part"] == "step"]
    assert [r["what"] for r in steps] == ["bot step", "bare loop", "timm resnet18d, bare loop"]
    assert all(r["img_per_s"] > 0 for r in steps) and rows["step", "bare loop"]["vs_bare"] == 1.0
    loaders = [r for r in figures["rows"] if r["part"] == "loader"]
    assert any(r["what"].startswith("torchvision loader") for r in loaders) and all(r["img_per_s"] > 0 for r in loaders)
    (end,) = [r for r in figures["rows"] if r["part"] == "end to end"]
    assert end["img_per_s"] > 0 and end["log_lines"] == 2  # 4 steps logged, the first two dropped
    assert "| part | what | precision | compiled | img/s | vs bare loop |" in done.stdout
