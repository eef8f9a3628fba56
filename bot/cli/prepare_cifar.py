"""Write the official CIFAR-10 or CIFAR-100 python archive as class folders of PNG images

    python scripts/prepare_cifar.py cifar-10-python.tar.gz data/cifar10
    python train.py RECIPE data.root=data/cifar10 data.val_split=test
    python scripts/prepare_cifar.py cifar-100-python.tar.gz data/cifar100 --shards   # + data/cifar100-wds

ARCHIVE is the "python version" of https://www.cs.toronto.edu/~kriz/cifar.html, as downloaded:
cifar-10-python.tar.gz (data_batch_1 ... data_batch_5, test_batch, batches.meta) or
cifar-100-python.tar.gz (train, test, meta; its 100 fine labels). OUT gets
OUT/train/<class>/<index>.png and OUT/test/<class>/<index>.png, 32 x 32 RGB, lossless: the
pixels are the archive's. A class folder is the label's number and name, 00_airplane ...
09_truck (CIFAR-100: 00_apple ... 99_worm), so that the loaders, which number the classes in
the sorted order of their folders, give every image the archive's own label. <index> is the
image's place in its split of the archive (00000 ...). OUT must be new or empty; it appears
whole at the end, or not at all (an error or a signal leaves nothing behind).

The batches are pickles written by Python 2: a pickle can run any code, so they are read with an
unpickler that builds only dicts, lists, strings, numbers and numpy's uint8 arrays, and refuses
anything else.

--shards then writes OUT as WebDataset shards into DIR (default OUT-wds), splits train and test,
as `bot-make-shards OUT DIR --val-split test` does; read them with data.root=DIR
data.val_split=test. If the shards stop part way, OUT is complete and that command finishes them.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np

from bot.cli import command_parser
from bot.cli.progress import Progress
from bot.cli.stop import run_stoppable
from bot.errors import UserError

# basename of each file of a split in the archive, and the keys of its labels and class names
LAYOUTS = {
    "CIFAR-10": dict(train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], meta="batches.meta",
                     labels=b"labels", names=b"label_names"),
    "CIFAR-100": dict(train=["train"], test=["test"], meta="meta", labels=b"fine_labels", names=b"fine_label_names"),
}
CLASS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # names become folders: nothing like "../x" from an archive


class BatchUnpickler(pickle.Unpickler):
    """The official batches hold dicts of lists, strings, ints and one uint8 numpy array; the
    only globals such a pickle names are numpy's array constructors (its own, in numpy 1 or 2)."""

    ARRAY = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
             ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ARRAY:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which CIFAR's batches do not (not run: "
                                         "a pickle can run code)")
        if name == "_reconstruct":
            return np.zeros(0).__reduce__()[0]  # numpy's own, wherever this numpy keeps it
        return getattr(np, name)


def load_batch(data: bytes, where: str) -> dict:
    try:
        # Python 2's str is bytes here (encoding="bytes"): keys are b"data", b"labels" ...
        batch = BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # a truncated or foreign file fails in many ways, all the same to the user
        raise UserError(f"{where} is not a CIFAR batch: {e}") from None
    if not isinstance(batch, dict):
        raise UserError(f"{where} is not a CIFAR batch: it holds a {type(batch).__name__}, not a dict")
    return batch


def find_layout(names: list[str], archive: Path) -> tuple[str, str]:
    """(dataset, folder inside the archive) from the archive's file names."""
    for dataset, layout in LAYOUTS.items():
        needed = [*layout["train"], *layout["test"], layout["meta"]]
        for folder in {n.rpartition("/")[0] for n in names}:
            if all(f"{folder}/{n}".lstrip("/") in names for n in needed):
                return dataset, folder
    raise UserError(f"{archive} is not CIFAR's python version (cifar-10-python.tar.gz: data_batch_1 ... test_batch, "
                    f"batches.meta; cifar-100-python.tar.gz: train, test, meta); the binary and MATLAB versions "
                    f"are not read")


def read_archive(archive: Path) -> tuple[str, list[str], dict[str, tuple[np.ndarray, list[int]]]]:
    """(dataset, class names in label order, {split: (N x 32 x 32 x 3 uint8 images, labels)})."""
    if not archive.is_file():
        raise UserError(f"ARCHIVE {archive} does not exist or is not a file")
    try:
        with tarfile.open(archive, "r:*") as tar:
            files = {m.name: m for m in tar.getmembers() if m.isfile()}
            dataset, folder = find_layout(list(files), archive)
            layout = LAYOUTS[dataset]

            def load(name: str) -> dict:
                path = f"{folder}/{name}".lstrip("/")
                return load_batch(tar.extractfile(files[path]).read(), f"{archive}:{path}")

            names = class_names(load(layout["meta"]).get(layout["names"]), f"{archive}:{layout['meta']}")
            splits = {split: join([load(n) for n in layout[split]], layout["labels"], len(names),
                                  f"{archive}:{folder}/{split}")
                      for split in ("train", "test")}
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise UserError(f"cannot read {archive}: {e} (a damaged or partial download?)") from None
    return dataset, names, splits


