"""bot/data/sampling.py: which samples each process reads, and each sample's augmentation seed.

The properties a run depends on, checked on the functions themselves: every process trains on
whole batches, the processes never share a sample, together they take one step of the
one-process order (so a step's images do not depend on the number of processes), the dropped
tail moves between epochs, and validation counts every image once.
"""

import numpy as np
import pytest

from bot.data.sampling import sample_seed, steps_per_epoch, train_order, val_order


@pytest.mark.parametrize("n, world, batch, steps", [
    (1_281_167, 8, 128, 1251),  # ImageNet's train split on 8 processes of 128: 1,024 images a step
    (50_000, 1, 128, 390),      # CIFAR-10 on one process: the last 80 images wait for the next epoch
    (100, 2, 8, 6), (16, 2, 8, 1), (15, 2, 8, 0),
])
def test_steps_per_epoch_are_whole_global_batches(n, world, batch, steps):
    assert steps_per_epoch(n, world, batch) == steps
    assert all(len(train_order(n, 0, 0, r, world, batch)) == steps * batch for r in range(world))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_processes_share_no_sample_and_take_the_one_process_order_step_by_step(world):
    n, batch = 101, 4
    one = train_order(n, 7, 2, 0, 1, batch * world)  # one process with the global batch
    ranks = [train_order(n, 7, 2, r, world, batch) for r in range(world)]
    flat = np.concatenate(ranks)
    assert len(set(flat.tolist())) == len(flat)  # no sample twice, on one rank or across ranks
    assert flat.min() >= 0 and flat.max() < n
    for step in range(steps_per_epoch(n, world, batch)):
        taken = {int(i) for r in ranks for i in r[step * batch:(step + 1) * batch]}
        assert taken == set(one[step * batch * world:(step + 1) * batch * world].tolist())


def test_the_order_is_a_function_of_seed_and_epoch_and_the_tail_moves():
    n, batch = 50, 8  # 6 steps: 2 samples dropped each epoch
    a = train_order(n, 0, 0, 0, 1, batch)
    assert np.array_equal(a, train_order(n, 0, 0, 0, 1, batch))
    assert not np.array_equal(a, train_order(n, 0, 1, 0, 1, batch))
    assert not np.array_equal(a, train_order(n, 1, 0, 0, 1, batch))
    dropped = [set(range(n)) - set(train_order(n, 0, e, 0, 1, batch).tolist()) for e in range(20)]
    assert all(len(d) == n - 6 * batch for d in dropped)
    assert len({frozenset(d) for d in dropped}) > 15  # another tail nearly every epoch, not the files' last
    # the order is shuffled, not the files' order
    assert not np.array_equal(np.sort(a), a)


@pytest.mark.parametrize("n, world", [(10, 1), (10, 3), (7, 4), (3, 4)])
def test_validation_counts_every_image_once_with_shards_within_one(n, world):
    shards = [val_order(n, r, world) for r in range(world)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert val_order(n, 0, 1).tolist() == list(range(n))  # one process: in the folder's order


def test_sample_seeds_differ_by_seed_epoch_and_index_and_repeat_exactly():
    seeds = {(s, e, i): sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(isinstance(v, int) and 0 <= v < 2**63 for v in seeds.values())
    assert all(sample_seed(*k) == v for k, v in seeds.items())
    # not a sum of the parts: (seed, epoch, index) and its permutations draw apart
    assert sample_seed(1, 2, 3) != sample_seed(3, 2, 1) != sample_seed(2, 1, 3)
    # the full 63 bits are used, not a narrow range
    assert max(seeds.values()) > 2**62
