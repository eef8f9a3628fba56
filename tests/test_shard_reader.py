"""bot/data/shards.py's reader in one process: what a loader worker receives, descriptors closed,
the held-out split opened alone, and an index never lost to a failed write.

tests/test_shards.py trains and evaluates on shards end to end; these check the pieces a
worker process or a command other than train.py uses, where an end-to-end run would not notice.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import pytest

from bot.data import shards as shards_module
from bot.data.shards import Shard, index_path, index_tar, open_shards, open_val_shards, parse_label, read_index
from bot.data.shards import split_key, write_index
from bot.errors import UserError


def test_the_held_out_split_opened_alone_is_the_pairs(toy_shards):
    _, val = open_shards(toy_shards)
    alone = open_val_shards(toy_shards)
    assert (alone.classes, alone.filenames, alone.lengths) == (val.classes, val.filenames, val.lengths)
    assert len(alone) == len(val) == 32
    assert [alone.sample(i) for i in range(len(alone))] == [val.sample(i) for i in range(len(val))]
    assert [alone.name(i) for i in (0, 31)] == [val.name(i) for i in (0, 31)]
    for split in ("validation", "test"):  # val's other name; another split, looked up as it is
        errors = []
        for opener in (open_shards, open_val_shards):
            try:
                errors.append(opener(toy_shards, split) and None)
            except UserError as e:
                errors.append(str(e))
        assert errors[0] == errors[1]
    assert errors[0] == (f"{toy_shards}/_info.json has no split test (it has ['train', 'validation']; "
                             "data.val_split names the held-out one)")


def test_the_held_out_split_alone_takes_its_classes_from_classes_txt(toy_shards, tmp_path):
    root = without_class_names(toy_shards, tmp_path)
    with pytest.raises(UserError) as alone:
        open_val_shards(root)
    with pytest.raises(UserError) as pair:
        open_shards(root)
    assert str(alone.value) == str(pair.value) and "names no classes" in str(alone.value)
    (root / "classes.txt").write_text("a\nb\n\nc\nd\n")
    assert open_val_shards(root).classes == open_shards(root)[1].classes == ["a", "b", "c", "d"]


def without_class_names(shards, tmp_path):
    """A copy of `shards`' _info.json (only) that names no classes."""
    root = tmp_path / "shards"
    root.mkdir()
    info = json.loads((shards / "_info.json").read_text())
    del info["classes"]
    (root / "_info.json").write_text(json.dumps(info))
    return root


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
    root = without_class_names(toy_shards, tmp_path)
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


@pytest.mark.parametrize("text", [
    "",                                   # empty
    "v1.1 2\njpg 0 1 a.jpg\njpg 1 1 b.jpg\n",  # another version
    "v1.2 two\njpg 0 1 a.jpg\njpg 1 1 b.jpg\n",  # a count that is no number
    "v1.2 3\njpg 0 1 a.jpg\njpg 1 1 b.jpg\n",  # a count that is not the lines'
    "v1.2 2 x\njpg 0 1 a.jpg\njpg 1 1 b.jpg\n",  # three fields
    "v1.2 2\njpg 0 1 a.jpg\njpg 1 b.jpg\n",    # a member of three fields
])
def test_a_bad_index_is_one_line_saying_how_to_rewrite_it(tmp_path, text):
    index = tmp_path / "train-000000.idx"
    index.write_text(text)
    with pytest.raises(UserError) as e:
        read_index(index)
    assert str(e.value) == (f"index {index} is not a v1.2 index of wds2idx (rewrite it: bot-make-shards --index "
                            f"{tmp_path})")


def test_a_good_index_reads_back_as_written(tmp_path):
    index = tmp_path / "train-000000.idx"
    samples = [[("jpg", 0, 10, "a.jpg"), ("cls", 512, 1, "a.cls")], [("png", 1024, 7, "b.png"), ("cls", 1536, 2, "b.cls")]]
    write_index(samples, index)
    assert index.read_text().splitlines()[0] == "v1.2 2"
    assert read_index(index) == samples


