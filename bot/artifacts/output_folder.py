"""A folder that an after-training command writes as a whole (export's hub folder), under
the rule of bot/artifacts/outputs.py:

- a training run's folder, a folder holding one of the command's inputs, or a folder that
  holds anything but an earlier output of the same kind is refused with one line
  (UserError, exit 2); an empty folder or a new name is taken;
- an earlier output of the same kind is replaced (a second export), so no --force is needed;
- the path is checked before the work starts: its parent exists and takes a new entry;
- the folder is written aside (a hidden sibling) and swapped in once complete
  (`folder_written_aside`), so a failure leaves the earlier folder as it was and nothing else,
  and a full disk is one line.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

from bot.errors import UserError
from bot.artifacts.checkpoint import UNWRITABLE
from bot.artifacts.outputs import cannot_write, check_writable, is_run_folder


def _inside(file: Path, folder: Path) -> bool:
    try:
        return file.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def check_output_folder(path: str | Path, what: str, kind: str, own: Callable[[Path], bool],
                        inputs: Iterable[Path] = ()) -> Path:
    """`path` if this command may write its folder there, else UserError.

    `what` names the argument (e.g. "--out"); `kind` says in words what the folder is (e.g.
    "hub folder"); `own(path)` tells an earlier output of that kind; `inputs`: the files this
    command reads."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file: give a folder for the {kind}")
    if path.is_dir() and is_run_folder(path):
        raise UserError(f"{what} {path} is a training run's folder: choose a new folder for the {kind}")
    if any(_inside(i, path) for i in inputs):
        raise UserError(f"{what} {path} holds this command's input: choose a new folder for the {kind}")
    if path.is_dir() and any(path.iterdir()) and not own(path):
        raise UserError(f"{what} {path} holds files this command did not write (not a {kind}): "
                        f"move them away or choose a new folder")
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path}: folder {parent} does not exist")
    check_writable(parent, what)
    return path


@contextmanager
def folder_written_aside(path: Path):
    """A new hidden folder beside `path` to fill; it replaces `path` when the block succeeds
    (the earlier folder is moved aside, then removed) and is removed when the block raises.
    A full disk or another UNWRITABLE failure becomes one line (bot/artifacts/outputs.py)."""
    umask = os.umask(0)
    os.umask(umask)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; the export is as any new folder
        yield tmp
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in UNWRITABLE:
            raise cannot_write(e, [path]) from None
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.replace(path, old / path.name)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
