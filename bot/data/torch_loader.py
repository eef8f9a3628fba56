"""The torchvision loader: the reference implementation of the paper's input pipeline.

Each training sample's augmentation is seeded by (seed, epoch, index), so a batch is the
same whatever the number of workers, and a resumed run sees exactly the batches an
uninterrupted one would have seen.
"""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from bot.data import sampling
from bot.data.folder import Split
from bot.data.transforms import train_transform, val_transform
from bot.errors import UserError

# Workers start from a fork server, not a fork of this process: forking a process that
# already runs threads (DALI's, or a torch thread pool) can deadlock the child.
CONTEXT = "forkserver"


@contextmanager
def workers_without_main():
    """Start workers that do not re-run the user's __main__, whatever it is.

    A fork-server (or spawn) child is prepared from `multiprocessing.spawn.get_preparation_data`,
    which tells it to re-import the parent's __main__ as `__mp_main__`: by path when __main__
    has a `__file__` (`init_main_from_path`, runpy.run_path), by module name when it has a
    `__spec__` (`init_main_from_name`, `python -m`). An unguarded script is then run again in
    every worker, which starts loaders while still bootstrapping and dies ("DataLoader worker
    exited unexpectedly"); a script read from stdin has `__file__ == "<stdin>"`, a file that
    does not exist; a notebook's `%run script.py` puts the script's `__file__` into __main__.
    The workers run only code from bot, torch and torchvision, found by import, and need
    nothing from __main__; so while they start, __main__ is swapped for a bare module, the
    state of `python -c`, which gives no preparation entry. The user's module is not changed,
    only looked up elsewhere for those milliseconds, and the fork server is kept.
    """
    modules = sys.modules
    user_main = modules["__main__"]
    modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        modules["__main__"] = user_main


def eight_bit(img: Image.Image) -> Image.Image:
    """A 16-bit greyscale image ("I;16*", or "I" as PIL opens some) scaled to 8 bits as DALI's
    decoder does it: round(v / 257), so 65535 is 255 and 0x8080 is 128; other modes as they are.

    PIL opens 16-bit RGB(A) PNGs as 8-bit already (their high byte, within one level of this).
    """
    if not img.mode.startswith("I"):
        return img
    grey = np.rint(np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L")


def decode(path: str) -> torch.Tensor:
    """A file as a uint8 RGB CHW tensor, or a UserError naming the file.

    PIL (libjpeg-turbo) decodes; it also reads CMYK and greyscale JPEGs and PNGs, which
    ImageNet has a few of, and converts them to RGB. 16-bit greyscale goes through eight_bit
    first: PIL's convert("RGB") would clip it.
    """
    try:
        with Image.open(path) as img:
            rgb = np.asarray(eight_bit(img).convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                        f"(scripts/check_dataset.py lists every bad file)") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


class ImageFiles(Dataset):
    """Items are an index (val) or (index, seed) (train: the augmentation's seed)."""

    def __init__(self, split: Split, transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = decode(self.split.files[index])
        if seed is None:
            return self.transform(image), self.split.labels[index]
        with torch.random.fork_rng(devices=[]):  # leave the caller's generator alone
            torch.manual_seed(seed)
            return self.transform(image), self.split.labels[index]


class EpochSampler(Sampler):
    """This process's share of one epoch (sampling.train_order), from a given step on."""

    def __init__(self, n: int, seed: int, rank: int, world: int, batch: int):
        self.n, self.seed, self.rank, self.world, self.batch = n, seed, rank, world, batch
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start = epoch, start_step * self.batch

    def __len__(self) -> int:
        return sampling.steps_per_epoch(self.n, self.world, self.batch) * self.batch - self.start

    def __iter__(self):
        order = sampling.train_order(self.n, self.seed, self.epoch, self.rank, self.world, self.batch)
        for index in order[self.start:]:
            yield int(index), sampling.sample_seed(self.seed, self.epoch, int(index))


class TrainLoader:
    """Batches of (images float NCHW normalized, labels) for one process, one epoch at a time."""

    def __init__(self, split: Split, d, seed: int, rank: int, world: int, batch: int, pin: bool):
        self.classes, self.batch_size = split.classes, batch
        self.sampler = EpochSampler(len(split), seed, rank, world, batch)
        self.loader = DataLoader(ImageFiles(split, train_transform(d)), batch_size=batch, sampler=self.sampler,
                                 num_workers=d.workers, pin_memory=pin, drop_last=True,
                                 persistent_workers=d.workers > 0, multiprocessing_context=CONTEXT if d.workers else None)
        self.steps = sampling.steps_per_epoch(len(split), world, batch)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_step)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        with workers_without_main():  # persistent workers start on the first iter()
            return iter(self.loader)


class ValLoader:
    """This process's share of the val set: every image counted once over all processes."""

    def __init__(self, split: Split, d, rank: int, world: int, batch: int, pin: bool):
        self.classes = split.classes
        self.indices = sampling.val_order(len(split), rank, world).tolist()
        self.loader = DataLoader(ImageFiles(split, val_transform(d)), batch_size=batch, sampler=self.indices,
                                 num_workers=d.workers, pin_memory=pin, persistent_workers=d.workers > 0,
                                 multiprocessing_context=CONTEXT if d.workers else None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        with workers_without_main():  # persistent workers start on the first iter()
            return iter(self.loader)


def build_torch_loaders(train: Split, val: Split, cfg, rank: int, world: int, batch: int, device):
    pin = torch.device(device).type == "cuda"
    return (TrainLoader(train, cfg.data, cfg.run.seed, rank, world, batch, pin),
            ValLoader(val, cfg.data, rank, world, batch, pin))
