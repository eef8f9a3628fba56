"""The after-training commands under real faults: a full disk, a stop signal, a config that does
not fit its weights, and what they write (the hub card a user edited, file modes, the upload line).

The disk is really full: a 1 MiB tmpfs filled up where the test may mount one (root), else the
process's file-size limit (RLIMIT_FSIZE, which Python meets as EFBIG). The signals are real ones
to a real process, sent while it is blocked in the middle of its work.
"""

import contextlib
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, call_main

from bot.cli import evaluate, export, slim
from bot.artifacts.checkpoint import atomic_save, load

FIXTURE = ROOT / "tests/fixtures/last-numpy-rng.pt"  # resnet18-D at width 1/16, 16 px, the toy classes
FULL = re.compile(r"^error: cannot write .*: (No space left on device \(ENOSPC\)|File too large \(EFBIG\)); "
                  r"nothing was written or replaced$")
ROOM = 16 * 1024  # what the full disk has left: less than any export of the fixture


@pytest.fixture
def disk(tmp_path):
    """`(folder, fill)`: `folder` on a 1 MiB tmpfs, and `fill()` a context in which it is full;
    without mount, a plain folder and a context in which no file may grow past ROOM."""
    folder = tmp_path / "disk"
    folder.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                                 capture_output=True).returncode == 0
    except OSError:
        mounted = False
    try:
        yield folder, (lambda: filled(folder)) if mounted else file_size_limit
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


@contextlib.contextmanager
def filled(folder):
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
    os.truncate(filler, filler.stat().st_size - ROOM)
    try:
        yield
    finally:
        filler.unlink()


