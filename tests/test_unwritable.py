"""A run folder that cannot take a checkpoint (disk full, read-only, no permission) stops the
run with one line naming the folder and the reason, and the checkpoint already there stays
intact and loadable. The failure is simulated: the write starts, then fails as the OS would.
"""

import errno
import os

import pytest
import torch

import bot.files.checkpoint
from bot import config
from bot.errors import UserError
from bot.files import checkpoint
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

    monkeypatch.setattr(bot.files.checkpoint.torch, "save", save_then_fail)
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
