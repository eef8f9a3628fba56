"""scripts/bench_gpu.py (make gpu-check): without CUDA it says so and exits 2; --cpu-smoke runs
every part of it (the cuda tests, step loops, loaders, train.py end to end) tiny on the CPU, so
the script is known to work before a GPU is lent to measure with it; its time boxes cut a part
and keep the figures measured before."""

import json
import sys
import time
from types import SimpleNamespace

import torch

from conftest import ROOT, call_main

sys.path.insert(0, str(ROOT / "scripts"))
import bench_gpu  # noqa: E402
import timeboxed  # noqa: E402
from timeboxed import Figures  # noqa: E402


def test_bench_gpu_runs_every_part_on_the_cpu(tmp_path):
    if not torch.cuda.is_available():
        done = call_main(bench_gpu.main, "--json", tmp_path / "none.json")
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--cpu-smoke" in done.stderr
    # what make gpu-check runs, in its smoke mode (its CUDA tests and train.py in processes of their own)
    done = call_main(bench_gpu.main, "--cpu-smoke", "--out", tmp_path / "check", "--parts", "tests", "step",
                   "loader", "end-to-end")
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads((tmp_path / "check/gpu-check.json").read_text())
    assert figures["cpu_smoke"] and figures["batch"] == 8 and "not a measurement" in figures["device"]
    parts = [r["part"] for r in figures["rows"]]
    assert parts[0] == "tests" and parts[-1] == "end to end"  # in the order of the plan
    (tests,) = [r for r in figures["rows"] if r["part"] == "tests"]
    assert tests["returncode"] == 0 and "tests/test_cuda.py" in tests["what"] and tests["skipped"] > 0  # no CUDA here
    assert "skipped" in (tmp_path / "check/cuda-tests.log").read_text()
    rows = {(r["part"], r["what"]): r for r in figures["rows"]}
    steps = [r for r in figures["rows"] if r["part"] == "step"]
    assert [r["what"] for r in steps] == ["bot step", "bare loop", "timm resnet18d, bare loop"]
    assert all(r["img_per_s"] > 0 for r in steps) and rows["step", "bare loop"]["vs_bare"] == 1.0
    loaders = [r for r in figures["rows"] if r["part"] == "loader"]
    assert any(r["what"].startswith("torchvision loader") for r in loaders) and all(r["img_per_s"] > 0 for r in loaders)
    (end,) = [r for r in figures["rows"] if r["part"] == "end to end"]
    assert end["img_per_s"] > 0 and end["log_lines"] == 2  # 4 steps logged, the first two dropped
    table = (tmp_path / "check/gpu-check.md").read_text()
    assert "| part | what | precision | compiled | img/s | vs bare loop |" in table and table in done.stdout + "\n"


def test_a_part_past_its_time_box_is_cut_and_the_figures_before_it_stay(tmp_path):
    figures = Figures(tmp_path / "f.json", {"device": "x"}, bench_gpu.table)

    def slow():
        yield {"part": "step", "what": "fast", "img_per_s": 10.0}
        time.sleep(30)
        yield {"part": "step", "what": "never", "img_per_s": 1.0}
    start = time.monotonic()
    bench_gpu.run_part(figures, "step", slow, 2)
    bench_gpu.run_part(figures, "loader", lambda: iter([{"part": "loader", "what": "l", "img_per_s": 3.0}]), 1)
    bench_gpu.run_part(figures, "end to end", lambda: (_ for _ in ()).throw(SystemExit("train.py failed")), 60)
    assert time.monotonic() - start < 15
    rows = json.loads((tmp_path / "f.json").read_text())["rows"]
    assert [(r["what"], r.get("note")) for r in rows] == [
        ("fast", None), ("", "cut by its time box of 2 s"), ("", "skipped: out of --budget"),
        ("", "failed: train.py failed")]
    assert "| step | fast |  |  | 10 |  |" in (tmp_path / "f.md").read_text()


def test_cuda_tests_cut_by_their_time_box_leave_their_log(tmp_path, monkeypatch):
    """The log is written as pytest runs: a cut part still shows what passed and where it hung (15 s:
    a child pytest starts in about 1 s on an idle machine, far longer on a loaded one)."""
    tests = tmp_path / "test_hang.py"
    tests.write_text("import time\nimport pytest\npytestmark = pytest.mark.cuda\n\n"
                     "def test_quick():\n    pass\n\ndef test_hangs():\n    time.sleep(120)\n")
    monkeypatch.setattr(timeboxed, "cuda_test_files", lambda: [str(tests)])
    figures, log = Figures(tmp_path / "f.json", {"device": "x"}, bench_gpu.table), tmp_path / "cuda-tests.log"
    bench_gpu.run_part(figures, "tests", lambda: timeboxed.cuda_test_rows(log), 15)
    assert [r["note"] for r in figures.rows] == ["cut by its time box of 15 s"], log.read_text()
    text = log.read_text()
    assert "test_quick PASSED" in text and "test_hang.py::test_hangs" in text.splitlines()[-1], text


def test_without_dali_the_loader_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali raises ImportError
    rows = bench_gpu.loader_rows(SimpleNamespace(cores=2), tmp_path, torch.device("cuda"), 8)
    assert next(rows) == {"part": "loader", "what": "DALI GPU loader alone", "img_per_s": None,
                          "note": "skipped: no DALI"}


def test_end_to_end_keeps_the_windows_inside_an_epoch():
    """Logged every 4 steps, 8 steps an epoch: the window that begins an epoch holds the loader's
    restart, the first two compilation and warm-up; the others are the steady rate."""
    lines = [{"epoch": (s - 1) // 8, "step": s, "img_per_s": float(s)} for s in range(4, 33, 4)]
    records = [{"epoch": 0, "step": 8, "top1": 1.0}, *lines]  # an evaluation line has no img/s
    assert bench_gpu.steady_rates(records) == [16.0, 24.0, 32.0]
