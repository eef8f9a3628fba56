"""The torchvision loader: the reference implementation of the paper's input pipeline.

Each training sample's augmentation is seeded by (seed, epoch, index), so a batch is the
same whatever the number of workers, and a resumed run sees exactly the batches an
uninterrupted one would have seen. The sampler hands each sample its seed and the epoch's
training size (bot.data.sizes) with its index: the workers hold no per-epoch state.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from bot.data import sampling
from bot.data.cutout import cutout_box, erase
from bot.data.folder import Split
from bot.data.sizes import size_schedule
from bot.data.transforms import train_transform, val_transform
from bot.data.workers import worker_init, workers_without_main  # the main process saves, then ends its workers
from bot.errors import UserError

# Workers start from a fork server, not a fork of this process: forking a process that
# already runs threads (DALI's, or a torch thread pool) can deadlock the child.
CONTEXT = "forkserver"


def eight_bit(img: Image.Image) -> Image.Image:
    """A 16-bit greyscale image ("I;16*", or "I" as PIL opens some) scaled to 8 bits as DALI's
    decoder does it: round(v / 257), so 65535 is 255 and 0x8080 is 128; other modes as they are.

    PIL opens 16-bit RGB(A) PNGs as 8-bit already (their high byte, within one level of this).
    """
    if not img.mode.startswith("I"):
        return img
    grey = np.rint(np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L")


def decode(source: str | bytes, name=None, hint: str = Split.hint) -> torch.Tensor:
    """A file (a path, or its bytes and `name()` naming it) as a uint8 RGB CHW tensor, or a
    UserError naming the file.

    PIL (libjpeg-turbo) decodes; it also reads CMYK and greyscale JPEGs and PNGs, which
    ImageNet has a few of, and converts them to RGB. 16-bit greyscale goes through eight_bit
    first: PIL's convert("RGB") would clip it.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            rgb = np.asarray(eight_bit(img).convert("RGB"))
    except UnidentifiedImageError:  # its message names a BytesIO, not the file
        raise UserError(f"cannot read image {name() if name else source}: not an image file{hint}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot read image {name() if name else source}: {why}{hint}") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


class ImageFiles(Dataset):
    """Items are an index (val: `transform` applies) or (index, seed, size) for training: the
    augmentation's seed and the crop side; `train` is then the data config, from which a
    transform per size is made when first asked for, and Cutout follows the transform."""

    def __init__(self, split: Split, transform=None, train=None):
        self.split, self.transform, self.train, self.by_size = split, transform, train, {}

    def __len__(self) -> int:
        return len(self.split)

    def _read(self, index: int) -> tuple[torch.Tensor, int]:
        data, label = self.split.sample(index)
        return decode(data, lambda: self.split.name(index), self.split.hint), label

    def __getitem__(self, item):
        if not isinstance(item, tuple):
            image, label = self._read(item)
            try:
                return self.transform(image), label
            except UserError as e:  # the val transform's own (transforms.AsItIs): it has no file name
                raise UserError(f"{self.split.name(item)}: {e}") from None
        index, seed, size = item
        image, label = self._read(index)
        return self.augment(image, seed, size), label

    def augment(self, image: torch.Tensor, seed: int, size: int) -> torch.Tensor:
        """The training transform of one decoded image, drawn from its own seed."""
        d = self.train
        if size not in self.by_size:
            self.by_size[size] = train_transform(d, size)
        with torch.random.fork_rng(devices=[]):  # leave the caller's generator alone
            # the CPU generator only, which the transforms draw from: torch.manual_seed also queues
            # a CUDA seed, recording a costly traceback each time where CUDA is not initialised
            torch.default_generator.manual_seed(seed)
            image = self.by_size[size](image)
        if d.cutout > 0:
            erase(image, cutout_box(seed, size, d.cutout))
        return image


class EpochSampler(Sampler):
    """This process's share of one epoch (sampling.train_order), from a given step on."""

    def __init__(self, n: int, seed: int, rank: int, world: int, batch: int, size_of):
        self.n, self.seed, self.rank, self.world, self.batch, self.size_of = n, seed, rank, world, batch, size_of
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start = epoch, start_step * self.batch

    def __len__(self) -> int:
        return sampling.steps_per_epoch(self.n, self.world, self.batch) * self.batch - self.start

    def __iter__(self):
        order = sampling.train_order(self.n, self.seed, self.epoch, self.rank, self.world, self.batch)
        size = self.size_of(self.epoch)
        for index in order[self.start:]:
            yield int(index), sampling.sample_seed(self.seed, self.epoch, int(index)), size


class TrainLoader:
    """Batches of (images float NCHW normalized, labels) for one process, one epoch at a time.

    `size_of(epoch)` is the epoch's crop side (bot.data.sizes; default data.image_size)."""

    def __init__(self, split: Split, d, seed: int, rank: int, world: int, batch: int, pin: bool, size_of=None):
        self.classes, self.batch_size = split.classes, batch
        self.size_of = size_of or (lambda epoch: d.image_size)
        self.sampler = EpochSampler(len(split), seed, rank, world, batch, self.size_of)
        self.loader = DataLoader(ImageFiles(split, train=d), batch_size=batch, sampler=self.sampler,
                                 num_workers=d.workers, pin_memory=pin, drop_last=True,
                                 persistent_workers=d.workers > 0, multiprocessing_context=CONTEXT if d.workers else None,
                                 worker_init_fn=worker_init(CONTEXT) if d.workers else None)
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
                                 multiprocessing_context=CONTEXT if d.workers else None,
                                 worker_init_fn=worker_init(CONTEXT) if d.workers else None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        with workers_without_main():  # persistent workers start on the first iter()
            return iter(self.loader)


def build_torch_loaders(train: Split, val: Split, cfg, rank: int, world: int, batch: int, device):
    pin = torch.device(device).type == "cuda"
    return (TrainLoader(train, cfg.data, cfg.run.seed, rank, world, batch, pin, size_schedule(cfg)),
            ValLoader(val, cfg.data, rank, world, batch, pin))