@pytest.mark.parametrize("text, line", [
    (b"3\n", None), (b" 0", None),
    (b"4", "sample k has label 4, outside the 4 classes (0 to 3)"),
    (b"-1", "sample k has label -1, outside the 4 classes (0 to 3)"),
    (b"three", "sample k has label b'three', not an integer"),
    (b"\xff\xfe", "sample k has label b'\\xff\\xfe', not an integer"),
    (b"x" * 30, "sample k has label b'xxxxxxxxxxxxxxxxxxxx', not an integer"),  # the first 20 bytes
])
def test_labels_are_integers_within_the_classes(text, line):
    if line is None:
        assert parse_label(text, 4, lambda: "sample k") == int(text)
        return
    with pytest.raises(UserError) as e:
        parse_label(text, 4, lambda: "sample k")
    assert str(e.value) == line


def test_a_shard_cut_short_after_it_was_opened_names_the_sample(toy_shards, tmp_path):
    tar = tmp_path / "train-000000.tar"
    shutil.copy(toy_shards / "train-000000.tar", tar)
    shutil.copy(toy_shards / "train-000000.idx", tmp_path)
    shard = Shard(tar, 10, 4)
    image_at = int(shard.spans[9][0])
    os.truncate(tar, image_at + 5)  # the last image's first bytes only
    key = read_index(tmp_path / "train-000000.idx")[9][0][3].rsplit(".", 1)[0]
    assert shard.sample(0)[1] == parse_label(b"0", 4, str)  # an earlier sample still reads
    with pytest.raises(UserError) as e:
        shard.sample(9)
    assert str(e.value) == f"shard {tar} is truncated at sample {key}"


# ---------------------------------------------------------------- a folder's _info.json, word for word

TRAIN = {"filenames": ["train-000000.tar"], "shard_lengths": [10], "num_samples": 10}
VAL = {"filenames": ["val-000000.tar"], "shard_lengths": [4], "num_samples": 4}


@pytest.mark.parametrize("text, line", [
    (None, "cannot read {root}/_info.json: No such file or directory"),
    ("{'splits': 1}", "{root}/_info.json is not JSON: Expecting property name enclosed in double quotes: "
                      "line 1 column 2 (char 1)"),
    ("[]", "{root}/_info.json has no 'splits' (timm's layout: splits -> name, num_samples, filenames, shard_lengths)"),
    ('{"splits": []}', "{root}/_info.json has no 'splits' (timm's layout: splits -> name, num_samples, filenames, "
                       "shard_lengths)"),
    (dict(val=VAL), "{root}/_info.json has no split train (it has ['val'])"),
    (dict(train=TRAIN), "{root}/_info.json has no split validation or val (it has ['train']; data.val_split names "
                        "the held-out one)"),
    (dict(train={"filenames": ["a.tar"], "num_samples": 1}, val=VAL),
     "{root}/_info.json: split train lacks filenames, shard_lengths or num_samples ('shard_lengths')"),
    (dict(train=dict(TRAIN, shard_lengths=[5, 5]), val=VAL),
     "{root}/_info.json: split train has 1 filenames, 2 shard_lengths summing to 10, and num_samples 10: they must agree"),
    (dict(train=dict(TRAIN, num_samples=11), val=VAL),
     "{root}/_info.json: split train has 1 filenames, 1 shard_lengths summing to 10, and num_samples 11: they must agree"),
    (dict(train=TRAIN, val=dict(filenames=[], shard_lengths=[], num_samples=0)),
     "{root}/_info.json: split val has 0 filenames, 0 shard_lengths summing to 0, and num_samples 0: they must agree"),
])
def test_a_bad_info_json_is_one_line_naming_what_is_wrong(tmp_path, text, line):
    root = tmp_path / "shards"
    root.mkdir()
    if isinstance(text, dict):
        text = json.dumps({"splits": text, "classes": ["a", "b"]})
    if text is not None:
        (root / "_info.json").write_text(text)
    for opener in (open_shards, open_val_shards):
        if opener is open_val_shards and "split train" in line:
            continue  # evaluation reads the held-out split alone
        with pytest.raises(UserError) as e:
            opener(root)
        assert str(e.value) == line.format(root=root)


