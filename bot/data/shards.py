"""WebDataset tar shards as a data source: ROOT/_info.json and the tar files it lists.

The layout is timm's and the Hugging Face hub's (`timm/imagenet-1k-wds`): `KEY.jpg` +
`KEY.cls` (the label as decimal text) per sample, `_info.json` per split (the fields timm's
reader_wds.py reads), and beside each `NAME.tar` a DALI index `NAME.idx` (wds2idx's
format), built in memory where it is missing. A ShardSplit is a Split whose `sample(i)`
reads at the index's offsets, so both loaders keep their order, seeds and code; each
mistake in a shard is one line naming it and the sample key (docs/data.md, "Shards").
"""

from __future__ import annotations

import json
import os
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from bot.errors import UserError

INFO = "_info.json"
CLASSES = "classes.txt"  # optional, beside _info.json: one class name a line, in label order
TRAIN_SPLITS, VAL_SPLITS = ("train",), ("validation", "val")  # VAL_SPLITS: one split, timm's name or ours
IMAGENET_TRAIN = 1_281_167  # ImageNet-1k's training images: how the hub's imagenet-1k-wds, naming no class, is known
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
INDEX_VERSION = "v1.2"  # DALI's wds2idx: "v1.2 N", then per sample "ext offset size name" per member
OPEN_SHARDS = 64  # file descriptors kept open per process (a worker may touch all 1,024 shards)


def is_shard_folder(root) -> bool:
    return (Path(root) / INFO).is_file()


def index_path(tar: Path) -> Path:
    """DALI's wds2idx default: the tar's name up to its first dot, with .idx."""
    return tar.with_name(tar.name.partition(".")[0] + ".idx")


def split_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: WebDataset splits at the first dot of the basename."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1:])


# ---------------------------------------------------------------- index files


def index_tar(path: Path) -> list[list[tuple[str, int, int, str]]]:
    """Samples of a tar, each [(ext, data offset, size, member name), ...], in the tar's order.

    Reads the headers only (tarfile seeks over the data). Members are grouped into samples
    by consecutive key, as WebDataset and wds2idx group them; hidden files are skipped.
    """
    samples, last = [], None
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isreg():
                    continue
                key, ext = split_key(m.name)
                if not key or key.endswith("/"):  # a hidden file (".x"), as wds2idx skips it
                    continue
                if key != last:
                    samples.append([])
                    last = key
                samples[-1].append((ext, m.offset_data, m.size, m.name))
    except tarfile.TarError as e:
        after = f" after sample {split_key(samples[-1][0][3])[0]}" if samples else ""
        raise UserError(f"shard {path} is not a readable tar{after}: {e}") from None
    return samples


