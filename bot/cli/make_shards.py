"""Write a dataset as WebDataset tar shards: `bot-make-shards SRC OUT` (scripts/make_shards.py).

    bot-make-shards /data/imagenet /data/imagenet-wds                 # an ImageNet-layout folder
    bot-make-shards /data/hf-imagenet /data/imagenet-wds --shard-mb 128  # a Hugging Face dataset
    bot-make-shards --index /data/imagenet-1k-wds                      # index files for shards from elsewhere

SRC is what data.root takes (ROOT/{train,val}/<class>/<image>) or a local Hugging Face
dataset: a `datasets.save_to_disk` folder of a DatasetDict, or a folder of parquet files
named by split (train-*.parquet, validation-*.parquet), with an image and a label column.
OUT gets the layout of timm and of the hub's `timm/imagenet-1k-wds` (bot/data/shards.py):
{train,validation}-NNNNNN.tar with KEY.jpg (the image's bytes as they are, the extension
of its format) + KEY.cls per sample, a DALI index NNNNNN.idx beside each tar, and
`_info.json` (timm's splits, plus the class names). Samples are shuffled at write time
with --seed (--no-shuffle keeps the source's label order). A run that stops (Ctrl-C, a
lost node) continues where it stopped when started again with the same arguments: a shard
is finished when its index file exists, and `_make_shards.json` records what is written.
OUT is new, empty or such a folder of this command's: not SRC, nor a folder inside SRC or
holding it, nor one with other files (an ImageNet folder, a run folder), which an
`_info.json` would turn into a shard folder for data.root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np

from bot.cli import command_parser
from bot.data.shards import INFO, index_path, index_tar, write_index, write_missing_indexes
from bot.errors import UserError, one_line

PLAN = "_make_shards.json"
CACHE = ".hf-cache"  # datasets' arrow copy of parquet files, while OUT is written
SPLITS = (("train", "train"), ("validation", "val"))  # (name in OUT, folder in an ImageNet-layout SRC)
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


def open_source(src: Path, image: str, label: str, cache: Path) -> dict:
    """{name in OUT: source} for train and validation, and the class names."""
    from bot.data.folder import scan_dataset

    if (src / "train").is_dir() and (src / "val").is_dir() and not (src / "dataset_dict.json").is_file():
        train, val = scan_dataset(str(src))
        return {"train": FolderSource(train), "validation": FolderSource(val)}
    import datasets

    if (src / "dataset_dict.json").is_file():
        dd = datasets.load_from_disk(str(src))
    else:
        files = sorted(src.rglob("*.parquet"))
        by_split = {n: [str(f) for f in files if f.name.startswith(n)] for n in ("train", "validation", "val")}
        if not files:
            raise UserError(f"{src} is neither an ImageNet-layout folder (train/, val/), a save_to_disk folder "
                            f"(dataset_dict.json) nor a folder of parquet files")
        dd = datasets.load_dataset("parquet", data_files={k: v for k, v in by_split.items() if v},
                                   cache_dir=str(cache))
    val = next((n for n in ("validation", "val") if n in dd), None)
    if "train" not in dd or val is None:
        raise UserError(f"{src} needs a train and a validation split (it has {sorted(dd)})")
    return {"train": HFSource(dd["train"], "train", image, label), "validation": HFSource(dd[val], "validation", image, label)}


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
                shard_mb: float | None = None, image: str = "image", label: str = "label", progress: bool = True) -> dict:
    """Write OUT from SRC (see the module's docstring); returns the _info.json written. A run that
    stops before its first shard is finished leaves no folder it made, and no PLAN."""
    check_folders(src, out)
    made = first_missing(out.resolve())
    out.mkdir(parents=True, exist_ok=True)
    try:
        return write_shards(src, out, seed, shuffle, shard_samples, shard_mb, image, label, progress)
    except BaseException:
        if not any(p.suffix == ".idx" for p in out.iterdir()):  # no shard finished: nothing to resume
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            else:  # OUT was there, empty or with the cache of an earlier run, which a rerun reuses
                (out / PLAN).unlink(missing_ok=True)
        raise


def write_shards(src: Path, out: Path, seed: int, shuffle: bool, shard_samples: int, shard_mb: float | None,
                 image: str, label: str, progress: bool) -> dict:
    from tqdm import tqdm

    sources = open_source(src, image, label, out / CACHE)
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
    with tqdm(total=total, unit="img", desc=f"shards -> {out}", disable=not progress) as bar:
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
    ap.add_argument("--index", action="store_true", help="only write the missing index files of the shard folder SRC")
    a = ap.parse_args(argv)
    try:
        if a.index:
            print(f"wrote {write_missing_indexes(a.src)} index files in {a.src}")
            return 0
        if a.out is None:
            raise UserError("give SRC and OUT (or --index SHARD_FOLDER)")
        if a.shard_samples < 1 or (a.shard_mb is not None and a.shard_mb <= 0):
            raise UserError("--shard-samples and --shard-mb must be positive")
        info = make_shards(a.src, a.out, a.seed, not a.no_shuffle, a.shard_samples, a.shard_mb, a.image_column,
                           a.label_column)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    for name, split in info["splits"].items():
        print(f"{name}: {split['num_samples']} samples in {len(split['filenames'])} shards")
    return 0
