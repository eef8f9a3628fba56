"""Shards streamed over http(s) for the torch loader: data.root=https://host/path/ (the folder of _info.json).

Object stores serve whole files, not cheap offsets, so each shard is read once, front to
back, and its samples are mixed in a buffer (data.shuffle_buffer) as WebDataset and timm do.
An epoch stays a function of (seed, epoch), every worker yields the same number of batches,
a resume is exact, and a dropped connection is retried (TRIES, TIMEOUT_S), then named in one
line (docs/data.md, "Streaming over http(s)").
"""

from __future__ import annotations

import http.client
import io
import tarfile
import time
import urllib.error
import urllib.request

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bot.data import sampling
from bot.data.shards import CLASSES, IMAGE_EXTS, INFO, TRAIN_SPLITS, parse_info, parse_label, split_entry
from bot.data.shards import class_names, split_key, val_splits
from bot.data.torch_loader import CONTEXT, ImageFiles, decode
from bot.data.workers import worker_init, workers_without_main
from bot.errors import UserError

TIMEOUT_S, TRIES = 30.0, 5  # per read (socket timeout) and per shard


class Missing(UserError):
    """HTTP 404, or 403: what S3 answers for a missing object to a reader without list permission."""


class RemoteFile(io.RawIOBase):
    """A URL read front to back; a failed read reconnects (Range: from the byte reached)."""

    def __init__(self, url: str):
        self.url, self.pos, self.response, self.failures = url, 0, None, 0

    def readable(self) -> bool:
        return True

    def _open(self):
        headers = {"Range": f"bytes={self.pos}-"} if self.pos else {}
        response = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=TIMEOUT_S)
        if self.pos and response.status != 206:  # the server sent it all again: skip what was read
            left = self.pos
            while left:
                chunk = response.read(min(left, 1 << 20))
                if not chunk:
                    raise http.client.IncompleteRead(b"")
                left -= len(chunk)
        return response

    def readinto(self, buffer) -> int:
        while True:
            try:
                if self.response is None:
                    self.response = self._open()
                n = self.response.readinto(buffer)
                if not n and len(buffer) and self.response.length:  # closed before Content-Length: http.client's
                    raise http.client.IncompleteRead(b"", self.response.length)  # readinto says only "0 bytes"
                self.pos += n
                if n:  # TRIES counts failures in a row: a long shard on a flaky link may fail many times
                    self.failures = 0
                return n
            except urllib.error.HTTPError as e:
                if e.code < 500:  # 404, 403: asking again will not help
                    kind = Missing if e.code in (403, 404) else UserError
                    raise kind(f"cannot read {self.url}: HTTP {e.code} {e.reason}") from None
                why = f"HTTP {e.code} {e.reason}"
            except (OSError, http.client.HTTPException) as e:  # timeouts, resets, refused, cut short
                why = str(getattr(e, "reason", None) or e) or type(e).__name__
            self.close_response()
            self.failures += 1
            if self.failures >= TRIES:
                raise UserError(f"cannot read {self.url} (byte {self.pos}): {why}; gave up after {TRIES} tries "
                                f"of {TIMEOUT_S:g} s") from None
            time.sleep(min(0.2 * 2 ** self.failures, 5.0))

    def close_response(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None


def fetch(url: str) -> bytes:
    f = RemoteFile(url)
    try:
        return f.read()
    finally:
        f.close_response()


def fetch_text(url: str) -> str | None:
    """The text at `url`, None where the server has no such file."""
    try:
        return fetch(url).decode()
    except Missing:
        return None
    except UnicodeDecodeError:
        raise UserError(f"{url} is not UTF-8 text") from None


class StreamSplit:
    """One split of a shard folder behind a URL: classes, shard URLs and lengths, len()."""

    def __init__(self, base: str, classes: list[str], filenames: list[str], lengths: list[int]):
        self.base, self.classes, self.filenames, self.lengths = base, classes, filenames, lengths
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def samples(self, k: int):
        """(global index, image bytes, label) of shard k, in its order, checked as local shards are."""
        url, count, key = f"{self.base}/{self.filenames[k]}", 0, None
        group: dict[str, bytes] = {}

        def finish():
            image = next((group[e] for e in IMAGE_EXTS if e in group), None)
            where = lambda: f"shard {url}: sample {key}"  # noqa: E731
            if image is None or "cls" not in group:
                raise UserError(f"{where()} has no {'image' if image is None else '.cls member (its label)'}")
            return int(self.starts[k]) + count, image, parse_label(group["cls"], len(self.classes), where)

        remote = RemoteFile(url)
        try:
            with tarfile.open(fileobj=io.BufferedReader(remote, 1 << 20), mode="r|") as tar:
                for m in tar:
                    if not m.isreg():
                        continue
                    k_, ext = split_key(m.name)
                    if key is not None and k_ != key:
                        yield finish()
                        count, group = count + 1, {}
                    key, group[ext.lower()] = k_, tar.extractfile(m).read()
            if key is not None:
                yield finish()
                count += 1
        except tarfile.TarError as e:
            raise UserError(f"shard {url} is truncated or not a tar (after sample {key}): {e}") from None
        finally:
            remote.close_response()
        if count != self.lengths[k]:
            raise UserError(f"shard {url} holds {count} samples, {INFO} says {self.lengths[k]}")

    def key(self, k: int, j: int) -> str:
        """The key of sample j of shard k (read again: only a bad image's message needs it)."""
        remote, keys = RemoteFile(f"{self.base}/{self.filenames[k]}"), []
        try:
            with tarfile.open(fileobj=io.BufferedReader(remote, 1 << 20), mode="r|") as tar:
                for m in tar:
                    key = split_key(m.name)[0]
                    if m.isreg() and (not keys or keys[-1] != key):
                        keys.append(key)
                        if len(keys) > j:
                            return key
        finally:
            remote.close_response()
        return f"number {j}"


def open_stream(base: str, val_split: str = "val") -> tuple[StreamSplit, StreamSplit]:
    """(train, held-out split `val_split`) of the shard folder at URL `base`: its _info.json
    (and classes.txt where that names no classes) alone."""
    base = base.rstrip("/")
    info = parse_info(fetch(f"{base}/{INFO}").decode(), f"{base}/{INFO}")
    classes = class_names(base, info, lambda: fetch_text(f"{base}/{CLASSES}"))
    train, val = (split_entry(base, info, names) for names in (TRAIN_SPLITS, val_splits(val_split)))
    return (StreamSplit(base, classes, train["filenames"], train["shard_lengths"]),
            StreamSplit(base, classes, val["filenames"], val["shard_lengths"]))


# ---------------------------------------------------------------- the order


def worker_shards(shards: int, seed: int, epoch: int, worker: int, workers: int) -> list[int]:
    """The shards global worker `worker` of `workers` reads in `epoch`, in order."""
    return np.random.default_rng([seed, epoch]).permutation(shards)[worker::workers].tolist()


def batches_per_worker(lengths: list[int], workers: int, batch: int) -> int:
    """Whole batches every worker can fill in any epoch: each gets at least shards // workers
    shards, each holding at least the shortest shard's count."""
    return (len(lengths) // workers) * min(lengths) // batch


def buffer_shuffle(items, size: int, rng: np.random.Generator):
    """WebDataset's shuffle: fill a buffer of `size`, then yield a random one of it for each new item."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = int(rng.integers(size))
        buffer[k], item = item, buffer[k]
        yield item
    while buffer:
        yield buffer.pop(int(rng.integers(len(buffer))))


def chain(split: StreamSplit, shards: list[int]):
    for k in shards:
        yield from split.samples(k)


# ---------------------------------------------------------------- the datasets and loaders


class StreamTrain(IterableDataset):
    """One process's training samples of an epoch, streamed: per worker, its shards through a buffer."""

    def __init__(self, split: StreamSplit, images, seed: int, rank: int, world: int, batch: int, workers: int,
                 buffer: int, size_of):
        self.split, self.images, self.seed, self.rank, self.world, self.batch = split, images, seed, rank, world, batch
        self.workers, self.buffer, self.size_of, self.epoch, self.start = max(1, workers), buffer, size_of, 0, 0
        total = world * self.workers
        if len(split.filenames) < total:
            raise UserError(f"{len(split.filenames)} training shards cannot feed {world} process(es) x {self.workers} "
                            f"worker(s): streaming needs one shard per worker at least (lower data.workers, or write "
                            f"smaller shards: bot-make-shards --shard-samples)")
        self.per_worker = batches_per_worker(split.lengths, total, batch)
        if self.per_worker < 1:
            raise UserError(f"the {len(split.filenames)} training shards give {total} worker(s) less than one batch of "
                            f"{batch} each: write smaller shards or lower data.workers")

    def __iter__(self):
        info = get_worker_info()
        return self.worker_samples(info.id if info else 0)

    def worker_samples(self, worker: int):
        """The samples loader worker `worker` of this process yields this epoch, from the start step on."""
        # The loader takes batch k from worker k mod workers, starting at worker 0: after a resume
        # at step `start` worker w plays the part worker (w + start) mod workers had in the epoch.
        part = (worker + self.start) % self.workers
        g = self.rank * self.workers + part
        skip = max(0, -(-(self.start - part) // self.workers)) * self.batch  # its batches before `start`
        rng = np.random.default_rng([self.seed, self.epoch, g, 1])
        stream = buffer_shuffle(chain(self.split, worker_shards(len(self.split.filenames), self.seed, self.epoch, g,
                                                                self.world * self.workers)), self.buffer, rng)
        size = self.size_of(self.epoch)
        for n, (index, data, label) in enumerate(stream):
            if n >= self.per_worker * self.batch:
                return
            if n >= skip:
                seed = sampling.sample_seed(self.seed, self.epoch, index)
                yield self.images.augment(self.images.decode(data, index), seed, size), label


class StreamVal(IterableDataset):
    """One process's validation samples, streamed in shard order: shard k to global worker k mod all."""

    def __init__(self, split: StreamSplit, images, rank: int, world: int, workers: int):
        self.split, self.images, self.rank, self.world, self.workers = split, images, rank, world, max(1, workers)

    def shards(self, w: int) -> list[int]:
        total = self.world * self.workers
        return list(range(self.rank * self.workers + w, len(self.split.filenames), total))

    def __iter__(self):
        info = get_worker_info()
        for index, data, label in chain(self.split, self.shards(info.id if info else 0)):
            yield self.images.evaluate(data, index), label


class StreamImages:
    """Decoding and the transforms of the torch loader (torch_loader.ImageFiles) for bytes from a stream."""

    def __init__(self, split: StreamSplit, transform=None, train=None):
        self.files, self.split, self.transform = ImageFiles(None, transform, train), split, transform

    def name(self, index: int) -> str:
        """Where sample `index` comes from, for a message: its shard's URL and its key."""
        k = int(np.searchsorted(self.split.starts, index, side="right")) - 1
        return f"{self.split.base}/{self.split.filenames[k]} (sample {self.split.key(k, int(index - self.split.starts[k]))})"

    def decode(self, data: bytes, index: int):
        return decode(data, lambda: self.name(index), "")

    def evaluate(self, data: bytes, index: int):
        """The val transform of one sample; its own error (an image of another size, data.crop=padded)
        is named with the shard and key, as a local file is named."""
        try:
            return self.transform(self.decode(data, index))
        except UserError as e:
            raise UserError(f"{self.name(index)}: {e}") from None

    def augment(self, image, seed: int, size: int):
        return self.files.augment(image, seed, size)


class StreamTrainLoader:
    """The interface of torch_loader.TrainLoader over a StreamTrain. Workers are started for each
    epoch (not persistent), so each gets the epoch and start step set here."""

    def __init__(self, data: StreamTrain, loader: DataLoader):
        self.data, self.loader = data, loader
        self.classes, self.batch_size = data.split.classes, data.batch
        self.steps = data.per_worker * data.workers

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.data.epoch, self.data.start = epoch, start_step

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        with workers_without_main():
            return iter(self.loader)


class StreamValLoader:
    def __init__(self, data: StreamVal, loader: DataLoader, batch: int):
        self.data, self.loader, self.classes = data, loader, data.split.classes
        lengths = data.split.lengths
        self.batches = sum(-(-sum(lengths[k] for k in data.shards(w)) // batch) for w in range(data.workers))

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        with workers_without_main():
            return iter(self.loader)


def worker_args(d, pin: bool) -> dict:
    return dict(num_workers=d.workers, pin_memory=pin, multiprocessing_context=CONTEXT if d.workers else None,
                worker_init_fn=worker_init(CONTEXT) if d.workers else None)


def stream_loaders(train: StreamSplit, val: StreamSplit, cfg, rank: int, world: int, batch: int, pin: bool):
    from bot.data.sizes import size_schedule

    d = cfg.data
    data = StreamTrain(train, StreamImages(train, train=d), cfg.run.seed, rank, world, batch, d.workers,
                       d.shuffle_buffer, size_schedule(cfg))
    return (StreamTrainLoader(data, DataLoader(data, batch_size=batch, drop_last=True, **worker_args(d, pin))),
            stream_val_loader(val, d, rank, world, batch, pin))


def stream_val_loader(val: StreamSplit, d, rank: int, world: int, batch: int, pin: bool) -> StreamValLoader:
    """Validation streamed: every sample once over all processes (shard k to global worker k mod all)."""
    from bot.data.transforms import val_transform

    data = StreamVal(val, StreamImages(val, val_transform(d)), rank, world, d.workers)
    return StreamValLoader(data, DataLoader(data, batch_size=batch, **worker_args(d, pin)), batch)
