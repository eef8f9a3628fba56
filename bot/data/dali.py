"""The DALI loader: the paper's augmentation (section 2; PAPER.md section 1) on DALI, CPU or GPU.

The interface and the batches of bot.data.torch_loader, the reference it is tested
against. Python draws each sample's augmentation from sampling.sample_seed and feeds it
with the file bytes; DALI decodes and uses no random operator of its own, so a resumed
epoch is bit-for-bit (docs/data.md, "How the DALI loader works"; on a GPU, docs/gpu.md).
dali_pipeline.py holds the DALI graphs and the loop that drives them, dali_draws.py each
sample's drawn augmentation; this file, what to feed the graphs, and the loaders.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from bot.data import sampling
from bot.data.cutout import cutout_box, erase
from bot.data.dali_draws import colour_maps, colour_normalize, padded_draw, train_draws
from bot.data.folder import Split
from bot.data.transforms import wrong_side
from bot.errors import UserError


# ---------------------------------------------------------------- reading images


def image_size(data: bytes, split, index: int) -> tuple[int, int]:
    """(width, height) from an image's header, or a UserError naming it (split.name(index)).

    Only the header is parsed; an image whose body is corrupt is named after DALI fails
    on it, by _name_bad_file.
    """
    try:
        return Image.open(io.BytesIO(data)).size
    except Exception:  # PIL raises several types for a non-image
        raise UserError(f"cannot read image {split.name(index)}: not an image file{split.hint}") from None


def decode_problem(data: bytes) -> str | None:
    """Why a full decode of an image's bytes fails, or None if it decodes."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return None
    except Exception as e:
        return str(e).splitlines()[0] or type(e).__name__