def test_an_empty_classes_txt_is_one_line(toy_shards, tmp_path):
    root = without_class_names(toy_shards, tmp_path)
    (root / "classes.txt").write_text("\n \n")
    with pytest.raises(UserError) as e:
        open_shards(root)
    assert str(e.value) == f"{root}/classes.txt is empty: write one class name a line, in label order"


# ---------------------------------------------------------------- tars and their members


@pytest.mark.parametrize("name, key, ext", [
    ("n01440764_10026.JPEG", "n01440764_10026", "JPEG"),
    ("key.seg.png", "key", "seg.png"),          # the first dot of the basename
    ("dir/v1.2/key.jpg", "dir/v1.2/key", "jpg"),  # dots of folders are not the key's
    ("noext", "noext", ""),
    (".hidden", "", "hidden"),
    ("a/.b.jpg", "a/", "b.jpg"),
])
def test_member_names_split_into_key_and_extension_as_webdataset_does(name, key, ext):
    assert split_key(name) == (key, ext)


@pytest.mark.parametrize("tar, index", [
    ("d/train-000001.tar", "d/train-000001.idx"),
    ("d/imagenet.train-0001.tar", "d/imagenet.idx"),  # wds2idx's default: up to the first dot
])
def test_index_path_is_wds2idx_default(tar, index):
    assert index_path(Path(tar)) == Path(index)


