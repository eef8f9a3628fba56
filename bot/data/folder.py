"""Finding and checking an ImageNet-layout dataset: ROOT/{train,val}/<class>/<image>.

Both loaders read the same file list from here, so they agree on classes, labels and
order, and every layout mistake gets one clear line before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
TOY_HINT = "python scripts/make_toy_data.py data/toy makes a small one"


@dataclass
class Split:
    classes: list[str]
    files: list[str]  # absolute paths, sorted by class then name
    labels: list[int]

    def __len__(self) -> int:
        return len(self.files)


def scan_split(root: Path, split: str) -> Split:
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"data folder {root} has no {split}/ folder (expected {split}/<class>/<image>)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{folder} has no class subfolders (expected {split}/<class>/<image>)")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise UserError(f"class folder {folder / name} holds no images")
        files += [str(p.resolve()) for p in found]
        labels += [label] * len(found)
    return Split(classes, files, labels)


def dataset_root(root: str | None) -> Path:
    if not root:
        raise UserError(f"data.root is not set: give data.root=/path/to/data ({TOY_HINT})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"data.root {root} does not exist or is not a folder ({TOY_HINT})")
    return path


def scan_dataset(root: str | None) -> tuple[Split, Split]:
    """(train, val) of a dataset root, checked: both present, same classes, none empty."""
    path = dataset_root(root)
    train, val = scan_split(path, "train"), scan_split(path, "val")
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise UserError(f"train and val classes differ in {root}: only in train {only_train[:3]}, "
                        f"only in val {only_val[:3]}")
    return train, val