def dali_reason(error: Exception) -> str:
    """The line of a DALI error that says what went wrong (it follows "encountered:")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "encountered:" in lines and lines.index("encountered:") + 1 < len(lines):
        return lines[lines.index("encountered:") + 1]
    return lines[0] if lines else type(error).__name__


def _name_bad_file(error: Exception, split, batches) -> UserError:
    """A DALI failure as one line naming the image (of `batches` of split indices) that caused it."""
    for batch in batches:
        for index in batch:
            why = decode_problem(split.sample(int(index))[0])
            if why:
                return UserError(f"cannot read image {split.name(int(index))}: {why}{split.hint}")
    first = dali_reason(error)
    names = [split.name(int(i)) for batch in batches for i in batch[:1]] or ["?"]
    return UserError(f"DALI failed on a batch of images ({names[0]} ...): {first}{split.hint}")


# ---------------------------------------------------------------- the loaders


class DaliTrainLoader:
    """Batches of (images float32 NCHW normalized, labels int64) for one process, one epoch at a time.

    The interface of torch_loader.TrainLoader. Each batch is full (the epoch's tail that
    does not fill a batch on every process is dropped, as there). After
    `set_epoch(epoch, start_step)` the batches are bit-for-bit those from `start_step` on
    of an uninterrupted epoch: the order comes from sampling.train_order and each sample's
    augmentation from sampling.sample_seed(seed, epoch, index), neither from DALI state.
    """

    def __init__(self, split: Split, d, seed: int, rank: int, world: int, batch: int, device, size_of=None):
        from bot.data.dali_pipeline import BatchBuffers, Runner, train_graph, train_inputs

        self.classes, self.batch_size = split.classes, batch
        self.split, self.d, self.seed, self.rank, self.world = split, d, seed, rank, world
        self.steps = sampling.steps_per_epoch(len(split), world, batch)
        self.epoch, self.start = 0, 0
        self.sizes: dict[int, tuple[int, int]] = {}  # index -> (width, height), read once
        self.size_of = size_of or (lambda epoch: d.image_size)  # the epoch's crop side (bot.data.sizes)
        hue, self.padded = bool(d.hue), d.crop == "padded"
        graph = lambda inputs, gpu: train_graph(inputs, gpu, hue, d.antialias, d.hw_decoder_load,  # noqa: E731
                                                self.padded)
        self.device = torch.device(device)
        self.gpu = gpu = self.device.type == "cuda"
        self.runner = Runner(graph, train_inputs(hue, gpu, self.padded), self._inputs, batch, d.workers, self.device,
                             seed=(seed * 7919 + rank) % 2**31, prefetch=d.prefetch,
                             finish=None if gpu or self.padded else self._resize)
        self.buffers = BatchBuffers(self.device)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start = epoch, start_step

    def __len__(self) -> int:
        return self.steps

    def draws(self, epoch: int, indices, size: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        """(image bytes, one row of train_draws per sample) for a batch of dataset indices."""
        return self.read_batch(epoch, indices, size or self.size_of(epoch))[:2]

    def read_batch(self, epoch: int, indices, size: int) -> tuple[list[np.ndarray], np.ndarray, torch.Tensor]:
        """(image bytes, one row of train_draws per sample, labels) for a batch of dataset indices;
        `size` is the epoch's training size."""
        jpegs, rows, labels = [], [], []
        for index in indices:
            index = int(index)
            data, label = self.split.sample(index)
            if index not in self.sizes:
                self.sizes[index] = image_size(data, self.split, index)
            width, height = self.sizes[index]
            seed = sampling.sample_seed(self.seed, epoch, index)
            window = padded_draw(seed, width, height, size, self.d.padding) if self.padded else None
            jpegs.append(np.frombuffer(data, np.uint8))
            rows.append(train_draws(np.random.default_rng(seed), width, height, self.d, window))
            labels.append(label)
        return jpegs, np.asarray(rows, np.float64), torch.tensor(labels, dtype=torch.int64)

    def _inputs(self, item: dict) -> dict:
        """DALI's inputs for one planned batch (on the feeder thread); its colour maps and labels
        wait in `item` for __iter__, pinned for an asynchronous copy to a GPU."""
        size = item["size"]
        jpegs, r, item["labels"] = self.read_batch(item["epoch"], item["indices"], size)
        item["maps"], item["flip"] = colour_maps(r, self.d.mean, self.d.std), r[:, 4] > 0
        if self.d.cutout > 0:
            item["boxes"] = [cutout_box(sampling.sample_seed(self.seed, item["epoch"], int(i)), size, self.d.cutout)
                             for i in item["indices"]]
        if self.gpu:
            item["maps"], item["labels"] = tuple(t.pin_memory() for t in item["maps"]), item["labels"].pin_memory()
        return dict(jpegs=jpegs, anchor=r[:, 0:2].astype(np.int32), shape=r[:, 2:4].astype(np.int32),
                    width=(size * (1 - 2 * r[:, 4])).astype(np.float32), height=np.full(len(r), size, np.float32),
                    flip=r[:, 4].astype(np.int32), hue=(r[:, 8] * 360).astype(np.float32))

    def _resize(self, item: dict, outputs) -> list[torch.Tensor]:
        """CPU: the decoded crops (viewed in DALI's memory) resized and flipped, as uint8 NHWC.

        torchvision's resize of a uint8 CHW view of HWC pixels (its channels-last kernels):
        the torch path's RandomResizedCrop after the same crop.
        """
        crops, size = outputs[0], item["size"]
        out = self.buffers.take((len(crops), size, size, 3), torch.uint8)
        for k, flip in enumerate(item["flip"]):
            crop = torch.from_numpy(np.asarray(crops[k])).permute(2, 0, 1)
            resized = TF.resize(crop, [size, size], antialias=self.d.antialias)
            out[k].permute(2, 0, 1).copy_(resized.flip(-1) if flip else resized)
        return [out]

    def __iter__(self):
        order = sampling.train_order(len(self.split), self.seed, self.epoch, self.rank, self.world, self.batch_size)
        b, size = self.batch_size, self.size_of(self.epoch)
        items = [dict(epoch=self.epoch, indices=order[i:i + b], size=size) for i in range(self.start * b, len(order), b)]
        for item, (resized, *means) in self.runner.epoch(items, self._error):
            n, h, w, _ = resized.shape
            images = colour_normalize(resized, item["maps"], self.buffers.take((n, 3, h, w), torch.float32),
                                      *means)
            for k, box in enumerate(item.get("boxes", ())):
                erase(images[k], box)
            yield images, item["labels"].to(images.device, non_blocking=True)

    def _error(self, error, items):
        return _name_bad_file(error, self.split, [item["indices"] for item in items])