def add(tar, name, data=b"", kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_index_skips_folders_and_hidden_files_and_groups_by_key(tmp_path):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        add(tar, "sub", kind=tarfile.DIRTYPE)
        add(tar, ".hidden", b"x")
        add(tar, "a.jpg", b"1234")
        add(tar, "a.cls", b"0")
        add(tar, "sub/.DS_Store", b"y")
        add(tar, "link", kind=tarfile.SYMTYPE)
        add(tar, "b.png", b"12")
        add(tar, "b.cls", b"1")
    samples = index_tar(path)
    assert [[(ext, size, name) for ext, _, size, name in s] for s in samples] == [
        [("jpg", 4, "a.jpg"), ("cls", 1, "a.cls")], [("png", 2, "b.png"), ("cls", 1, "b.cls")]]
    data = path.read_bytes()
    assert [data[off:off + size] for s in samples for _, off, size, _ in s] == [b"1234", b"0", b"12", b"1"]


def test_a_file_that_is_no_plain_tar_is_one_line(tmp_path):
    gz = tmp_path / "s.tar"
    with tarfile.open(gz, "w:gz") as tar:  # compressed: its offsets are not the file's
        add(tar, "a.jpg", b"1234")
    with pytest.raises(UserError, match=f"^shard {gz} is not a readable tar: "):
        index_tar(gz)
    cut = tmp_path / "cut.tar"
    with tarfile.open(cut, "w", format=tarfile.GNU_FORMAT) as tar:
        for k in range(3):
            add(tar, f"k{k}.jpg", b"x" * 600)
    data = cut.read_bytes()
    cut.write_bytes(data[:2 * 1536 + 512 + 100])  # two samples whole, then a header and part of its data
    with pytest.raises(UserError, match=f"^shard {cut} is not a readable tar after sample k2: unexpected end"):
        index_tar(cut)


def one_sample_shard(tmp_path, members):
    path = tmp_path / "one.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            add(tar, name, data)
    return path


def test_a_sample_without_an_image_or_a_label_is_named(tmp_path):
    path = one_sample_shard(tmp_path, [("k.txt", b"hello"), ("k.cls", b"0")])
    with pytest.raises(UserError) as e:
        Shard(path, 1, 2)
    assert str(e.value) == f"shard {path}: sample k has no image (.jpg/.jpeg/.png/.webp/.bmp/.tif/.tiff)"
    path = one_sample_shard(tmp_path, [("k.JPG", b"12")])
    with pytest.raises(UserError) as e:
        Shard(path, 1, 2)
    assert str(e.value) == f"shard {path}: sample k has no .cls member (its label)"
    path = one_sample_shard(tmp_path, [("k.JPG", b"12"), ("k.CLS", b"1")])  # extensions in any case
    assert Shard(path, 1, 2).sample(0) == (b"12", 1)


def test_truncation_is_found_at_the_first_sample_past_the_end(toy_shards, tmp_path):
    tar = tmp_path / "train-000000.tar"
    members = read_index(toy_shards / "train-000000.idx")
    cls_end = [s[1][1] + s[1][2] for s in members]  # each sample's label ends it
    keys = [s[0][3].rsplit(".", 1)[0] for s in members]
    data = (toy_shards / "train-000000.tar").read_bytes()
    shutil.copy(toy_shards / "train-000000.idx", tmp_path)  # the index as written; the tar cut short since
    for size, bad in ((cls_end[8], 9), (cls_end[8] + 1, 9), (members[9][1][1], 9), (cls_end[5] - 1, 5)):
        tar.write_bytes(data[:size])
        with pytest.raises(UserError) as e:
            Shard(tar, 10, 4)
        assert str(e.value) == (f"shard {tar} is truncated: sample {keys[bad]} ends at byte {cls_end[bad]}, "
                                f"the file has {size}")
    tar.write_bytes(data[:cls_end[9]])  # every sample whole, the tar's end blocks gone: readable
    shard = Shard(tar, 10, 4)
    assert [shard.sample(j) for j in range(10)] == [Shard(toy_shards / "train-000000.tar", 10, 4).sample(j)
                                                    for j in range(10)]


def test_a_label_cut_after_the_shard_was_opened_is_named(toy_shards, tmp_path):
    tar = tmp_path / "train-000000.tar"
    shutil.copy(toy_shards / "train-000000.tar", tar)
    shutil.copy(toy_shards / "train-000000.idx", tmp_path)
    shard = Shard(tar, 10, 4)
    os.truncate(tar, int(shard.spans[9][2]))  # the image whole, its label gone
    key = read_index(tmp_path / "train-000000.idx")[9][0][3].rsplit(".", 1)[0]
    with pytest.raises(UserError) as e:
        shard.sample(9)
    assert str(e.value) == f"shard {tar} is truncated at sample {key}"


def test_a_bad_label_in_a_shard_names_shard_and_sample(tmp_path):
    path = one_sample_shard(tmp_path, [("k.png", b"12"), ("k.cls", b"7")])
    with pytest.raises(UserError) as e:
        Shard(path, 1, 4).sample(0)
    assert str(e.value) == f"shard {path}: sample k has label 7, outside the 4 classes (0 to 3)"


def test_a_label_stored_before_its_image_still_finds_a_cut_image(tmp_path):
    path = one_sample_shard(tmp_path, [("k.cls", b"1"), ("k.png", b"x" * 600)])  # the image ends the sample
    write_index(index_tar(path), index_path(path))
    image_at = read_index(index_path(path))[0][1][1]
    os.truncate(path, image_at + 100)
    with pytest.raises(UserError) as e:
        Shard(path, 1, 2)
    assert str(e.value) == f"shard {path} is truncated: sample k ends at byte {image_at + 600}, the file has {image_at + 100}"


def test_at_most_open_shards_hold_a_descriptor_the_least_recently_read_closing(toy_shards, monkeypatch):
    """The cap (OPEN_SHARDS; 1,024 shards would exceed `ulimit -n` 1024 in every worker): reading a
    third shard closes the one read longest ago, and a shard is checked once and kept."""
    monkeypatch.setattr(shards_module, "OPEN_SHARDS", 2)
    train, _ = open_shards(toy_shards)
    first = {i: train.sample(i) for i in (0, 10, 20, 5, 30)}  # shards 0, 1, 2, 0, 3
    assert list(train.open) == [0, 3]  # 1 and 2 closed, in that order; 0 was read again before 3
    assert [train.shards[k].fd is None for k in range(4)] == [False, True, True, False]
    kept = [train.shard(k) for k in range(4)]
    assert [train.shard(k) for k in range(4)] == kept and all(a is b for a, b in zip(kept, map(train.shard, range(4))))
    assert {i: train.sample(i) for i in first} == first  # reopened where needed, the same bytes
    assert len(train.open) == 2
