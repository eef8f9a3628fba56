"""Which samples each process reads, in which order: a pure function of (seed, epoch).

The training order is a seeded permutation per epoch, split across processes by
striding, so shards are disjoint and together cover the epoch; the tail that does not
fill a batch on every process is dropped (a different tail each epoch). Because the
order is a function of (seed, epoch), a resumed run skips to its step without replaying
data. Validation is split without padding, so every image is counted exactly once.
"""

from __future__ import annotations

import numpy as np


def train_order(n: int, seed: int, epoch: int, rank: int, world: int, batch: int) -> np.ndarray:
    """Indices this process trains on in `epoch`, a whole number of `batch`es."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    steps = n // (world * batch)
    return perm[: steps * world * batch][rank::world]


def steps_per_epoch(n: int, world: int, batch: int) -> int:
    return n // (world * batch)


def val_order(n: int, rank: int, world: int) -> np.ndarray:
    """Every index once over all processes; shard sizes differ by at most one."""
    return np.arange(n)[rank::world]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch: independent of workers and resume."""
    return int(np.random.default_rng([seed, epoch, index]).integers(2**63))
