"""scripts/prepare_cifar.py: the official python archives (written here in their pickle format) to PNG class
folders and shards; bad archives, a full disk and a signal leave nothing."""

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import time

import numpy as np
from PIL import Image

from bot.cli import prepare_cifar
from bot.data.folder import scan_split
from conftest import ROOT, call_main, tmpfs

# ---------------------------------------------------------------- the archive


def py2_pickle(obj) -> bytes:
    """obj pickled as Python 2's cPickle writes it (protocol 2): bytes are py2 str (SHORT_BINSTRING,
    BINSTRING; Python 3 would write them as calls to _codecs.encode), a uint8 array as numpy 1
    reduces it (numpy.core.multiarray._reconstruct, then its state)."""
    out = bytearray(b"\x80\x02")

    def emit(o):
        if o is None or isinstance(o, bool):
            out.extend({None: b"N", True: b"\x88", False: b"\x89"}[o])
        elif isinstance(o, int):
            out.extend(b"K" + bytes([o]) if 0 <= o < 256 else b"J" + struct.pack("<i", o))
        elif isinstance(o, bytes):
            out.extend(b"U" + bytes([len(o)]) + o if len(o) < 256 else b"T" + struct.pack("<I", len(o)) + o)
        elif isinstance(o, tuple):
            out.extend(b"(")
            for x in o:
                emit(x)
            out.extend(b"t")
        elif isinstance(o, (list, dict)):
            out.extend(b"]" if isinstance(o, list) else b"}")
            if o:
                out.extend(b"(")
                for x in (o if isinstance(o, list) else [v for kv in o.items() for v in kv]):
                    emit(x)
                out.extend(b"e" if isinstance(o, list) else b"u")
        elif isinstance(o, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            emit((0,))
            emit(b"b")
            out.extend(b"\x87R(")  # TUPLE3, REDUCE; the state: (version, shape, dtype, fortran, bytes)
            emit(1)
            emit(o.shape)
            out.extend(b"cnumpy\ndtype\n")
            emit((b"u1", 0, 1))
            out.extend(b"R")
            emit((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")
            emit(False)
            emit(o.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    emit(obj)
    return bytes(out + b".")


CIFAR10 = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_tar(path, folder: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def cifar10_archive(path, per_batch: int = 6, test: int = 10, seed: int = 0) -> dict:
    """A small cifar-10-python.tar.gz as the official one is laid out, every class in both splits;
    returns {split: (rows, labels)}."""
    rng = np.random.default_rng(seed)
    truth = {split: (rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     [int(v) for v in rng.permutation(np.arange(n) % 10)])
             for split, n in (("train", 5 * per_batch), ("test", test))}
    files = {}
    for name, split, part in [*((f"data_batch_{i}", "train", slice((i - 1) * per_batch, i * per_batch))
                                for i in range(1, 6)), ("test_batch", "test", slice(None))]:
        rows, labels = truth[split]
        files[name] = py2_pickle({b"batch_label": name.encode(), b"labels": labels[part], b"data": rows[part],
                                  b"filenames": [b"img_%d.png" % i for i in range(len(labels[part]))]})
    files["batches.meta"] = py2_pickle({b"num_cases_per_batch": per_batch, b"label_names": CIFAR10, b"num_vis": 3072})
    files["readme.html"] = b"<html></html>"
    write_tar(path, "cifar-10-batches-py", files)
    return truth


def assert_converted(out, truth: dict, names: list[bytes]) -> None:
    """Every image of the archive, at its index, in its class's folder, pixel for pixel; labels as
    the loaders number the folders are the archive's."""
    for split, (rows, labels) in truth.items():
        found = scan_split(out, split)
        assert [c.split("_", 1)[1] for c in found.classes] == [n.decode() for n in names]
        assert len(found) == len(labels)
        index = {os.path.basename(f): (f, label) for f, label in zip(found.files, found.labels)}
        for i, (row, label) in enumerate(zip(rows, labels)):
            path, loader_label = index[f"{i:05d}.png"]
            assert loader_label == label
            with Image.open(path) as img:
                assert img.format == "PNG" and img.mode == "RGB" and img.size == (32, 32)
                pixels = np.asarray(img)
            assert (pixels == row.reshape(3, 32, 32).transpose(1, 2, 0)).all()  # channel-planar rows


def test_cifar10_archive_becomes_class_folders(tmp_path):
    truth = cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    out = tmp_path / "data" / "cifar10"
    done = call_main(prepare_cifar.main, tmp_path / "cifar-10-python.tar.gz", out)
    assert done.returncode == 0, done.stderr
    assert "30 train and 10 test images in 10 classes (00_airplane ... 09_truck)" in done.stdout
    assert sorted(os.listdir(out)) == ["test", "train"]
    assert sorted(os.listdir(out / "train")) == [f"{i:02d}_{n.decode()}" for i, n in enumerate(CIFAR10)]
    assert_converted(out, truth, CIFAR10)
    assert sorted(os.listdir(tmp_path / "data")) == ["cifar10"]  # nothing beside it


def test_cifar100_archive_uses_the_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    fine = [f"class{i:03d}".encode() for i in range(100)][::-1]  # label order is not name order
    truth, files = {}, {}
    for split, n in (("train", 150), ("test", 120)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [*range(100), *(int(v) for v in rng.integers(0, 100, n - 100))]  # every class in both splits
        files[split] = py2_pickle({b"filenames": [b"x.png"] * n, b"batch_label": split.encode(),
                                   b"fine_labels": labels, b"coarse_labels": [v // 5 for v in labels], b"data": data})
        truth[split] = (data, labels)
    files["meta"] = py2_pickle({b"fine_label_names": fine, b"coarse_label_names": [b"c%d" % i for i in range(20)]})
    write_tar(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", files)
    done = call_main(prepare_cifar.main, tmp_path / "cifar-100-python.tar.gz", tmp_path / "c100")
    assert done.returncode == 0, done.stderr
    assert "150 train and 120 test images in 100 classes (00_class099 ... 99_class000)" in done.stdout
    assert_converted(tmp_path / "c100", truth, fine)


def one_line_error(done, *words):
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_bad_archives_are_one_line_and_write_nothing(tmp_path):
    good = tmp_path / "cifar-10-python.tar.gz"
    cifar10_archive(good)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[:3000])
    binary = tmp_path / "cifar-10-binary.tar.gz"
    write_tar(binary, "cifar-10-batches-bin", {f"data_batch_{i}.bin": b"\0" * 3073 for i in range(1, 6)})
    evil = tmp_path / "evil.tar.gz"
    marker = tmp_path / "pwned"
    payload = b"\x80\x02cposix\nsystem\nU" + bytes([len(f"touch {marker}")]) + f"touch {marker}".encode() + b"\x85R."
    names = ["batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))]
    write_tar(evil, "cifar-10-batches-py", {n: payload for n in names})
    not_dict = tmp_path / "list.tar.gz"
    write_tar(not_dict, "cifar-10-batches-py", {n: py2_pickle([1, 2]) for n in names})
    out = tmp_path / "out"
    for archive, words in [(truncated, ["cannot read", "damaged or partial"]),
                           (binary, ["is not CIFAR's python version", "binary"]),
                           (evil, ["names posix.system", "not run"]),
                           (not_dict, ["is not a CIFAR batch", "list"]),
                           (tmp_path / "missing.tar.gz", ["does not exist"]),
                           (tmp_path, ["does not exist or is not a file"])]:
        one_line_error(call_main(prepare_cifar.main, archive, out), *words)
        assert not out.exists() and not marker.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_out_with_files_is_refused_and_kept(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    cifar10_archive(archive)
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "mine.txt").write_text("keep")
    one_line_error(call_main(prepare_cifar.main, archive, out), "exists and is not an empty folder")
    assert sorted(os.listdir(out)) == ["mine.txt", "train"] and (out / "mine.txt").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    assert call_main(prepare_cifar.main, archive, tmp_path / "empty").returncode == 0  # an empty folder is taken
    assert sorted(os.listdir(tmp_path / "empty")) == ["test", "train"]


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    cifar10_archive(archive, per_batch=80, test=20)  # 420 PNGs of noise: ~1.3 MiB
    disk = tmp_path / "disk"
    disk.mkdir()
    with tmpfs(disk, "mode=0777", "a full disk needs a tmpfs mount (root)"):
        (disk / "had.txt").write_text("kept")
        done = call_main(prepare_cifar.main, archive, disk / "new" / "cifar10")
        one_line_error(done, "cannot write", "No space left on device", "nothing was written")
        assert os.listdir(disk) == ["had.txt"] and (disk / "had.txt").read_text() == "kept"


def test_sigterm_while_writing_leaves_nothing(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    cifar10_archive(archive, per_batch=1000, test=10)  # ~2.5 s of PNGs: the signal comes in the middle
    out = tmp_path / "cifar10"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts/prepare_cifar.py"), str(archive), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / ".cifar10.partial" / "train" / "00_airplane"
    deadline = time.monotonic() + 60
    while not (partial.is_dir() and any(partial.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip() == "prepare_cifar: stopped by SIGTERM; nothing written"
    assert sorted(os.listdir(tmp_path)) == ["cifar-10-python.tar.gz"]


def test_shards_of_the_png_folder(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    truth = cifar10_archive(archive)
    done = call_main(prepare_cifar.main, archive, tmp_path / "c10", "--shards")
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "c10-wds" / "_info.json").read_text())
    assert {name: s["num_samples"] for name, s in info["splits"].items()} == {"train": 30, "test": 10}
    assert info["classes"] == [f"{i:02d}_{n.decode()}" for i, n in enumerate(CIFAR10)]
    with tarfile.open(tmp_path / "c10-wds" / info["splits"]["test"]["filenames"][0]) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar}
    rows, labels = truth["test"]
    assert len(files) == 2 * len(labels)
    for i, (row, label) in enumerate(zip(rows, labels)):  # each image's PNG under the archive's label
        key = f"{label:02d}_{CIFAR10[label].decode()}_{i:05d}"
        assert files[f"{key}.cls"] == str(label).encode()
        with Image.open(io.BytesIO(files[f"{key}.png"])) as img:
            assert (np.asarray(img) == row.reshape(3, 32, 32).transpose(1, 2, 0)).all()
    assert sorted(os.listdir(tmp_path)) == ["c10", "c10-wds", "cifar-10-python.tar.gz"]


def test_shards_into_a_folder_with_files_are_refused_first(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    cifar10_archive(archive)
    (tmp_path / "c10-wds").mkdir()
    (tmp_path / "c10-wds" / "mine.txt").write_text("keep")
    one_line_error(call_main(prepare_cifar.main, archive, tmp_path / "c10", "--shards"), "--shards", "not an empty")
    one_line_error(call_main(prepare_cifar.main, archive, tmp_path / "c10", "--shards", tmp_path / "c10" / "wds"),
                   "--shards", "a folder of its own")
    assert sorted(os.listdir(tmp_path)) == ["c10-wds", "cifar-10-python.tar.gz"]
    assert os.listdir(tmp_path / "c10-wds") == ["mine.txt"]
