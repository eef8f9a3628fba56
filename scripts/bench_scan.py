"""Time the dataset scan on an ImageNet-sized tree of empty files, the old scan beside the new,
and opening an ImageNet-sized shard set beside them.

    python scripts/bench_scan.py                       # 1,000 classes x 1,330 files = 1.33 M
    python scripts/bench_scan.py --classes 100 --files 100
    python scripts/bench_scan.py --shards 1024 --samples 1281167   # the shard set's size (the default)

Makes ROOT/{train,val}/<class>/<n>.JPEG in a temporary folder (val: one file per class),
scans it with each function (warm cache: the tree was just written), prints a table and
removes the tree. Empty files are enough: a scan reads folders, never images. The shard
set is its _info.json alone (timm's layout, the train and validation splits of the hub's
imagenet-1k-wds), which is all that opening a shard folder reads (bot/data/shards.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bot.data.folder import IMAGE_SUFFIXES, Split, scan_split  # noqa: E402
from bot.data.shards import INFO, open_shards  # noqa: E402
from bot.errors import UserError  # noqa: E402


def old_scan_split(root: Path, split: str) -> Split:
    """The scan before os.scandir (pathlib: a stat per file for is_file and a resolve per file), kept to compare."""
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


def make_tree(root: Path, classes: int, files: int) -> None:
    for split, n in (("train", files), ("val", 1)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"n{c:08d}_{i}.JPEG").touch()
            if split == "train" and c % max(1, classes // 20) == 0:
                print(f"\rmaking the tree: {c + 1}/{classes} classes", end="", flush=True)
    print()


def write_info(root: Path, shards: int, samples: int) -> None:
    """An _info.json of `shards` train shards holding `samples`, and 64 validation shards of 50,000."""
    def split(name: str, count: int, n: int) -> dict:
        lengths = [n // count + (k < n % count) for k in range(count)]
        return {"name": name, "num_samples": n, "filenames": [f"imagenet1k-{name}-{k:04d}.tar" for k in range(count)],
                "shard_lengths": lengths}
    info = {"name": "imagenet-1k", "classes": [f"n{c:08d}" for c in range(1000)],
            "splits": {"train": split("train", shards, samples), "validation": split("validation", 64, 50_000)}}
    (root / INFO).write_text(json.dumps(info))


def time_open_shards(root: Path, shards: int, samples: int) -> float:
    write_info(root, shards, samples)
    start = time.perf_counter()
    train, _ = open_shards(root)
    seconds = time.perf_counter() - start
    assert len(train) == samples and len(train.filenames) == shards
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--files", type=int, default=1330, help="training files per class")
    ap.add_argument("--shards", type=int, default=1024, help="training shards of the shard set opened")
    ap.add_argument("--samples", type=int, default=1_281_167, help="training samples of the shard set opened")
    ap.add_argument("--dir", default=None, help="where to make the temporary tree (default: the system's temp folder)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_scan_", dir=args.dir))
    try:
        make_tree(root, args.classes, args.files)
        rows = []
        for name, scan in (("old (pathlib, stat + resolve per file)", old_scan_split), ("new (os.scandir)", scan_split)):
            start = time.perf_counter()
            split = scan(root, "train")
            rows.append((name, time.perf_counter() - start, split))
        assert rows[0][2] == rows[1][2], "the two scans disagree"
        print(f"{len(rows[0][2]):,} files in {args.classes:,} class folders, train split, warm cache")
        print(f"{'scan':<40} {'seconds':>8}")
        for name, seconds, _ in rows:
            print(f"{name:<40} {seconds:8.2f}")
        print(f"speed-up: {rows[0][1] / rows[1][1]:.1f}x")
        (root / "shards").mkdir()
        seconds = time_open_shards(root / "shards", args.shards, args.samples)
        print(f"{'open a shard set (_info.json: ' + f'{args.shards:,} shards, {args.samples:,} samples)':<40} "
              f"{seconds:8.3f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
