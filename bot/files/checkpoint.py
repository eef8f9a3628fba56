"""Checkpoints that survive a kill: written to a temporary file, then renamed.

`last.pt` is replaced atomically and the one it replaces is kept as `last.prev.pt`, so a
kill at any moment, or a truncated file, still leaves a readable checkpoint to resume. A
write that fails for want of space or permission stops the run with one line (exit 2)
before anything is renamed: the checkpoints already there stay as they were.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from bot.errors import UserError

LAST, PREV, BEST = "last.pt", "last.prev.pt", "best.pt"


# a full disk or quota, a read-only file system, a folder the run may not write: the user's to fix
UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def unwritable(e: OSError, folder: Path) -> UserError:
    """The one line for a write into the run folder that failed for a reason the user must fix."""
    reason = os.strerror(e.errno) if e.errno else str(e)
    return UserError(f"cannot write to {folder}: {reason} ({errno.errorcode.get(e.errno, e.errno)}); "
                     f"the checkpoints already there are kept as they were")


def atomic_save(obj, path: Path, keep_previous: Path | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # nothing renamed yet: path and keep_previous are untouched
        with contextlib.suppress(OSError):
            tmp.unlink()
        if e.errno in UNWRITABLE:
            raise unwritable(e, path.parent) from e
        raise
    if keep_previous is not None and path.exists():
        os.replace(path, keep_previous)
    os.replace(tmp, path)


def save_last(state: dict, folder: Path) -> None:
    atomic_save(state, folder / LAST, keep_previous=folder / PREV)


def load_last(folder: Path) -> dict | None:
    """The newest readable resume checkpoint in `folder`, or None when there is none."""
    found = [folder / n for n in (LAST, PREV) if (folder / n).exists()]
    for path in found:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "model" not in state:
                raise ValueError("not a training checkpoint")
        except Exception as e:
            print(f"warning: {path} is unreadable ({type(e).__name__}); trying an older checkpoint",
                  file=sys.stderr)
            continue
        if path.name != LAST:
            print(f"warning: resuming from {path} (step {state.get('step')})", file=sys.stderr)
        return state
    if found:
        raise UserError(f"no readable checkpoint in {folder} ({', '.join(p.name for p in found)} are damaged); "
                        f"move them away to start afresh")
    return None


def rng_states() -> dict:
    """The generators of this process. CUDA: the current device's state only, so that a run
    may resume with another number of visible GPUs (docs/distributed.md): each process
    draws on its own device, and `get_rng_state_all` would save one state per visible GPU."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
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
