"""Write a dataset as WebDataset tar shards: `bot-make-shards SRC OUT` (scripts/make_shards.py).

    bot-make-shards /data/imagenet /data/imagenet-wds                 # an ImageNet-layout folder
    bot-make-shards /data/hf-imagenet /data/imagenet-wds --shard-mb 128  # a Hugging Face dataset
    bot-make-shards data/cifar10 data/cifar10-wds --val-split test     # held out as test/, not val/
    bot-make-shards --index /data/imagenet-1k-wds                      # index files for shards from elsewhere

SRC is what data.root takes (ROOT/{train,val}/<class>/<image>) or a local Hugging Face
dataset: a `datasets.save_to_disk` folder of a DatasetDict, or a folder of parquet files
named by split (train-*.parquet, validation-*.parquet), with an image and a label column.
--val-split names the held-out split (data.val_split: val by default, test for CIFAR).
OUT gets the layout of timm and of the hub's `timm/imagenet-1k-wds` (bot/data/shards.py):
{train,validation}-NNNNNN.tar with KEY.jpg (the image's bytes as they are, the extension
of its format) + KEY.cls per sample, a DALI index NNNNNN.idx beside each tar, and
`_info.json` (timm's splits, plus the class names). The held-out split is written as
"validation" (timm's name) when it is val or validation, else under its own name (test),
so the same data.val_split reads SRC and OUT. Samples are shuffled at write time with
--seed (--no-shuffle keeps the source's label order). A run that stops (Ctrl-C, a lost
node) continues where it stopped when started again with the same arguments: a shard is
finished when its index file exists, and `_make_shards.json` records what is written.
OUT is new, empty or such a folder of this command's: not SRC, nor a folder inside SRC or
holding it, nor one with other files (an ImageNet folder, a run folder), which an
`_info.json` would turn into a shard folder for data.root.

`--index FOLDER` writes the index files a shard folder lacks, and its `_info.json` where it
has none (a folder of train-*.tar made elsewhere): each tar's split is the last word of its
name before the shard number (train-000000.tar, imagenet-val-0001.tar), its sample count
read from its tar headers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bot.cli import command_parser
from bot.cli.progress import Progress
from bot.data.shards import CLASSES, INFO, VAL_SPLITS, index_path, index_tar, read_index, val_splits
from bot.data.shards import read_info, write_index
from bot.errors import UserError, one_line

PLAN = "_make_shards.json"
CACHE = ".hf-cache"  # datasets' arrow copy of parquet files, while OUT is written
MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"),
         (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))


def image_ext(data: bytes) -> str:
    """The extension of an image's format, from its first bytes (an ImageNet .JPEG may be a PNG)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in MAGIC if data.startswith(magic)), "jpg")


# ---------------------------------------------------------------- sources


class FolderSource:
    """One split of an ImageNet-layout folder, in its order (class, then file name)."""

    def __init__(self, split):
        self.split, self.classes = split, split.classes

    def __len__(self) -> int:
        return len(self.split)

    def key(self, i: int) -> str:
        path = Path(self.split.files[i])
        stem, cls = path.name.split(".", 1)[0], self.classes[self.split.labels[i]]
        key = stem if stem.startswith(cls) else f"{cls}_{stem}"  # ImageNet's n01440764_10026 stays
        return key.replace(".", "_")  # WebDataset's key ends at the first dot

    def label(self, i: int) -> int:
        return self.split.labels[i]

    def size(self, i: int) -> int:
        return os.path.getsize(self.split.files[i])

    def read(self, i: int) -> bytes:
        return self.split.sample(i)[0]


class HFSource:
    """One split of a Hugging Face dataset: the image column's bytes, as stored, and the label."""

    def __init__(self, ds, name: str, image: str, label: str):
        import datasets

        missing = [c for c in (image, label) if c not in ds.column_names]
        if missing:
            raise UserError(f"the {name} split has no column {missing[0]} (it has {ds.column_names}): "
                            f"give --image-column / --label-column")
        feature = ds.features[label]
        self.classes = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        self.ds = ds.select_columns([image, label]).cast_column(image, datasets.Image(decode=False))
        self.name, self.image, self.label_column = name, image, label

    def __len__(self) -> int:
        return len(self.ds)

    def key(self, i: int) -> str:
        return f"{self.name}_{i:08d}"

    def label(self, i: int) -> int:
        return int(self.ds[i][self.label_column])

    def size(self, i: int) -> int:
        return len(self.read(i))

    def read(self, i: int) -> bytes:
        value = self.ds[i][self.image]
        if value.get("bytes"):
            return value["bytes"]
        with open(value["path"], "rb") as f:  # a dataset that stores local paths
            return f.read()


