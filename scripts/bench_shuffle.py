"""How well streamed shards are mixed: mean per-batch class entropy against an i.i.d. shuffle.

    python scripts/bench_shuffle.py [--classes 100 --per-class 1300 --shard-samples 1250
                                     --processes 8 --workers 4 --batch 64 --buffer 2000]

Runs the streaming loader's own order (bot.data.stream: the seeded shard permutation, shard
k to global worker k mod processes x workers, each worker's buffer shuffle, whole batches
per worker) on labels alone, no images, for two shard sets of the same ImageNet-like
labels: written shuffled (bot-make-shards' default) and in label order (--no-shuffle). A
batch's entropy is that of its class histogram (bits); the reference is the same batches
cut from one uniform permutation, as local shards and folders are read. Also prints the
buffer's memory: buffer x the mean encoded ImageNet image (110 KB) per loader worker.
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bot.data.stream import StreamSplit, StreamTrain  # noqa: E402

IMAGENET_MEAN_BYTES = 110_000  # 1,281,167 training JPEGs in about 140 GB


class LabelShards(StreamSplit):
    """Shards that hold labels only: samples(k) yields (index, b"", label) as a stream would."""

    def __init__(self, labels: np.ndarray, shard_samples: int, classes: int):
        lengths = [len(labels[i:i + shard_samples]) for i in range(0, len(labels), shard_samples)]
        super().__init__("labels://", [str(c) for c in range(classes)], [f"{k}.tar" for k in range(len(lengths))],
                         lengths)
        self.labels = labels

    def samples(self, k: int):
        for i in range(int(self.starts[k]), int(self.starts[k + 1])):
            yield i, b"", int(self.labels[i])


class Indices:
    def decode(self, data, index):
        return index

    def augment(self, image, seed, size):
        return image


def entropy(batch_labels: np.ndarray, classes: int) -> float:
    p = np.bincount(batch_labels, minlength=classes) / len(batch_labels)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def stream_batches(split: LabelShards, args, epoch: int = 0) -> list[np.ndarray]:
    batches = []
    for rank in range(args.processes):
        data = StreamTrain(split, Indices(), 0, rank, args.processes, args.batch, args.workers, args.buffer,
                           lambda e: 224)
        data.epoch = epoch
        for w in range(args.workers):
            order = np.fromiter((split.labels[i] for i, _ in data.worker_samples(w)), np.int64)
            batches += list(order.reshape(-1, args.batch))
    return batches


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=1300)
    ap.add_argument("--shard-samples", type=int, default=1250)
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64, help="per-process batch")
    ap.add_argument("--buffer", type=int, default=2000, help="data.shuffle_buffer")
    args = ap.parse_args(argv)
    ordered = np.repeat(np.arange(args.classes), args.per_class)
    rng = np.random.default_rng(0)
    iid = [b for b in rng.permutation(ordered)[: len(ordered) // args.batch * args.batch].reshape(-1, args.batch)]
    reference = np.mean([entropy(b, args.classes) for b in iid])
    print(f"{len(ordered):,} samples, {args.classes} classes, shards of {args.shard_samples}, {args.processes} processes "
          f"x {args.workers} workers, batch {args.batch}, buffer {args.buffer}")
    print(f"i.i.d. shuffle: mean per-batch class entropy {reference:.3f} bits (uniform over {args.classes}: "
          f"{np.log2(args.classes):.3f})")
    for name, labels in (("write-shuffled shards", rng.permutation(ordered)), ("label-ordered shards", ordered)):
        batches = stream_batches(LabelShards(labels, args.shard_samples, args.classes), args)
        mean = np.mean([entropy(b, args.classes) for b in batches])
        print(f"{name}: {mean:.3f} bits, {mean / reference:.1%} of i.i.d. ({len(batches) * args.batch:,} samples used)")
    print(f"buffer memory: {args.buffer} x {IMAGENET_MEAN_BYTES / 1e3:.0f} KB = {args.buffer * IMAGENET_MEAN_BYTES / 2**20:.0f} "
          f"MiB per loader worker, {args.buffer * IMAGENET_MEAN_BYTES * args.workers / 2**30:.2f} GiB per process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