def class_names(raw, where: str) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(n, (bytes, str)) for n in raw):
        raise UserError(f"{where} has no list of class names")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in raw]
    bad = next((n for n in names if not CLASS_NAME.match(n)), None)
    if bad is not None:
        raise UserError(f"{where}: class name {bad!r} cannot be a folder name")
    if len(set(names)) != len(names):
        raise UserError(f"{where}: a class name appears twice")
    return names


def join(batches: list[dict], key: bytes, classes: int, where: str) -> tuple[np.ndarray, list[int]]:
    """One split's images (channel-planar rows of 3072 bytes -> N x 32 x 32 x 3) and labels."""
    images, labels = [], []
    for batch in batches:
        data, batch_labels = batch.get(b"data"), batch.get(key)
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
            raise UserError(f"{where}: its data is not an N x 3072 array of uint8")
        if not isinstance(batch_labels, list) or len(batch_labels) != len(data):
            raise UserError(f"{where}: {len(data)} images but not as many {key.decode()}")
        images.append(data)
        labels += batch_labels
    if not all(isinstance(label, int) and 0 <= label < classes for label in labels):
        raise UserError(f"{where}: a label is not a class number in 0..{classes - 1}")
    return np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def class_folders(names: list[str]) -> list[str]:
    """Folder names that sort in label order: the label, zero-padded, then the name."""
    digits = max(2, len(str(len(names) - 1)))
    return [f"{i:0{digits}d}_{name}" for i, name in enumerate(names)]


def write_pngs(splits: dict, folders: list[str], out: Path, desc: str, progress: bool) -> None:
    from PIL import Image

    total = sum(len(labels) for _, labels in splits.values())
    with Progress(total, desc, "img", enabled=progress) as bar:
        for split, (images, labels) in splits.items():
            digits = max(5, len(str(len(labels) - 1)))
            for folder in folders:
                (out / split / folder).mkdir(parents=True)
            for i, (image, label) in enumerate(zip(images, labels)):
                Image.fromarray(image).save(out / split / folders[label] / f"{i:0{digits}d}.png")
                bar.update(1)


def first_missing(folder: Path) -> Path | None:
    """The topmost folder of `folder`'s path that does not exist yet (what mkdir -p makes)."""
    missing = None
    for path in [folder, *folder.parents]:
        if path.exists():
            return missing
        missing = path
    return missing


def prepare(archive: Path, out: Path, progress: bool) -> tuple[str, list[str], dict]:
    """Write OUT (see the module's docstring) through a folder beside it, renamed at the end."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"OUT {out} exists and is not an empty folder: give a new or empty one (nothing is replaced)")
    dataset, names, splits = read_archive(archive)
    folders = class_folders(names)
    target = out.resolve()
    made = first_missing(target.parent)
    partial = target.parent / f".{target.name}.partial"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # left by a run killed with SIGKILL: ours, by its name
        write_pngs(splits, folders, partial, f"png -> {out}", progress)
        os.rename(partial, target)  # over an empty folder, too
    except BaseException as e:
        shutil.rmtree(partial, ignore_errors=True)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        if isinstance(e, OSError):
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise UserError(f"cannot write {out}: {reason}; nothing was written") from None
        raise
    return dataset, folders, {split: len(labels) for split, (_, labels) in splits.items()}


def check_shards_folder(out: Path, shards: Path) -> None:
    """What bot-make-shards would refuse after the PNGs are written, refused before."""
    source, target = out.resolve(), shards.resolve()
    if target == source or source in target.parents or target in source.parents:
        raise UserError(f"--shards {shards} must be a folder of its own, neither OUT nor inside or around it")
    if shards.exists() and (not shards.is_dir() or any(shards.iterdir())):
        raise UserError(f"--shards {shards} exists and is not an empty folder: give a new or empty one")


def main(argv: list[str] | None = None) -> int:
    ap = command_parser(__doc__)
    ap.add_argument("archive", type=Path, help="cifar-10-python.tar.gz or cifar-100-python.tar.gz")
    ap.add_argument("out", type=Path, help="the folder to write: OUT/train/<class>/*.png, OUT/test/<class>/*.png")
    ap.add_argument("--shards", type=Path, nargs="?", const=True, default=None, metavar="DIR",
                    help="also write WebDataset shards of OUT into DIR (default: OUT-wds)")
    a = ap.parse_args(argv)
    shards = Path(f"{a.out}-wds") if a.shards is True else a.shards
    written: list[Path] = []

    def body() -> int:
        if shards is not None:
            check_shards_folder(a.out, shards)
        dataset, folders, counts = prepare(a.archive, a.out, sys.stderr.isatty())
        written.append(a.out)
        print(f"{a.out}: {dataset}, {counts['train']} train and {counts['test']} test images in {len(folders)} "
              f"classes ({folders[0]} ... {folders[-1]})")
        if shards is not None:
            from bot.cli.make_shards import make_shards

            info = make_shards(a.out, shards, progress=sys.stderr.isatty(), val_split="test")
            written.append(shards)
            for name, split in info["splits"].items():
                print(f"{shards}: {name}: {split['num_samples']} samples in {len(split['filenames'])} shards")
        return 0

    return run_stoppable("prepare_cifar", body, written)


if __name__ == "__main__":
    sys.exit(main())
