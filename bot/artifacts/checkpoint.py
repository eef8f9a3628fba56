"""Checkpoints that survive a kill, and that are read without running anything in them.

Every checkpoint the project reads (last.pt on resume, and through bot/artifacts/trained.py the
files given to evaluate, predict, export, quantize, slim, model.init_from and the teacher)
goes through `load`: torch.load(weights_only=True), which unpickles tensors and plain Python
values only. A file whose pickle names anything else (os.system, a class of some package) is
refused with one line, and nothing in it runs: a checkpoint is input, often downloaded. The
only globals allowed beyond torch's own are numpy's array constructors, with which older
checkpoints pickled their RNG state; they build an array and call nothing else.

`last.pt` is replaced atomically and the one it replaces is kept as `last.prev.pt`, so a
kill at any moment, or a truncated file, still leaves a readable checkpoint to resume. A
write that fails for want of space or permission stops the run with one line (exit 2)
before anything is renamed: the checkpoints already there stay as they were.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import random
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from bot.errors import UserError

LAST, PREV, BEST = "last.pt", "last.prev.pt", "best.pt"
READ_FROM = "read_from"  # added by load_last, never saved: the file a resume read


# a full disk or quota, a file size limit (RLIMIT_FSIZE), a read-only file system, a folder the
# run may not write: the user's to fix
UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def unwritable(e: OSError, folder: Path) -> UserError:
    """The one line for a write into the run folder that failed for a reason the user must fix."""
    reason = os.strerror(e.errno) if e.errno else str(e)
    return UserError(f"cannot write to {folder}: {reason} ({errno.errorcode.get(e.errno, e.errno)}); "
                     f"the checkpoints already there are kept as they were")


class _Writes:
    """A file as torch.save sees it: write and flush only, so that torch writes through Python (to
    a real file it writes in C++). A full disk then raises OSError here, which is kept: torch may
    swallow it and fail later with RuntimeError("unexpected pos ..."), the errno lost."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_save(obj, path: Path, keep_previous: Path | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            writes = _Writes(f)
            try:
                torch.save(obj, writes)
            except Exception as e:
                raise writes.error or e
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:  # nothing renamed yet: path and keep_previous are untouched
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno in UNWRITABLE:
            raise unwritable(e, path.parent) from e
        raise
    if keep_previous is not None and path.exists():
        os.replace(path, keep_previous)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """A run folder's text file (summary.json, config.yaml, metrics.jsonl when rewritten) written
    aside, fsync'ed and renamed: a kill or a full disk leaves the old file whole, never an empty
    one, and no temporary file; a failure for want of space or permission is one line."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if e.errno in UNWRITABLE:
            raise unwritable(e, path.parent) from e
        raise


def save_last(state: dict, folder: Path, rotate: bool = True) -> None:
    """last.pt; the one it replaces becomes last.prev.pt unless `rotate` is False (the run
    resumed from last.prev.pt because last.pt was unreadable: that file must not replace it)."""
    atomic_save(state, folder / LAST, keep_previous=folder / PREV if rotate else None)


class Refused(UserError):
    """A file whose pickle would run code (or build objects other than tensors and plain values)."""


def _numpy_array_globals() -> list:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    # the key array of MT19937's state is uint32: its dtype's class is the one dtype rebuilt
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32))] + [(_reconstruct, f"{m}.multiarray._reconstruct") for m in ("numpy.core", "numpy._core")]


def foreign_kind(path: Path) -> str | None:
    """What a file that is no pickled checkpoint is, in words, from its first bytes; None otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        if head[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                return "a TorchScript model (scripts/export.py --format torchscript writes one), not a checkpoint"
        elif len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
            return "a safetensors file (bare weights, e.g. from scripts/export.py --format timm), not a checkpoint"
    except (OSError, zipfile.BadZipFile):
        return None
    return None


def load(path: Path, what: str = "checkpoint"):
    """What checkpoint `path` holds, read with torch.load(weights_only=True); a file that would
    run code when unpickled raises Refused (nothing in it ran), a TorchScript or safetensors file
    UserError saying what it is; a damaged file raises torch's own error."""
    kind = foreign_kind(path)
    if kind:
        raise UserError(f"{what} {path} is {kind}")
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise Refused(f"{what} {path} asks to run {found.group(1)} when loaded: refused, nothing in it ran "
                          f"(a checkpoint written by bot holds tensors and plain values only)") from None
        raise


def load_last(folder: Path) -> dict | None:
    """The newest readable resume checkpoint in `folder` (its file's name under READ_FROM), or
    None when there is none. A file that would run code is refused (exit 2), not skipped."""
    found = [folder / n for n in (LAST, PREV) if (folder / n).exists()]
    for path in found:
        try:
            state = load(path, "run.out")
            if not isinstance(state, dict) or "model" not in state:
                raise ValueError("not a training checkpoint")
        except Refused:
            raise
        except Exception as e:
            print(f"warning: {path} is unreadable ({type(e).__name__}); trying an older checkpoint",
                  file=sys.stderr)
            continue
        if path.name != LAST:
            print(f"warning: resuming from {path} (step {state.get('step')})", file=sys.stderr)
        return state | {READ_FROM: path.name}
    if found:
        raise UserError(f"no readable checkpoint in {folder} ({', '.join(p.name for p in found)} are damaged); "
                        f"move them away to start afresh")
    return None


def rng_states() -> dict:
    """The generators of this process. CUDA: the current device's state only, so that a run
    may resume with another number of visible GPUs (docs/distributed.md): each process
    draws on its own device, and `get_rng_state_all` would save one state per visible GPU.
    numpy's key array is stored as a list of ints: a checkpoint holds tensors and plain values only."""
    kind, keys, *rest = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, keys.tolist(), *rest), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    cuda = states["cuda"]
    if cuda is None or (isinstance(cuda, (list, tuple)) and not cuda) or not torch.cuda.is_available():
        return
    if isinstance(cuda, (list, tuple)):  # an older checkpoint: one state per GPU visible then
        index = torch.cuda.current_device()
        cuda = cuda[index] if index < len(cuda) else cuda[0]
    torch.cuda.set_rng_state(cuda)
