"""Finding and checking an ImageNet-layout dataset: ROOT/{train,val}/<class>/<image>
(the held-out folder is data.val_split: val, or test, validation as datasets ship it).

Both loaders read the same file list from here, so they agree on classes, labels and
order, and every layout mistake gets one clear line before any training starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bot.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
TOY_HINT = "python scripts/make_toy_data.py data/toy makes a small one"
CHECK_HINT = "scripts/check_dataset.py ROOT lists every bad file"


@dataclass
class Split:
    classes: list[str]
    files: list[str]  # absolute paths, sorted by class then name
    labels: list[int]
    hint = f" ({CHECK_HINT})"  # after a bad file's line: where to find the others

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, i: int) -> tuple[bytes, int]:
        """(the file's bytes, its label): what both loaders read, here or from a tar (bot.data.shards)."""
        path = self.files[i]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e.strerror}{self.hint}") from None
        if not data:
            raise UserError(f"cannot read image {path}: empty file{self.hint}")
        return data, self.labels[i]

    def name(self, i: int) -> str:
        return self.files[i]


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return list(it)


def _real(entry: os.DirEntry, parent: str) -> str:
    """The absolute path of an entry of the already resolved folder `parent`: only a symlink
    needs a resolve (a DirEntry says so without a stat), so 1.33 M files cost no syscall each."""
    return os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(parent, entry.name)


def scan_split(root: Path, split: str) -> Split:
    """ROOT/split/<class>/<image>, sorted by class then name, as absolute paths with symlinks resolved.

    os.scandir: a directory entry knows its name and type (d_type), so listing a class costs
    one getdents loop and no per-file stat or resolve (1.33 M files in seconds,
    scripts/bench_scan.py, docs/benchmarks.md).
    """
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"data folder {root} has no {split}/ folder (expected {split}/<class>/<image>)")
    class_dirs = {e.name: e for e in _entries(folder) if e.is_dir() and not e.name.startswith(".")}
    classes = sorted(class_dirs)
    if not classes:
        raise UserError(f"{folder} has no class subfolders (expected {split}/<class>/<image>)")
    files, labels = [], []
    for label, name in enumerate(classes):
        real = os.path.realpath(class_dirs[name].path)
        found = sorted((e for e in _entries(folder / name)
                        if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file()),
                       key=lambda e: e.name)
        if not found:
            raise UserError(f"class folder {folder / name} holds no images")
        files += [_real(e, real) for e in found]
        labels += [label] * len(found)
    return Split(classes, files, labels)


def missing_split(root: Path, split: str, option: str = "data.val_split=") -> str:
    """Why ROOT/split/ is not there, in one line: shards without their _info.json, or the
    held-out split under another of its usual names (and the `option` that reads it)."""
    tars = sorted(p.name for p in root.glob("*.tar"))
    if tars:
        return (f"data folder {root} holds shards ({tars[0]} ...) but no _info.json, which lists them: write it "
                f"with python scripts/make_shards.py --index {root}")
    others = [s for s in ("val", "validation", "test") if s != split and split != "train" and (root / s).is_dir()]
    has = f"; it has {others[0]}/, for {option}{others[0]}" if others else ""
    return f"data folder {root} has no {split}/ folder (expected {split}/<class>/<image>{has})"


def scan_val(root: Path, split: str) -> Split:
    """ROOT/<split>/ alone (evaluating a model needs no train/), or one line saying what is missing."""
    if not (root / split).is_dir():
        raise UserError(missing_split(root, split))
    return scan_split(root, split)


def dataset_root(root: str | None) -> Path:
    if not root:
        raise UserError(f"data.root is not set: give data.root=/path/to/data ({TOY_HINT})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"data.root {root} does not exist or is not a folder ({TOY_HINT})")
    return path


def on_rank_zero(scan, *args):
    """scan(*args) run by rank 0 alone and its result sent to every rank, when a process group is up.

    A broadcast rather than an index file cached in the run folder: nothing to invalidate
    (folder modification times miss files replaced in place, and lag on network storage),
    nothing written where a run might not have write access, and no race between ranks.
    The group is up by the time loaders are built (accelerate / torchrun). A UserError on
    rank 0 is raised on every rank with the same line, so none waits forever.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return scan(*args)
    box = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", scan(*args))
        except UserError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value


def scan_dataset(root: str | None, val_split: str = "val") -> tuple[Split, Split]:
    """(train, val) of a dataset root, the held-out split read from ROOT/<val_split>/, checked:
    both present, same classes, none empty.
    Scanned once per run: with several processes rank 0 scans and the others receive its list."""
    return on_rank_zero(_scan_dataset, root, val_split)


def _scan_dataset(root: str | None, val_split: str = "val") -> tuple[Split, Split]:
    path = dataset_root(root)
    for split in ("train", val_split):  # both before train/'s scan, which takes seconds on ImageNet
        if not (path / split).is_dir():
            raise UserError(missing_split(path, split))
    train, val = scan_split(path, "train"), scan_split(path, val_split)
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise UserError(f"train and {val_split} classes differ in {root}: only in train {only_train[:3]}, "
                        f"only in {val_split} {only_val[:3]}")
    return train, val
