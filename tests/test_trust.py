"""A checkpoint is input: nothing in it runs, and what it is gets named in one line.

Every reader (evaluate, predict, export, quantize, slim, model.init_from, the teacher, resume)
is given a file whose pickle runs a shell command when unpickled; it must exit 2 with one line
and the command must never have run. A last.pt written by the trainer before RNG states were
stored as plain values (tests/fixtures/last-numpy-rng.pt, numpy arrays in its pickle) still
resumes, also under numpy 1.x's module names.
"""

import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_here

from bot.cli import evaluate, export, predict, quantize, slim
from bot.cli import train as train_cli
from bot.errors import UserError
from bot.artifacts import checkpoint, trained

FIXTURE = ROOT / "tests/fixtures/last-numpy-rng.pt"
# the overrides the fixture was trained with (recipes/demo.yaml, 4-class toy data, step 2 of 2)
FIXTURE_ARGS = ["data.image_size=16", "model.width=0.0625", "data.batch_size=8", "data.workers=0",
                "schedule.epochs=1", "schedule.warmup_epochs=0"]


class RunsCode:
    """A pickle that runs a shell command when loaded, as a planted checkpoint would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def planted(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"fc.weight": RunsCode(marker)}, "num_classes": 4, "config": {}}, path)
    return path, marker


def _one_line_refusal(status, err, path):
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    assert "nothing in it ran" in lines[0] and str(path) in lines[0] and "posix.system" in lines[0]


@pytest.mark.parametrize("reader", ["evaluate", "predict", "export", "quantize", "slim"])
def test_a_code_running_checkpoint_is_refused_by_every_after_training_command(planted, toy, tmp_path, capsys,
                                                                              reader):
    path, marker = planted
    image = next((toy / "val").rglob("*.jpg"))
    argv = {"evaluate": (evaluate, [path]), "predict": (predict, [path, image]),
            "export": (export, [path, "--format", "onnx", "--out", tmp_path / "m.onnx"]),
            "quantize": (quantize, [path, f"data.root={toy}", "--out", tmp_path / "m.onnx"]),
            "slim": (slim, [path, "--ratio", "0.3", "--out", tmp_path / "slim"])}[reader]
    status = argv[0].main([str(a) for a in argv[1]])
    _one_line_refusal(status, capsys.readouterr().err, path)
    assert not marker.exists()


@pytest.mark.parametrize("reader", ["model.init_from", "loss.distill_teacher", "resume"])
def test_a_code_running_checkpoint_is_refused_by_training(planted, toy, tmp_path, capsys, reader):
    path, marker = planted
    out = tmp_path / "run"
    extra = [f"{reader}={path}"] if reader != "resume" else []
    if reader == "resume":
        out.mkdir()
        shutil.copy(path, out / "last.pt")
        path = out / "last.pt"
    status = train_cli.main(["recipes/demo.yaml", f"data.root={toy}", f"run.out={out}", *FIXTURE_ARGS,
                             "run.max_steps=1", *extra])
    _one_line_refusal(status, capsys.readouterr().err, path)
    assert not marker.exists()
    assert not (out / "config.yaml").exists()  # refused before the run folder was touched


def test_a_code_running_checkpoint_is_refused_through_the_script(planted):
    path, marker = planted
    done = run_here("scripts/evaluate.py", path)
    _one_line_refusal(done.returncode, done.stderr, path)
    assert not marker.exists()


def test_a_checkpoint_written_with_numpy_rng_state_resumes(toy, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(FIXTURE, out / "last.pt")
    status = train_cli.main(["recipes/demo.yaml", f"data.root={toy}", f"run.out={out}", *FIXTURE_ARGS,
                             "run.max_steps=3"])
    assert status == 0, capsys.readouterr().err[-2000:]
    assert "resuming at step 2" in capsys.readouterr().out
    saved = checkpoint.load(out / "last.pt")
    assert saved["step"] == 3
    # written from now on: RNG states of plain values, which need no allow-listed global
    assert isinstance(saved["rng"]["numpy"][1], list)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(out / "last.pt") == []


def _renamed_numpy_module(src: Path, dst: Path) -> None:
    """`src` as numpy 1.x writes it: its arrays' constructor named numpy.core, not numpy._core."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(item, data)


def test_numpy_1_names_load_and_set_the_same_rng_state(tmp_path):
    old = tmp_path / "numpy1.pt"
    _renamed_numpy_module(FIXTURE, old)
    a, b = checkpoint.load(FIXTURE), checkpoint.load(old)
    assert (a["rng"]["numpy"][1] == b["rng"]["numpy"][1]).all()
    checkpoint.set_rng_states(b["rng"])
    import numpy as np

    drawn = np.random.rand(3)
    checkpoint.set_rng_states(a["rng"])
    assert (np.random.rand(3) == drawn).all()
    assert trained.read(old).info["step"] == 2


def test_foreign_files_are_named_for_what_they_are(tmp_path):
    from safetensors.torch import save_file

    model = torch.nn.Linear(2, 2)
    torch.jit.script(model).save(str(tmp_path / "ts.pt"))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    expected = {"ts.pt": "a TorchScript model", "w.safetensors": "a safetensors file",
                "bare.pth": "a bare state_dict", "tensor.pt": "a bare tensor", "junk.pt": "not a readable bot checkpoint"}
    for name, phrase in expected.items():
        with pytest.raises(UserError, match=phrase):
            trained.read(tmp_path / name)


def test_a_relative_data_root_from_a_checkpoint_says_where_it_came_from(tmp_path, capsys):
    state = checkpoint.load(FIXTURE)
    state["config"]["data"]["root"] = "data/moved-away"
    torch.save(state, tmp_path / "best.pt")
    assert evaluate.main([str(tmp_path / "best.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: data.root data/moved-away, from the config in {tmp_path / 'best.pt'}, does not exist "
                   f"here (relative to {Path.cwd()}): give data.root=/path/to/the/data")


def test_init_from_another_width_names_the_key(toy, tmp_path, capsys):
    status = train_cli.main(["recipes/demo.yaml", f"data.root={toy}", f"run.out={tmp_path / 'run'}",
                             *FIXTURE_ARGS[:1], "model.width=0.125", *FIXTURE_ARGS[2:], f"model.init_from={FIXTURE}"])
    assert status == 2
    assert capsys.readouterr().err.strip() == (
        f"error: model.init_from {FIXTURE} was trained with model.width=0.0625 but this run has model.width=0.125: "
        f"set model.width=0.0625 to fine-tune it")