def write_index(samples, out: Path) -> None:
    """An index file as DALI's wds2idx writes it (fn.readers.webdataset's index_paths)."""
    tmp = out.with_name(out.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(f"{INDEX_VERSION} {len(samples)}\n")
            for sample in samples:
                f.write(" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in sample) + "\n")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_index(path: Path) -> list[list[tuple[str, int, int, str]]]:
    with open(path) as f:
        lines = f.read().splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit() or int(head[1]) != len(lines) - 1:
        raise UserError(f"index {path} is not a {INDEX_VERSION} index of wds2idx (rewrite it: bot-make-shards --index "
                        f"{path.parent})")
    samples = []
    for line in lines[1:]:
        t = line.split()
        if len(t) % 4:
            raise UserError(f"index {path} is not a {INDEX_VERSION} index of wds2idx (rewrite it: bot-make-shards "
                            f"--index {path.parent})")
        samples.append([(t[i], int(t[i + 1]), int(t[i + 2]), t[i + 3]) for i in range(0, len(t), 4)])
    return samples


# ---------------------------------------------------------------- _info.json


def read_info(root: Path) -> dict:
    try:
        return parse_info((root / INFO).read_text(), root / INFO)
    except OSError as e:
        raise UserError(f"cannot read {root / INFO}: {e.strerror}") from None


def parse_info(text: str, where) -> dict:
    try:
        info = json.loads(text)
    except ValueError as e:
        raise UserError(f"{where} is not JSON: {e}") from None
    if not isinstance(info, dict) or not isinstance(info.get("splits"), dict):
        raise UserError(f"{where} has no 'splits' (timm's layout: splits -> name, num_samples, filenames, "
                        f"shard_lengths)")
    return info


def class_names(root, info: dict, listed) -> list[str]:
    """The classes, in label order: _info.json's "classes" (what bot-make-shards writes), else
    classes.txt beside it (`listed()`: its text, None where there is none), else, for
    ImageNet-1k (a train split of its 1,281,167 images: the hub's imagenet-1k-wds names no
    class), its 1000 wnids sorted (timm's ImageNetInfo), the label order of the hub's shards
    and of an ImageNet folder. Anything else stops with one line: guessing ImageNet would train
    a 1000-way head on a 10-class set, and counting the classes would read every sample's .cls
    (1.28 M reads, or the whole set downloaded) before the first step."""
    if "classes" in info:
        return [str(c) for c in info["classes"]]
    text = listed()
    if text is not None:
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise UserError(f"{root}/{CLASSES} is empty: write one class name a line, in label order")
        return names
    train = info["splits"].get("train")
    if isinstance(train, dict) and train.get("num_samples") == IMAGENET_TRAIN:
        from timm.data import ImageNetInfo
        return list(ImageNetInfo().label_names())
    raise UserError(f"{root} names no classes ({INFO} has no 'classes' and there is no {CLASSES} beside it): write "
                    f"{root}/{CLASSES}, one class name a line in label order")


def local_classes(root: Path) -> str | None:
    """The text of ROOT/classes.txt, None where there is none."""
    try:
        return (root / CLASSES).read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"cannot read {root / CLASSES}: {e.strerror}") from None


def val_splits(val_split: str) -> tuple[str, ...]:
    """The split names of _info.json that data.val_split means: val and validation are the same
    split (a folder's val/, timm's and the hub's "validation"); another name (test) is itself."""
    return VAL_SPLITS if val_split in VAL_SPLITS else (val_split,)


def split_entry(root, info: dict, names: tuple[str, ...]) -> dict:
    for name in names:
        if name in info["splits"]:
            entry = info["splits"][name]
            break
    else:
        raise UserError(f"{root}/{INFO} has no split {' or '.join(names)} (it has {sorted(info['splits'])}"
                        f"{'' if names == TRAIN_SPLITS else '; data.val_split names the held-out one'})")
    try:
        files, lengths = [str(f) for f in entry["filenames"]], [int(n) for n in entry["shard_lengths"]]
        total = int(entry["num_samples"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{root}/{INFO}: split {name} lacks filenames, shard_lengths or num_samples ({e})") from None
    if len(files) != len(lengths) or sum(lengths) != total or not files:
        raise UserError(f"{root}/{INFO}: split {name} has {len(files)} filenames, {len(lengths)} shard_lengths summing "
                        f"to {sum(lengths)}, and num_samples {total}: they must agree")
    return dict(filenames=files, shard_lengths=lengths)


def open_shards(root: Path, val_split: str = "val") -> tuple["ShardSplit", "ShardSplit"]:
    """(train, held-out split `val_split`) of a shard folder, from its _info.json alone (no shard is opened)."""
    info = read_info(root)
    classes = class_names(root, info, lambda: local_classes(root))
    return (open_split(root, info, TRAIN_SPLITS, classes), open_split(root, info, val_splits(val_split), classes))


def open_val_shards(root: Path, val_split: str = "val") -> "ShardSplit":
    """The held-out split alone (evaluation needs no train split)."""
    info = read_info(root)
    return open_split(root, info, val_splits(val_split), class_names(root, info, lambda: local_classes(root)))


def open_split(root: Path, info: dict, names: tuple[str, ...], classes: list[str]) -> "ShardSplit":
    entry = split_entry(root, info, names)
    return ShardSplit(root, classes, entry["filenames"], entry["shard_lengths"])


# ---------------------------------------------------------------- reading samples


def parse_label(text: bytes, classes: int, where) -> int:
    """A .cls member's label, checked against the number of classes; `where()` names the sample."""
    try:
        label = int(text.decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{where()} has label {text[:20]!r}, not an integer") from None
    if not 0 <= label < classes:
        raise UserError(f"{where()} has label {label}, outside the {classes} classes (0 to {classes - 1})")
    return label


def members_of(tar: Path) -> list[list[tuple[str, int, int, str]]]:
    """Each sample's members (ext, offset, size, name): from the tar's index, or the tar itself."""
    index = index_path(tar)
    return read_index(index) if index.is_file() else index_tar(tar)


class Shard:
    """One tar's members as arrays: image and label (offset, size) per sample, checked once."""

    def __init__(self, path: Path, expected: int, classes: int):
        self.path = path
        if not path.is_file():
            raise UserError(f"shard {path} is listed in {INFO} but does not exist")
        samples = members_of(path)
        if len(samples) != expected:
            raise UserError(f"shard {path} holds {len(samples)} samples, {INFO} says {expected}")
        spans = np.zeros((len(samples), 4), np.int64)  # image offset, image size, cls offset, cls size
        for j, sample in enumerate(samples):
            members = {ext.lower(): (offset, size) for ext, offset, size, _ in sample}
            image = next((members[e] for e in IMAGE_EXTS if e in members), None)
            if image is None or "cls" not in members:
                what = "image (." + "/.".join(IMAGE_EXTS) + ")" if image is None else ".cls member (its label)"
                raise UserError(f"shard {path}: sample {self.key(j)} has no {what}")
            spans[j] = (*image, *members["cls"])
        size = os.path.getsize(path)
        ends = np.maximum(spans[:, 0] + spans[:, 1], spans[:, 2] + spans[:, 3])
        if len(ends) and ends.max() > size:
            j = int(np.argmax(ends > size))
            raise UserError(f"shard {path} is truncated: sample {self.key(j)} ends at byte {ends[j]}, "
                            f"the file has {size}")
        self.spans, self.classes, self.fd = spans, classes, None

    def key(self, j: int) -> str:
        """The key of sample j, read back from the index (only errors need it)."""
        return split_key(members_of(self.path)[j][0][3])[0]

    def _read(self, offset: int, size: int) -> bytes:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self.fd, int(size), int(offset))

    def sample(self, j: int) -> tuple[bytes, int]:
        image_at, image_size, cls_at, cls_size = self.spans[j]
        data, text = self._read(image_at, image_size), self._read(cls_at, cls_size)
        if len(data) != image_size or len(text) != cls_size:
            raise UserError(f"shard {self.path} is truncated at sample {self.key(j)}")
        return data, parse_label(text, self.classes, lambda: f"shard {self.path}: sample {self.key(j)}")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ShardSplit:
    """A split whose samples live in tar shards: len(), classes, sample(i) -> (bytes, label), name(i).

    Global index i is sample i - starts[k] of shard k, in _info.json's shard order, so the
    (seed, epoch) permutation of bot.data.sampling applies as on a folder. Shards are opened
    lazily in each process (loader workers included); at most OPEN_SHARDS keep a file
    descriptor, those read last: a permutation of all samples touches every shard over and
    over, and 1,024 descriptors per worker exceed the common `ulimit -n` of 1024."""

    def __init__(self, root: Path, classes: list[str], filenames: list[str], lengths: list[int]):
        self.root, self.classes, self.filenames = Path(root), classes, filenames
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.lengths = lengths
        self.shards: dict[int, Shard] = {}  # checked once and kept
        self.open: OrderedDict[int, Shard] = OrderedDict()  # those holding a descriptor, least recently read first
        self.lock = threading.Lock()  # DALI's feeder thread reads ahead while the loop's may read to name a bad image

    hint = ""  # scripts/check_dataset.py reads folders

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self):  # to a loader worker: no open files, no cached indexes
        return {**self.__dict__, "shards": {}, "open": OrderedDict(), "lock": None}

    def __setstate__(self, state):
        self.__dict__.update(state, lock=threading.Lock())

    def locate(self, i: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return k, int(i - self.starts[k])

    def shard(self, k: int) -> Shard:
        s = self.shards.get(k)
        if s is None:
            s = self.shards[k] = Shard(self.root / self.filenames[k], self.lengths[k], len(self.classes))
        return s

    def sample(self, i: int) -> tuple[bytes, int]:
        k, j = self.locate(i)
        with self.lock:
            s = self.shard(k)
            self.open[k] = s
            self.open.move_to_end(k)
            while len(self.open) > OPEN_SHARDS:  # before shard k opens its descriptor, if it has none
                self.open.popitem(last=False)[1].close()
            return s.sample(j)

    def name(self, i: int) -> str:
        k, j = self.locate(i)
        with self.lock:
            s = self.shard(k)
        return f"{s.path} (sample {s.key(j)})"
