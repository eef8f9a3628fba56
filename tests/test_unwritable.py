"""A run folder that cannot take a checkpoint (disk full, read-only, no permission) stops the
run with one line naming the folder and the reason, and the checkpoint already there stays
intact and loadable. The failure is simulated: the write starts, then fails as the OS would.
"""

import errno
import os

import pytest
import torch

import bot.artifacts.checkpoint
from bot import config
from bot.errors import UserError
from bot.artifacts import checkpoint
from bot.train.trainer import train

ARGS = ["data.image_size=32", "data.batch_size=16", "data.workers=0", "schedule.epochs=2", "schedule.warmup_epochs=0",
        "run.checkpoint_every=2"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_checkpoint_write_exits_with_one_line_and_keeps_last_pt(toy, tmp_path, monkeypatch, code):
    cfg = lambda steps: config.load("recipes/demo.yaml", [f"data.root={toy}", f"run.out={tmp_path}", *ARGS,  # noqa: E731
                                                          f"run.max_steps={steps}"])
    train(cfg(2))
    before = (tmp_path / "last.pt").read_bytes()

    real_save = torch.save

    def save_then_fail(obj, f):  # part of the file is written, then the disk is full (or the folder read-only)
        real_save(obj, f)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(bot.artifacts.checkpoint.torch, "save", save_then_fail)
    with pytest.raises(UserError) as failed:
        train(cfg(4))
    line = str(failed.value)
    assert "\n" not in line and str(tmp_path) in line and os.strerror(code) in line
    assert (tmp_path / "last.pt").read_bytes() == before  # untouched, and still the one to resume
    assert checkpoint.load_last(tmp_path)["step"] == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_a_run_folder_that_cannot_be_created_is_one_line(toy, tmp_path, monkeypatch):
    def refuse(self, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("pathlib.Path.mkdir", refuse)
    with pytest.raises(UserError, match="Read-only file system"):
        train(config.load("recipes/demo.yaml", [f"data.root={toy}", f"run.out={tmp_path / 'new'}", *ARGS,
                                                "run.max_steps=1"]))


TINY = ["data.image_size=16", "model.width=0.0625", "data.batch_size=8", "data.workers=0", "schedule.epochs=1",
        "schedule.warmup_epochs=0", "run.checkpoint_every=1"]  # 96 toy images: 12 steps; last.pt about 0.4 MB


def fill(folder, leave: int) -> None:
    """Fill the file system of `folder` up to `leave` bytes, with a real file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))


def test_a_real_full_disk_during_the_checkpoint_is_one_line_and_keeps_both_checkpoints(toy, tmp_path):
    """A disk that fills inside torch.save (not a raised OSError: torch writing to a full disk
    itself). A 4 MiB tmpfs where one can be mounted, else a file size limit (RLIMIT_FSIZE, EFBIG)."""
    import resource
    import subprocess
    import sys

    from conftest import ROOT

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    out = disk / "run"
    try:
        args = ["train.py", "recipes/demo.yaml", f"data.root={toy}", f"run.out={out}", *TINY]
        first = subprocess.run([sys.executable, *args, "run.max_steps=2"], cwd=ROOT, capture_output=True, text=True)
        assert first.returncode == 0, first.stderr[-2000:]
        before = {name: (out / name).read_bytes() for name in ("last.pt", "last.prev.pt")}
        limit = None
        if mounted.returncode == 0:
            fill(disk, leave=64 * 1024)  # room for the log's lines, not for a checkpoint
        else:
            limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))  # noqa: E731
        done = subprocess.run([sys.executable, *args, "run.max_steps=4"], cwd=ROOT, capture_output=True, text=True,
                              preexec_fn=limit)
        reason = "No space left on device (ENOSPC)" if limit is None else "File too large (EFBIG)"
        assert done.returncode == 2 and done.stderr.strip() == (
            f"error: cannot write to {out}: {reason}; the checkpoints already there are kept as they were"), done.stderr
        assert {name: (out / name).read_bytes() for name in before} == before
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(disk)], check=True)