@contextlib.contextmanager
def file_size_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (ROOM, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def snapshot(folder):
    """Every file and folder under `folder`, with the files' bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


# torchscript and timm's .pth go through torch's own serialisation, hub and timm through
# safetensors', slim writes a checkpoint (torch.save) and a JSON file into a folder it makes
@pytest.mark.parametrize("argv,out", [
    (["--format", "onnx", "--out"], "m.onnx"),
    (["--format", "torchscript", "--out"], "m.torchscript.pt"),
    (["--format", "timm", "--out"], "m.safetensors"),
    (["--format", "hub", "--out"], "hub"),
    (["--ratio", "0.3", "--out"], "new/slim"),
], ids=["onnx", "torchscript", "timm", "hub", "slim"])
def test_a_full_disk_is_one_line_and_leaves_nothing_behind(disk, argv, out):
    folder, full = disk
    command = slim if argv[0] == "--ratio" else export
    with full():
        done = call_main(command.main, FIXTURE, *argv, folder / out)
    assert os.listdir(folder) == []  # no temporary file, no hidden folder, no empty folder
    errors = [line for line in done.stderr.splitlines() if not line.startswith("warning: ")]
    assert done.returncode == 2 and len(errors) == 1 and FULL.match(errors[0]), done.stderr
    assert str(folder / out) in errors[0]


def test_a_full_disk_keeps_an_earlier_export_as_it_was(disk):
    folder, full = disk
    for argv in (["--format", "torchscript", "--out", folder / "m.pt"], ["--format", "hub", "--out", folder / "hub"]):
        assert call_main(export.main, FIXTURE, *argv).returncode == 0
    assert call_main(slim.main, FIXTURE, "--ratio", "0.3", "--out", folder / "slim").returncode == 0
    before = snapshot(folder)
    with full():
        for argv in (["--format", "torchscript", "--out", folder / "m.pt"],
                     ["--format", "hub", "--out", folder / "hub"]):
            assert call_main(export.main, FIXTURE, *argv).returncode == 2
        assert call_main(slim.main, FIXTURE, "--ratio", "0.5", "--out", folder / "slim").returncode == 2
    assert snapshot(folder) == before


def test_outputs_get_the_usual_mode(tmp_path):
    umask = os.umask(0o027)
    try:
        for argv in (["--format", "timm", "--out", tmp_path / "m.safetensors"],
                     ["--format", "hub", "--out", tmp_path / "hub"]):
            assert call_main(export.main, FIXTURE, *argv).returncode == 0
    finally:
        os.umask(umask)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert modes == {"m.safetensors": 0o640, "m.pth": 0o640, "hub": 0o750,
                     "hub/model.safetensors": 0o640, "hub/config.json": 0o640, "hub/README.md": 0o640}


def test_a_card_the_user_edited_is_kept_and_the_new_one_written_beside_it(tmp_path):
    out = tmp_path / "hub"
    assert call_main(export.main, FIXTURE, "--format", "hub", "--out", out).returncode == 0
    card = (out / "README.md").read_text()
    done = call_main(export.main, FIXTURE, "--format", "hub", "--out", out)  # our own card: replaced
    assert done.returncode == 0 and "kept" not in done.stdout
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]
    edited = card.replace("## Results", "## Results\n\nOur own notes.")
    (out / "README.md").write_text(edited)
    done = call_main(export.main, FIXTURE, "--format", "hub", "--out", out)
    assert done.returncode == 0, done.stderr
    assert (out / "README.md").read_text() == edited and (out / "README.new.md").read_text() == card
    assert f"kept {out / 'README.md'}, edited since the last export; this export's card is {out / 'README.new.md'}" \
        in done.stdout
    assert done.stdout.splitlines()[-1].endswith(" . --exclude README.new.md (docs/hub.md)")
    done = call_main(export.main, FIXTURE, "--format", "hub", "--out", out)  # and again: still kept
    assert done.returncode == 0 and (out / "README.md").read_text() == edited


def test_the_printed_upload_command_survives_a_shell(tmp_path):
    out = tmp_path / "my models" / "it's hub"
    out.parent.mkdir()
    done = call_main(export.main, FIXTURE, "--format", "hub", "--out", out)
    assert done.returncode == 0, done.stderr
    line = done.stdout.splitlines()[-1]
    assert line.startswith("upload: ") and line.endswith(" (docs/hub.md)")
    assert shlex.split(line[len("upload: "):-len(" (docs/hub.md)")]) == ["hf", "upload", "USER/fix", str(out), "."]


def test_weights_of_another_width_than_the_config_are_one_line(tmp_path, toy):
    ckpt = load(FIXTURE)
    ckpt["config"]["model"]["width"] = 0.125  # the weights are width 1/16
    atomic_save(ckpt, tmp_path / "best.pt")
    done = call_main(evaluate.main, tmp_path / "best.pt", f"data.root={toy}", "data.workers=0")
    assert done.returncode == 2 and done.stderr == (
        f"error: {tmp_path / 'best.pt'}: its weights do not fit its config (resnet18-D, model.width=0.125): "
        f"conv1.0.weight is (2, 3, 3, 3), the config builds (4, 3, 3, 3)\n")
    # a slimmed checkpoint has narrower layers than its config builds, and still evaluates
    assert call_main(slim.main, FIXTURE, "--ratio", "0.5", "--out", tmp_path / "slim").returncode == 0
    assert call_main(evaluate.main, tmp_path / "slim", f"data.root={toy}", "data.workers=0").returncode == 0


def blocked_writing_stderr(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            if "pipe_write" in f.read():
                return True
        with open(f"/proc/{pid}/syscall") as f:
            return f.read().startswith("1 0x2 ")  # x86-64 write(2, ...)
    except OSError:
        return False


def stopped_midway(argv, sig) -> tuple[int, str]:
    """Run `argv` with its stderr a full pipe, so that it blocks at its first line there (a
    progress line, in the middle of the work), send it `sig` then, and read what it writes."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write, b"\0" * 4096)
    os.set_blocking(write, True)
    proc = subprocess.Popen([sys.executable, *map(str, argv)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=write,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})
    os.close(write)
    with os.fdopen(read, "rb") as stderr:
        try:
            deadline = time.monotonic() + 120
            while not blocked_writing_stderr(proc.pid):
                assert proc.poll() is None and time.monotonic() < deadline, "never wrote to stderr"
                time.sleep(0.05)
            os.kill(proc.pid, sig)
            err = stderr.read().lstrip(b"\0").decode()  # to its end: the process has exited
            return proc.wait(timeout=60), err
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("command,sig", [("evaluate", signal.SIGTERM), ("predict", signal.SIGUSR1)])
def test_a_stop_signal_is_one_line_and_leaves_no_output(tmp_path, toy, command, sig):
    images = sorted((toy / "val").rglob("*.jpg"))
    argv = {"evaluate": ["scripts/evaluate.py", FIXTURE, f"data.root={toy}", "data.workers=0", "data.batch_size=4",
                         "--per-class", tmp_path / "out.csv"],
            "predict": ["scripts/predict.py", FIXTURE, *images, "--batch", "4", "--out", tmp_path / "out.csv"]}[command]
    status, err = stopped_midway(argv, sig)
    assert status == 128 + sig, (status, err)
    # the first progress line (a tenth of the work done), whose write the signal interrupted: lost,
    # or without its newline; then the one line
    assert re.fullmatch(f"({command}.*/s\n?)?{command}: stopped by {sig.name}; nothing written\n", err), err
    assert os.listdir(tmp_path) == []
