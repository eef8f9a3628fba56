"""Sort the official ImageNet val images into class folders, from a ground truth file you supply.

    python scripts/prepare_imagenet.py VAL_DIR LABELS --out ROOT/val [--mode symlink|copy|move]
                                       [--synsets FILE] [--train ROOT/train]

VAL_DIR holds the 50,000 flat files of ILSVRC2012_img_val.tar (ILSVRC2012_val_00000001.JPEG
...). LABELS is one of:
- Kaggle's LOC_val_solution.csv: `ImageId,PredictionString`, the first word of the
  prediction string being the class (wnid);
- a two-column text file `<image name> <wnid>` (comma or whitespace separated; the name
  with or without .JPEG), as many ImageNet mirrors ship it;
- the devkit's ILSVRC2012_validation_ground_truth.txt (one ILSVRC2012_ID, 1-1000, per
  line, in file order) together with --synsets: a text file of the 1000 wnids in
  ILSVRC2012_ID order, or the devkit's data/meta.mat (read with scipy, if installed).
Writes ROOT/val/<wnid>/<image> (symlinks by default: the originals stay where they are).
With --train, checks that val's classes are train's. The same folder serves both
loaders (data.backend dali or torch); docs/data.md has the whole procedure.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import sys
from pathlib import Path

WNID = re.compile(r"^n\d{8}$")


class Bad(Exception):
    """A problem with the user's files: one line, exit status 2."""


def read_synsets(path: Path) -> list[str]:
    """The wnids in ILSVRC2012_ID order (ID 1 first)."""
    if path.suffix == ".mat":
        try:
            from scipy.io import loadmat
        except ImportError:
            raise Bad(f"{path}: reading meta.mat needs scipy; give --synsets a text file of wnids instead") from None
        rows = loadmat(str(path), squeeze_me=True)["synsets"]
        pairs = sorted((int(r["ILSVRC2012_ID"]), str(r["WNID"])) for r in rows if int(r["num_children"]) == 0)
        return [wnid for _, wnid in pairs]
    wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not all(WNID.match(w) for w in wnids):
        raise Bad(f"{path}: expected one wnid (n01440764 ...) per line")
    return wnids


def read_labels(path: Path, images: list[str], synsets: Path | None) -> dict[str, str]:
    """{image file name: wnid} from any of the supported ground truth formats."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise Bad(f"{path} is empty")
    stems = {Path(name).stem: name for name in images}
    if all(line.strip().isdigit() for line in lines[:10]):  # devkit ground truth: IDs in file order
        if synsets is None:
            raise Bad(f"{path} holds class numbers (the devkit's ground truth): give --synsets "
                      "(a text file of wnids in ILSVRC2012_ID order, or the devkit's data/meta.mat)")
        wnids = read_synsets(synsets)
        ordered = sorted(images)
        if len(lines) != len(ordered):
            raise Bad(f"{path} has {len(lines)} labels for {len(ordered)} images")
        try:
            return {name: wnids[int(line) - 1] for name, line in zip(ordered, lines)}
        except IndexError:
            raise Bad(f"{path}: a class number is outside 1..{len(wnids)}") from None
    labels = {}
    rows = csv.reader(lines) if "," in lines[0] else (line.split() for line in lines)
    for row in rows:
        if len(row) < 2 or row[0] == "ImageId":
            continue
        stem, wnid = Path(row[0].strip()).stem, row[1].split()[0] if row[1].split() else ""
        if not WNID.match(wnid):
            raise Bad(f"{path}: {wnid!r} for {row[0]} is not a wnid (n01440764 ...)")
        if stem in stems:
            labels[stems[stem]] = wnid
    return labels


def place(src: Path, dst: Path, mode: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if mode == "symlink":
        dst.symlink_to(src.resolve())
    elif mode == "copy":
        shutil.copy2(src, dst)
    else:
        shutil.move(str(src), str(dst))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("val_dir", type=Path, help="the flat folder of ILSVRC2012_val_*.JPEG")
    p.add_argument("labels", type=Path, help="LOC_val_solution.csv, '<name> <wnid>' lines, or the devkit's file")
    p.add_argument("--out", type=Path, required=True, help="the val folder to write: ROOT/val")
    p.add_argument("--mode", choices=["symlink", "copy", "move"], default="symlink")
    p.add_argument("--synsets", type=Path, help="wnids in ILSVRC2012_ID order (text) or the devkit's meta.mat")
    p.add_argument("--train", type=Path, help="ROOT/train, to check that the classes agree")
    a = p.parse_args(argv)
    try:
        if not a.val_dir.is_dir():
            raise Bad(f"{a.val_dir} is not a folder")
        if not a.labels.is_file():
            raise Bad(f"{a.labels} not found")
        images = sorted(f.name for f in a.val_dir.iterdir() if f.is_file() and f.suffix.lower() in (".jpeg", ".jpg"))
        if not images:
            raise Bad(f"{a.val_dir} holds no .JPEG files")
        labels = read_labels(a.labels, images, a.synsets)
        missing = [name for name in images if name not in labels]
        if missing:
            raise Bad(f"{len(missing)} of {len(images)} images have no label in {a.labels} (first: {missing[0]})")
        classes = sorted(set(labels.values()))
        if a.train is not None:
            train = sorted(d.name for d in a.train.iterdir() if d.is_dir()) if a.train.is_dir() else []
            if train != classes:
                only = sorted(set(classes) ^ set(train))
                raise Bad(f"val classes ({len(classes)}) differ from {a.train} ({len(train)}): {only[:3]} ...")
        for name in images:
            place(a.val_dir / name, a.out / labels[name] / name, a.mode)
    except (Bad, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.mode}: {len(images)} images into {len(classes)} class folders under {a.out}")
    if len(images) != 50000 or len(classes) != 1000:
        print("note: ImageNet-1k val has 50000 images in 1000 classes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
