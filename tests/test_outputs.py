"""After-training commands never overwrite what they read or what a run owns (bot/artifacts/outputs.py).

Each refusal is exit 2 with one line, checked before the work, and leaves the file as it was;
a rerun may replace the command's own earlier output. The run folder is real: the trainer's
checkpoint of tests/fixtures (resnet18-D, width 1/16, 16 px, the toy classes) as best.pt and
last.pt beside a config.yaml, metrics.jsonl and summary.json.
"""

import os
import shutil

import pytest
from conftest import ROOT, tmpfs

from bot.cli import evaluate, export, predict, quantize, slim

FIXTURE = ROOT / "tests/fixtures/last-numpy-rng.pt"


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("best.pt", "last.pt"):
        shutil.copy(FIXTURE, folder / name)
    (folder / "config.yaml").write_text("model:\n  arch: resnet18\n")
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (folder / "summary.json").write_text('{"top1": 37.5}\n')
    return folder


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def refused(capsys, status, *phrases):
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    for phrase in phrases:
        assert phrase in err[0], err[0]
    return err[0]


@pytest.fixture
def read_only(tmp_path):
    """A folder no file can be made in: chmod where that binds, a read-only tmpfs as root."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with tmpfs(folder, "ro", "as root chmod does not stop writes, and a read-only tmpfs cannot be mounted here"):
        yield folder


def test_no_command_writes_over_a_checkpoint_an_input_or_a_run_file(run, toy, tmp_path, capsys):
    image = tmp_path / "cat.jpg"
    shutil.copy(next((toy / "val").rglob("*.jpg")), image)
    loose = tmp_path / "loose.pt"
    shutil.copy(FIXTURE, loose)
    before, picture = snapshot(run), image.read_bytes()
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    cases = [
        (predict, [run, image, "--out", run / "best.pt"], "inputs"),
        (predict, [run, image, "--out", loose], "is a checkpoint this command did not write"),
        (predict, [run, image, "--out", image], "inputs"),
        (evaluate, [run, f"data.root={toy}", "--per-class", run / "best.pt"], "inputs"),
        (evaluate, [run, f"data.root={toy}", "--per-class", run / "last.pt"], "training run's last.pt"),
        (export, [run, "--format", "torchscript", "--out", run / "best.pt"], "inputs"),
        (export, [run / "last.pt", "--format", "onnx", "--out", run / "best.pt"], "training run's best.pt"),
        (slim, [run, "--ratio", "0.3", "--out", other], "training run's folder"),
        (quantize, [run, f"data.root={toy}", "--out", run / "summary.onnx"], "training run's summary.json"),
    ]
    for command, argv, phrase in cases:
        refused(capsys, command.main([str(a) for a in argv]), phrase)
    assert snapshot(run) == before and snapshot(other) == before and image.read_bytes() == picture
    assert loose.read_bytes() == FIXTURE.read_bytes()


def test_a_rerun_replaces_its_own_output(run, toy, tmp_path, capsys):
    image = next((toy / "val").rglob("*.jpg"))
    for _ in range(2):
        assert predict.main([str(run), str(image), "--out", str(tmp_path / "p.csv")]) == 0
        assert evaluate.main([str(run), f"data.root={toy}", "--per-class", str(tmp_path / "c.csv")]) == 0
        assert export.main([str(run), "--format", "torchscript"]) == 0
        assert slim.main([str(run), "--ratio", "0.3", "--out", str(tmp_path / "slim")]) == 0
    assert (run / "best.torchscript.pt").is_file() and (tmp_path / "slim/slim.json").is_file()
    capsys.readouterr()
    # a slimmed network has no timm name: refused in one line that names the formats that work
    refused(capsys, export.main([str(tmp_path / "slim"), "--format", "timm"]), "slimmed", "--format onnx")
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    # someone else's CSV is not this command's output
    (tmp_path / "mine.csv").write_text("name,score\n")
    capsys.readouterr()
    refused(capsys, predict.main([str(run), str(image), "--out", str(tmp_path / "mine.csv")]), "did not write")


def test_outputs_that_cannot_be_written_are_one_line_before_the_work(run, toy, tmp_path, capsys, read_only):
    image = next((toy / "val").rglob("*.jpg"))
    missing, folder = tmp_path / "no/such/folder", tmp_path / "a-folder"
    folder.mkdir()
    cases = [
        (predict, [run, image, "--out", missing / "p.csv"], "does not exist"),
        (export, [run, "--format", "onnx", "--out", missing / "m.onnx"], "does not exist"),
        (predict, [run, image, "--out", folder], "is a folder"),
        (evaluate, [run, f"data.root={toy}", "--per-class", folder], "is a folder"),
        (export, [run, "--format", "torchscript", "--out", folder], "is a folder"),
        (evaluate, [run, f"data.root={toy}", "--per-class", read_only / "c.csv"], "cannot write"),
        (export, [run, "--format", "onnx", "--out", read_only / "m.onnx"], "cannot write"),
        (quantize, [run, f"data.root={toy}", "--out", read_only / "m.onnx"], "cannot write"),
        (slim, [run, "--ratio", "0.3", "--out", read_only / "slim"], "cannot write"),
    ]
    for command, argv, phrase in cases:
        refused(capsys, command.main([str(a) for a in argv]), phrase)
    assert list(folder.iterdir()) == [] and not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_a_timm_export_names_a_safetensors_or_pth_file(run, tmp_path, capsys):
    for name in ("m.onnx", "m"):
        refused(capsys, export.main([str(run), "--format", "timm", "--out", str(tmp_path / name)]), "NAME.safetensors")
    assert export.main([str(run), "--format", "timm", "--out", str(tmp_path / "m.pth")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("m.")) == ["m.pth", "m.safetensors"]