def val_geometry(width: int, height: int, resize: int, crop: int) -> tuple[int, int, int, int]:
    """(new_w, new_h, left, top): torchvision's Resize(resize) then CenterCrop(crop), in pixels."""
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    return new_w, new_h, int(round((new_w - crop) / 2.0)), int(round((new_h - crop) / 2.0))


class DaliValLoader:
    """This process's share of the val set: every image counted once over all processes, no padding."""

    def __init__(self, split: Split, d, rank: int, world: int, batch: int, device):
        from bot.data.dali_pipeline import Runner, val_graph, val_inputs

        self.classes, self.batch_size, self.split, self.d = split.classes, batch, split, d
        self.indices = sampling.val_order(len(split), rank, world)
        self.padded = padded = d.crop == "padded"
        graph = lambda inputs, gpu: val_graph(inputs, d.image_size, gpu, d.mean, d.std, d.antialias,  # noqa: E731
                                              d.hw_decoder_load, padded)
        self.device = torch.device(device)
        self.runner = Runner(graph, val_inputs(padded), self._inputs, batch, d.workers, self.device, seed=0,
                             prefetch=d.prefetch)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def _inputs(self, item: dict) -> dict:
        """DALI's inputs for one batch of indices; the labels wait in `item` for __iter__."""
        jpegs, sizes, xs, ys, labels = [], [], [], [], []
        crop = self.d.image_size
        for index in item["indices"]:
            data, label = self.split.sample(int(index))
            width, height = image_size(data, self.split, int(index))
            jpegs.append(np.frombuffer(data, np.uint8))
            labels.append(label)
            if self.padded:  # the image as it is
                why = wrong_side(width, height, crop)
                if why:
                    raise UserError(f"{self.split.name(int(index))}: image {why}")
                continue
            new_w, new_h, left, top = val_geometry(width, height, self.d.val_resize, crop)
            sizes.append((new_h, new_w))
            # crop_x = trunc(pos * (new_w - crop)) lands on `left` exactly
            xs.append((left + 0.25) / (new_w - crop) if new_w > crop else 0.0)
            ys.append((top + 0.25) / (new_h - crop) if new_h > crop else 0.0)
        item["labels"] = torch.tensor(labels, dtype=torch.int64)
        return dict(jpegs=jpegs, size=np.asarray(sizes, np.float32), crop_x=np.asarray(xs, np.float32),
                    crop_y=np.asarray(ys, np.float32))

    def __iter__(self):
        b = self.batch_size
        items = [dict(indices=self.indices[i:i + b]) for i in range(0, len(self.indices), b)]
        for item, (images,) in self.runner.epoch(items, self._error):
            labels = item["labels"]
            if images.is_cuda:  # pinned: the copy does not hold the host
                labels = labels.pin_memory()
            yield images, labels.to(images.device, non_blocking=True)

    def _error(self, error, items):
        return _name_bad_file(error, self.split, [item["indices"] for item in items])


def build_dali_loaders(train: Split, val: Split, cfg, rank: int, world: int, batch: int, device):
    from bot.data.sizes import size_schedule

    return (DaliTrainLoader(train, cfg.data, cfg.run.seed, rank, world, batch, device, size_schedule(cfg)),
            DaliValLoader(val, cfg.data, rank, world, batch, device))