def held_out_name(val_split: str) -> str:
    """The held-out split's name in OUT: timm's "validation" for val, else its own (test)."""
    return "validation" if val_split in VAL_SPLITS else val_split


def open_source(src: Path, image: str, label: str, cache: Path, val_split: str = "val") -> dict:
    """{name in OUT: source} for train and the held-out split `val_split`, and the class names."""
    from bot.data.folder import missing_split, scan_dataset

    held_out = held_out_name(val_split)
    if (src / "train").is_dir() and (src / val_split).is_dir() and not (src / "dataset_dict.json").is_file():
        train, val = scan_dataset(str(src), val_split)
        return {"train": FolderSource(train), held_out: FolderSource(val)}
    saved = (src / "dataset_dict.json").is_file()
    files = [] if saved else sorted(src.rglob("*.parquet"))
    if not saved and not files and (src / "train").is_dir():  # a folder without its held-out folder
        raise UserError(missing_split(src, val_split, "--val-split "))
    if not saved and not files:
        raise UserError(f"{src} is neither an ImageNet-layout folder (train/, {val_split}/), a save_to_disk folder "
                        f"(dataset_dict.json) nor a folder of parquet files")
    import datasets

    names = ("train", *val_splits(val_split))
    if saved:
        dd = datasets.load_from_disk(str(src))
    else:
        by_split = {n: [str(f) for f in files if f.name.startswith(n)] for n in names}
        dd = datasets.load_dataset("parquet", data_files={k: v for k, v in by_split.items() if v},
                                   cache_dir=str(cache))
    val = next((n for n in names[1:] if n in dd), None)
    if "train" not in dd or val is None:
        raise UserError(f"{src} needs a train and a {' or '.join(names[1:])} split (it has {sorted(dd)})")
    return {"train": HFSource(dd["train"], "train", image, label), held_out: HFSource(dd[val], held_out, image, label)}


# ---------------------------------------------------------------- the plan


def plan_split(source, name: str, seed: int, shuffle: bool, shard_samples: int, shard_mb: float | None):
    """[(file name, [source indices])] of one split: the write order cut into shards."""
    n = len(source)
    salt = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    order = np.random.default_rng([seed, salt]).permutation(n) if shuffle else np.arange(n)
    shards, current, current_bytes = [], [], 0
    for i in order.tolist():
        size = source.size(i) if shard_mb else 0
        if current and (len(current) >= shard_samples if not shard_mb else current_bytes + size > shard_mb * 2**20):
            shards.append(current)
            current, current_bytes = [], 0
        current.append(i)
        current_bytes += size
    if current:
        shards.append(current)
    return [(f"{name}-{k:06d}.tar", idx) for k, idx in enumerate(shards)]


