"""Random-shape training (beyond the paper): the training crop side of each epoch.

`data.train_sizes` with `data.size_schedule`:
  random       every `data.size_every` epochs a size drawn uniformly from the list (YOLOv3's
               multi-scale training, per epoch block rather than per 10 batches, so that the
               loaders' batches keep one shape for a while)
  progressive  FFCV's progressive resizing: linear from the first size to the last over the
               run, in blocks of `data.size_every` epochs, rounded to a multiple of 32
               (ffcv-imagenet's get_resolution: np.round(res / 32) * 32)
The size is a pure function of (seed, epoch), so both loaders follow it and a resume at any
step gets the sizes an uninterrupted run got. Evaluation stays at `data.image_size`; so do
the MACs a run reports.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import numpy as np


def epoch_size(epoch: int, *, image_size: int, sizes: tuple[int, ...], every: int, schedule: str, epochs: int,
               seed: int) -> int:
    if not sizes:
        return image_size
    block = epoch // every
    if schedule == "random":
        return int(sizes[np.random.default_rng([seed, block, 0x512E]).integers(len(sizes))])
    blocks = math.ceil(epochs / every)
    t = block / (blocks - 1) if blocks > 1 else 1.0
    size = sizes[0] + (sizes[-1] - sizes[0]) * min(t, 1.0)
    return int(np.round(size / 32)) * 32


def size_schedule(cfg) -> Callable[[int], int]:
    """epoch -> training crop side, for the run `cfg` describes."""
    d = cfg.data
    return partial(epoch_size, image_size=d.image_size, sizes=tuple(d.train_sizes), every=d.size_every,
                   schedule=d.size_schedule, epochs=cfg.schedule.epochs, seed=cfg.run.seed)
