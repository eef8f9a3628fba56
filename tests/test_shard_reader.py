"""bot/data/shards.py's reader in one process: what a loader worker receives, descriptors closed,
the held-out split opened alone, and an index never lost to a failed write.

tests/test_shards.py trains and evaluates on shards end to end; these check the pieces a
worker process or a command other than train.py uses, where an end-to-end run would not notice.
"""

from __future__ import annotations

import errno
import os
import pickle

import pytest

from bot.data import shards as shards_module
from bot.data.shards import Shard, open_shards, open_val_shards, read_index, write_index
from bot.errors import UserError


def test_the_held_out_split_opened_alone_is_the_pairs(toy_shards):
    _, val = open_shards(toy_shards)
    alone = open_val_shards(toy_shards)
    assert (alone.classes, alone.filenames, alone.lengths) == (val.classes, val.filenames, val.lengths)
    assert len(alone) == len(val) == 32
    assert [alone.sample(i) for i in range(len(alone))] == [val.sample(i) for i in range(len(val))]
    assert [alone.name(i) for i in (0, 31)] == [val.name(i) for i in (0, 31)]
    with pytest.raises(UserError, match="test"):  # another split name is looked up, not val's
        open_val_shards(toy_shards, "test")


def test_a_split_reaches_a_worker_without_open_files_and_reads_the_same(toy_shards):
    train, _ = open_shards(toy_shards)
    first = [train.sample(i) for i in (0, 15, 95)]  # opens shards 0, 1 and 9
    assert len(train.open) == 3 and len(train.shards) == 3
    copy = pickle.loads(pickle.dumps(train))
    assert copy.open == {} and copy.shards == {}  # descriptors are not inherited, nor indexes
    assert len(train.open) == 3  # the original keeps its own
    assert copy.lock is not train.lock and copy.lock.acquire(blocking=False)
    copy.lock.release()
    assert [copy.sample(i) for i in (0, 15, 95)] == first
    assert (len(copy), copy.classes) == (len(train), train.classes)


def test_a_sample_is_named_by_its_shard_and_key(toy_shards):
    train, _ = open_shards(toy_shards)
    index = read_index(toy_shards / "train-000001.idx")
    key = index[5][0][3].rsplit(".", 1)[0]
    assert train.name(15) == f"{toy_shards / 'train-000001.tar'} (sample {key})"


def test_close_gives_the_descriptor_back(toy_shards):
    shard = Shard(toy_shards / "train-000000.tar", 10, 4)
    assert shard.fd is None  # nothing opened until a sample is read
    data, label = shard.sample(3)
    fd = shard.fd
    os.fstat(fd)
    shard.close()
    assert shard.fd is None
    with pytest.raises(OSError):
        os.fstat(fd)
    assert shard.sample(3) == (data, label)  # and reopens on the next read
    shard.close()
    shard.close()  # twice is harmless


def test_an_unreadable_classes_txt_is_one_line(toy_shards, tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    info = (toy_shards / "_info.json").read_text()
    (root / "_info.json").write_text(info.replace('"classes"', '"no_classes"'))
    (root / "classes.txt").mkdir()  # not a file
    with pytest.raises(UserError) as e:
        open_shards(root)
    assert str(e.value) == f"cannot read {root / 'classes.txt'}: Is a directory"


def test_a_failed_index_write_keeps_the_old_index_and_leaves_no_temporary(toy_shards, tmp_path, monkeypatch):
    out = tmp_path / "a.idx"
    samples = read_index(toy_shards / "train-000000.idx")
    write_index(samples, out)
    before = out.read_bytes()
    assert read_index(out) == samples

    def cut_short():  # a sample that cannot be written, half way through
        yield samples[0]
        raise RuntimeError("interrupted")

    class Listed(list):
        def __iter__(self):
            return cut_short()

    with pytest.raises(RuntimeError, match="interrupted"):
        write_index(Listed(samples), out)
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["a.idx"]

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shards_module, "open", full_disk, raising=False)
    with pytest.raises(OSError) as e:  # the disk's error, not one about the missing temporary
        write_index(samples, out)
    assert e.value.errno == errno.ENOSPC
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["a.idx"]