def write_shard(source, indices: list[int], out: Path, classes: int, bar) -> None:
    """One tar (written aside, then renamed) and, last, its index: the index marks it finished."""
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            for i in indices:
                data, label, key = source.read(i), source.label(i), source.key(i)
                if not 0 <= label < classes:
                    raise UserError(f"sample {key} has label {label}, outside the {classes} classes")
                for ext, payload in ((image_ext(data), data), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mode, info.mtime = len(payload), 0o444, 0
                    tar.addfile(info, _Bytes(payload))
                bar.update(1)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a rerun writes the shard again, whole
        raise
    samples = index_tar(tmp)
    os.replace(tmp, out)
    write_index(samples, index_path(out))


class _Bytes:
    """A file-like view of bytes for tarfile.addfile."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.pos + size
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def check_folders(src: Path, out: Path) -> None:
    """Refuse an OUT that is not the shards' own folder, before anything is written: SRC itself,
    a folder inside SRC or holding it, or one with files that this command did not write (no
    PLAN): there `_info.json` would make data.root read the shards instead of what it held."""
    source, target = src.resolve(), out.resolve()
    if not source.is_dir():
        raise UserError(f"SRC {src} does not exist or is not a folder")
    if target == source:
        raise UserError(f"OUT {out} is SRC: give the shards a folder of their own")
    if source in target.parents:
        raise UserError(f"OUT {out} is inside SRC {src}: give the shards a folder outside it")
    if target in source.parents:
        raise UserError(f"SRC {src} is inside OUT {out}: give the shards a folder of their own")
    if target.exists() and not target.is_dir():
        raise UserError(f"OUT {out} is a file, not a folder")
    if target.is_dir() and not (target / PLAN).is_file():
        held = sorted(p.name for p in target.iterdir() if p.name != CACHE)
        if any(p.endswith((".tar", ".idx")) or p == INFO for p in held):
            raise UserError(f"{out} already holds shards not written by this command: give an empty folder")
        if held:
            raise UserError(f"OUT {out} is not empty and was not written by this command (it holds {held[0]}, "
                            f"not {PLAN}): give a new or empty folder")


def first_missing(folder: Path) -> Path | None:
    """The topmost folder of `folder`'s path that does not exist yet (what mkdir -p would make)."""
    missing = None
    for path in [folder, *folder.parents]:
        if path.exists():
            return missing
        missing = path
    return missing


def make_shards(src: Path, out: Path, seed: int = 0, shuffle: bool = True, shard_samples: int = 1250,
                shard_mb: float | None = None, image: str = "image", label: str = "label", progress: bool = True,
                val_split: str = "val") -> dict:
    """Write OUT from SRC (see the module's docstring); returns the _info.json written. A run that
    stops before its first shard is finished leaves no folder it made, and no PLAN."""
    check_folders(src, out)
    made = first_missing(out.resolve())
    out.mkdir(parents=True, exist_ok=True)
    try:
        return write_shards(src, out, seed, shuffle, shard_samples, shard_mb, image, label, progress, val_split)
    except BaseException:
        if not any(p.suffix == ".idx" for p in out.iterdir()):  # no shard finished: nothing to resume
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            else:  # OUT was there, empty or with the cache of an earlier run, which a rerun reuses
                (out / PLAN).unlink(missing_ok=True)
        raise


def write_shards(src: Path, out: Path, seed: int, shuffle: bool, shard_samples: int, shard_mb: float | None,
                 image: str, label: str, progress: bool, val_split: str) -> dict:
    sources = open_source(src, image, label, out / CACHE, val_split)
    classes = sources["train"].classes
    if classes is None:
        raise UserError(f"the label column {label} of {src} is not a ClassLabel: its class names are unknown")
    plans = {name: plan_split(s, name, seed, shuffle, shard_samples, shard_mb) for name, s in sources.items()}
    record = {"source": str(src.resolve()), "seed": seed, "shuffle": shuffle, "shard_samples": shard_samples,
              "shard_mb": shard_mb, "plan": hashlib.sha256(json.dumps(
                  {n: [(f, [sources[n].key(i) for i in idx]) for f, idx in p] for n, p in plans.items()}).encode()
              ).hexdigest()}
    if (out / PLAN).is_file():
        if json.loads((out / PLAN).read_text()) != record:
            raise UserError(f"{out} holds shards written from another source or with other settings "
                            f"({out / PLAN}): give an empty folder")
    else:  # checked by check_folders: OUT holds nothing else
        (out / PLAN).write_text(json.dumps(record, indent=1) + "\n")
    total = sum(len(idx) for p in plans.values() for _, idx in p)
    with Progress(total, f"shards -> {out}", "img", enabled=progress) as bar:
        for name, plan in plans.items():
            for filename, indices in plan:
                if index_path(out / filename).is_file():  # finished by an earlier run
                    bar.update(len(indices))
                    continue
                write_shard(sources[name], indices, out / filename, len(classes), bar)
    info = {"name": src.resolve().name, "classes": list(classes), "splits": {
        name: {"name": name, "num_samples": sum(len(i) for _, i in plan), "filenames": [f for f, _ in plan],
               "shard_lengths": [len(i) for _, i in plan]} for name, plan in plans.items()}}
    tmp = out / (INFO + ".tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, out / INFO)
    shutil.rmtree(out / CACHE, ignore_errors=True)  # parquet sources: datasets' arrow copy
    return info


def split_of(tar: str) -> str:
    """A shard's split, from its name: the last word before the shard number (train-000000.tar,
    imagenet1k-validation-0003.tar, imagenet-val-000001.tar)."""
    words = re.split(r"[-_]", re.sub(r"[-_]?\d+$", "", tar.split(".", 1)[0]))
    if not words[-1]:
        raise UserError(f"cannot tell the split of shard {tar} from its name: name shards SPLIT-NNNNNN.tar "
                        f"(train-000000.tar, validation-000000.tar)")
    return words[-1]


def shard_length(tar: Path) -> tuple[int, bool]:
    """(samples in TAR, whether its index file was written now): the index is read where it
    exists, else the tar's headers are, and the index written."""
    if index_path(tar).is_file():
        return len(read_index(index_path(tar))), False
    samples = index_tar(tar)
    write_index(samples, index_path(tar))
    return len(samples), True


def shard_lengths(tars: list[Path], workers: int) -> list[tuple[int, bool]]:
    """shard_length of each tar, in processes: a tar's headers are a read every few hundred KiB,
    so 1,024 shards take minutes in one process, on a network disk more."""
    workers = max(1, min(workers, len(tars)))
    chunk = max(1, min(16, len(tars) // (4 * workers)))
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(Progress(len(tars), "index", "shard", enabled=len(tars) >= 64))
        pool = None if workers == 1 else stack.enter_context(
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")))
        out = []
        for counted in pool.map(shard_length, tars, chunksize=chunk) if pool else map(shard_length, tars):
            out.append(counted)
            bar.update()
        return out


def write_info(root: Path, workers: int = 1) -> dict:
    """ROOT/_info.json for a folder of tar shards that has none (timm's fields: each split's name,
    num_samples, filenames, shard_lengths), the counts read from the tar headers; the index file
    of each tar that has none is written on the way."""
    tars = sorted(p.name for p in root.glob("*.tar"))
    if not tars:
        raise UserError(f"{root} holds neither {INFO} nor .tar shards")
    splits: dict[str, dict] = {}
    for name, (length, _) in zip(tars, shard_lengths([root / t for t in tars], workers)):
        split = splits.setdefault(split_of(name), {"name": split_of(name), "num_samples": 0, "filenames": [],
                                                    "shard_lengths": []})
        split["filenames"].append(name)
        split["shard_lengths"].append(length)
        split["num_samples"] += length
    info = {"name": root.resolve().name, "splits": splits}
    tmp = root / (INFO + ".tmp")
    try:
        tmp.write_text(json.dumps(info, indent=1) + "\n")
        os.replace(tmp, root / INFO)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return info


def index_folder(root: Path, workers: int) -> None:
    """--index: the missing index files of a shard folder, and its _info.json where it has none."""
    if not root.is_dir():
        raise UserError(f"{root} does not exist or is not a folder")
    try:
        if (root / INFO).is_file():
            tars = [root / name for split in read_info(root)["splits"].values() for name in split["filenames"]]
            missing = [tar for tar in tars if not index_path(tar).is_file()]
            shard_lengths(missing, workers)
            print(f"wrote {len(missing)} index files in {root}")
            return
        info = write_info(root, workers)
    except OSError as e:  # shards often sit on read-only storage
        raise UserError(f"--index {root}: cannot write {e.filename or root}: {e.strerror or e}") from None
    for name, split in info["splits"].items():
        print(f"{root / INFO}: {name}: {split['num_samples']} samples in {len(split['filenames'])} shards")
    if not (root / CLASSES).is_file():
        print(f"note: it names no classes: write {root / CLASSES}, one class name a line in label order (the hub's "
              f"ImageNet-1k alone is known without)")


def main(argv: list[str] | None = None) -> int:
    ap = command_parser(__doc__)
    ap.add_argument("src", type=Path, help="ImageNet-layout folder or local Hugging Face dataset (with --index: a shard folder)")
    ap.add_argument("out", type=Path, nargs="?", help="the shard folder to write")
    ap.add_argument("--seed", type=int, default=0, help="the write-time shuffle's seed")
    ap.add_argument("--no-shuffle", action="store_true", help="keep the source's order (label order for a folder)")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--shard-samples", type=int, default=1250, help="samples per shard (ImageNet: 1,025 shards)")
    size.add_argument("--shard-mb", type=float, default=None, help="MiB per shard instead of a sample count")
    ap.add_argument("--image-column", default="image")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--val-split", default="val", help="SRC's held-out split (data.val_split): val, test, validation")
    ap.add_argument("--index", action="store_true", help="only write the missing index files of the shard folder SRC, "
                                                          "and its _info.json if it has none")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes that read the tars' headers for --index (default: one per core)")
    a = ap.parse_args(argv)
    try:
        if a.index:
            index_folder(a.src, a.workers)
            return 0
        if a.out is None:
            raise UserError("give SRC and OUT (or --index SHARD_FOLDER)")
        if a.shard_samples < 1 or (a.shard_mb is not None and a.shard_mb <= 0):
            raise UserError("--shard-samples and --shard-mb must be positive")
        if a.val_split.strip() in ("", "train") or "/" in a.val_split:
            raise UserError(f"--val-split must name the held-out split's folder (val, test, validation), "
                            f"got {a.val_split!r}")
        info = make_shards(a.src, a.out, a.seed, not a.no_shuffle, a.shard_samples, a.shard_mb, a.image_column,
                           a.label_column, val_split=a.val_split)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    for name, split in info["splits"].items():
        print(f"{name}: {split['num_samples']} samples in {len(split['filenames'])} shards")
    return 0
