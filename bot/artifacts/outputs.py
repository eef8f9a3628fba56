"""Where an after-training command writes: never over what it reads or what a run owns.

The rule for predict's CSV, evaluate's per-class CSV, export, quantize and slim:
- an output path that is one of the command's inputs, a checkpoint, or a file of a run
  folder that the command does not itself produce (config.yaml, metrics.jsonl,
  summary.json, last.pt, best.pt ...) is refused with one line (UserError, exit 2);
- a command may replace its own earlier output of the same kind (a rerun, a second export):
  an existing file is replaced only when it reads as such an output, so no --force is needed;
- the path is checked before the work starts: its folder exists and takes a new file, the
  path is not a folder;
- the file is written aside and renamed once complete (`written_aside`), so a failure leaves
  the earlier output as it was and no temporary file; a full disk, a quota, a file-size limit
  or a read-only file system met on the way is one line (UserError, exit 2). Commands
  serialise a model into memory and write the bytes here (`write_bytes`): torch's own file
  writer, met by a full disk, raises "unexpected pos" or aborts the interpreter.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

from bot.errors import UserError
from bot.artifacts.checkpoint import BEST, LAST, PREV, UNWRITABLE, foreign_kind

# what the trainer writes into a run folder; no other command may replace them
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", LAST, PREV, BEST)


def is_run_folder(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES)


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline()
    except (OSError, UnicodeDecodeError):
        return ""


def text_starting(prefix: str) -> Callable[[Path], bool]:
    """An output recognised by its first line (a CSV header, a table's head)."""
    return lambda path: _first_line(path).startswith(prefix)


def onnx_file(path: Path) -> bool:
    """An ONNX model: a protobuf whose first field is ir_version (tag byte 0x08)."""
    try:
        with open(path, "rb") as f:
            return path.suffix == ".onnx" and f.read(1) == b"\x08"
    except OSError:
        return False


def torchscript_file(path: Path) -> bool:
    return (foreign_kind(path) or "").startswith("a TorchScript")


def safetensors_file(path: Path) -> bool:
    return (foreign_kind(path) or "").startswith("a safetensors")


def bare_state_dict(path: Path) -> bool:
    """A torch file holding tensors under names only (export's timm .pth), no bot checkpoint."""
    from bot.artifacts.checkpoint import load

    try:
        obj = load(path)
    except Exception:
        return False
    import torch

    return isinstance(obj, dict) and "model" not in obj and all(isinstance(v, torch.Tensor) for v in obj.values())


def json_of(test: Callable[[object], bool]) -> Callable[[Path], bool]:
    def check(path: Path) -> bool:
        try:
            return test(json.loads(path.read_text()))
        except (OSError, ValueError):
            return False
    return check


def _is_torch_archive(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_writable(folder: Path, what: str) -> None:
    """UserError unless a new file can be made in `folder` (tried, then removed)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        name = errno.errorcode.get(e.errno, e.errno)
        raise UserError(f"{what}: cannot write to {folder}: {os.strerror(e.errno) if e.errno else e} ({name})") from None


def check_output(path: str | Path, what: str, kind: str, own: Callable[[Path], bool],
                 inputs: Iterable[Path] = ()) -> Path:
    """`path` if this command may write there (see the module's rule), else UserError.

    `what` names the argument (e.g. "--out"); `kind` says in words what the command writes
    (e.g. "predictions CSV"); `own(path)` tells an earlier output of that kind; `inputs`: the
    files this command reads."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: give a file name for the {kind}")
    if any(_same_file(path, i) for i in inputs):
        raise UserError(f"{what} {path} is one of this command's inputs: it would be overwritten")
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"{what} {path}: folder {folder} does not exist")
    if (path.exists() or path.is_symlink()) and not own(path):
        if path.name in RUN_FILES and is_run_folder(folder):
            raise UserError(f"{what} {path} is the training run's {path.name}: choose another name")
        found = "a checkpoint" if _is_torch_archive(path) and not bare_state_dict(path) else "a file"
        raise UserError(f"{what} {path} is {found} this command did not write (not a {kind}): "
                        f"move it away or choose another name")
    check_writable(folder, what)
    return path


def cannot_write(e: OSError, paths) -> UserError:
    """The one line for outputs `paths` that could not be written for a reason in UNWRITABLE."""
    names = " and ".join(str(p) for p in paths)
    return UserError(f"cannot write {names}: {os.strerror(e.errno)} ({errno.errorcode.get(e.errno, e.errno)}); "
                     f"nothing was written or replaced")


@contextmanager
def written_aside(*paths: Path):
    """Temporary names for `paths` (the suffix stays last: timm reads a file by its suffix);
    renamed over `paths` when the block succeeds, removed when it raises. An UNWRITABLE
    failure becomes cannot_write's line."""
    tmps = [p.with_name(p.stem + ".tmp" + p.suffix) for p in paths]
    try:
        yield tmps
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
    except BaseException as e:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in UNWRITABLE:
            raise cannot_write(e, paths) from None
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """`data` as a new file `path` (a name from written_aside), fsync'ed so that a disk that
    fills only when the data is flushed fails here, before the rename. It gets the process's
    usual mode (0666 less the umask), as any new file."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_files(files: dict[Path, bytes]) -> None:
    """Each path's bytes, all written aside before any is renamed: a failed write replaces none."""
    with written_aside(*files) as tmps:
        for tmp, data in zip(tmps, files.values()):
            write_bytes(tmp, data)


@contextmanager
def made_folder(path: Path):
    """`path` made (with its missing parents) for the block to write into; what was made is
    removed again when the block raises, so a failure leaves no empty folder."""
    made = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        yield path
    except BaseException as e:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(e, OSError) and e.errno in UNWRITABLE:
            raise cannot_write(e, [path]) from None
        raise


def write_text(path: Path, text: str) -> None:
    """`text` into `path`, written aside and renamed: a failure leaves the earlier file."""
    try:
        with written_aside(path) as (tmp,):
            write_bytes(tmp, text.encode())
    except OSError as e:
        raise UserError(f"cannot write {path}: {os.strerror(e.errno) if e.errno else e}") from None
