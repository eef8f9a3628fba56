"""CIFAR: gluon-cv's networks (bot/models/cifar.py) and the archive converter (scripts/prepare_cifar.py)."""

import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bot.cli import prepare_cifar
from bot.config import load
from bot.data.folder import scan_split
from bot.models import build_model, count_params_macs
from bot.models.cifar import CIFAR_ARCHS, BlockV1, BlockV2, cifar_resnet, cifar_wrn
from bot.train.optim import param_groups
from conftest import ROOT, call_main, tmpfs

# ---------------------------------------------------------------- the networks


def gluoncv_count(arch: str, classes: int = 10) -> tuple[int, int]:
    """(trainable parameters, MACs at 32 px) of gluon-cv's network, walked from its definition
    (gluon-cv:gluoncv/model_zoo/cifarresnet.py, cifarwideresnet.py), not from ours: convs without
    bias, BN gamma + beta, the classifier's weight and bias. The input BN (scale=False,
    center=False) trains nothing; MXNet keeps a fixed gamma and beta there, not counted."""
    params = macs = 0

    def conv(cin, cout, k, side):
        nonlocal params, macs
        params, macs = params + cin * cout * k * k, macs + cin * cout * k * k * side * side

    def bn(c):
        nonlocal params
        params += 2 * c

    name = arch.removeprefix("cifar_")
    wide = name.startswith("wrn")
    if wide:
        depth, k = map(int, name.removeprefix("wrn").split("_"))
        n, widths, preact = (depth - 4) // 6, [16 * k, 32 * k, 64 * k], True
    else:
        depth, version = name.removeprefix("resnet").split("_v")
        n, widths, preact = (int(depth) - 2) // 6, [16, 32, 64], version == "2"
    conv(3, 16, 3, 32)
    if wide or not preact:
        bn(16)  # v1's stem BN; the WRN's BN after its first conv
    cin, side = 16, 32
    for i, c in enumerate(widths):
        for j in range(n):
            side = side // 2 if i and j == 0 else side
            if preact:
                bn(cin)
            conv(cin, c, 3, side)
            bn(c)
            conv(c, c, 3, side)
            if not preact:
                bn(c)
            if cin != c:  # projection shortcut: 1x1 conv (+ BN in v1)
                conv(cin, c, 1, side)
                if not preact:
                    bn(c)
            cin = c
    if preact:
        bn(cin)
    return params + cin * classes + classes, macs + cin * classes


# Parameters for 10 classes and MACs at 32 px. ResNet v1: He et al. 2016's 0.27 M / 0.85 M / 1.7 M
# are these less gluon-cv's two projection shortcuts (2,752: He et al.'s CIFAR nets pad with zeros);
# WRN-28-10: Zagoruyko and Komodakis' 36.5 M. MXNet 1.9.1 on gluon-cv's own files counts 272,474,
# 272,282 and 17,116,666 trainable parameters for resnet20_v1, resnet20_v2 and wrn16_10.
TABLE = {
    "cifar_resnet20_v1": (272_474, 40_813_184), "cifar_resnet56_v1": (855_770, 125_747_840),
    "cifar_resnet110_v1": (1_730_714, 253_149_824), "cifar_resnet20_v2": (272_282, 40_813_184),
    "cifar_resnet56_v2": (855_578, 125_747_840), "cifar_resnet110_v2": (1_730_522, 253_149_824),
    "cifar_wrn16_10": (17_116_666, 2_412_173_568), "cifar_wrn28_10": (36_479_226, 5_243_328_768),
    "cifar_wrn40_8": (35_748_346, 5_172_024_320),
}


def cifar_cfg(arch, *overrides):
    return load(None, [f"model.arch={arch}", *overrides])


def test_table_is_gluoncvs_definition():
    assert set(TABLE) == set(CIFAR_ARCHS)
    assert {arch: gluoncv_count(arch) for arch in TABLE} == TABLE


@pytest.mark.parametrize("arch", list(TABLE))
def test_params_and_macs_are_gluoncvs(arch):
    with torch.device("meta"):  # no memory, no init cost: shapes are all that is counted
        model = build_model(cifar_cfg(arch), num_classes=10)
        assert count_params_macs(model, 32) == TABLE[arch]
        assert sum(p.numel() for p in build_model(cifar_cfg(arch), num_classes=100).parameters()) == \
            gluoncv_count(arch, 100)[0]


def fill(model: nn.Module) -> None:
    """docs/cifar/gluoncv_logits.py's weights: tensor i of the state_dict (gluon-cv's parameter order)
    from its own generator, 1-D ones in [0.5, 1.5], the others in +-sqrt(3 / fan_in)."""
    tensors = [t for name, t in model.state_dict().items() if not name.endswith("num_batches_tracked")]
    for i, t in enumerate(tensors):
        rng = np.random.default_rng([2019, i])
        if t.dim() == 1:
            value = rng.uniform(0.5, 1.5, tuple(t.shape))
        else:
            bound = math.sqrt(3 / math.prod(t.shape[1:]))
            value = rng.uniform(-bound, bound, tuple(t.shape))
        t.copy_(torch.from_numpy(value.astype(np.float32)))


@pytest.mark.parametrize("name, make", [("cifar_resnet20_v1", lambda: cifar_resnet(20, 1, 10)),
                                        ("cifar_resnet20_v2", lambda: cifar_resnet(20, 2, 10)),
                                        ("cifar_wrn16_2", lambda: cifar_wrn(16, 2, 10))])
def test_same_logits_as_gluoncv(name, make):
    """gluon-cv's networks, run by MXNet on the same weights (tests/fixtures/gluoncv_cifar_logits.json):
    the order of every layer, where each shortcut starts, the stems and heads must all be gluon-cv's
    for these to agree (WRN-16-2: the WRN's structure, small)."""
    reference = json.loads((ROOT / "tests/fixtures/gluoncv_cifar_logits.json").read_text())["logits"][name]
    model = make().eval()
    fill(model)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logits, torch.tensor(reference), rtol=1e-4, atol=1e-4)


def blocks(model):
    return [m for m in model.modules() if isinstance(m, (BlockV1, BlockV2))]


@pytest.mark.parametrize("arch, init", [("cifar_resnet20_v1", "xavier"), ("cifar_resnet20_v2", "msra"),
                                        ("cifar_wrn16_10", "kaiming")])
def test_zero_gamma_starts_every_block_as_its_shortcut_and_every_branch_trains(arch, init):
    torch.manual_seed(0)
    model = build_model(cifar_cfg(arch, "model.zero_gamma=true", f"model.init={init}"), num_classes=10).train()
    ends = [b.bn2 if isinstance(b, BlockV1) else b.conv2 for b in blocks(model)]
    assert len(ends) == {"cifar_resnet20_v1": 9, "cifar_resnet20_v2": 9, "cifar_wrn16_10": 6}[arch]
    for block, end in zip(blocks(model), ends):
        assert not end.weight.any()
        kept = [m.weight for m in block.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) and m is not end]
        assert all(w.any() for w in kept)  # shortcut BNs and convs, the other layers: their init

    def identity(block, inputs, output):
        x, = inputs
        if isinstance(block, BlockV1):
            shortcut = block.act(x if block.downsample is None else block.downsample(x))
        elif block.downsample is None:
            shortcut = x
        else:
            shortcut = block.downsample(block.act(block.bn1(x)) if block.project_preactivated else x)
        torch.testing.assert_close(output, shortcut)

    hooks = [b.register_forward_hook(identity) for b in blocks(model)]
    model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
    for h in hooks:
        h.remove()
    assert all(end.weight.grad.abs().sum() > 0 for end in ends)  # the branches can leave 0

    if isinstance(blocks(model)[0], BlockV2):  # why not bn2 there: ReLU's gradient at exact 0 is 0
        block = blocks(model)[1]
        nn.init.zeros_(block.bn2.weight)
        nn.init.normal_(block.conv2.weight)
        model.zero_grad()
        model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
        assert not block.bn2.weight.grad.any() and not block.bn2.bias.grad.any()
        assert not block.conv2.weight.grad.any() and not block.conv1.weight.grad.any()


def test_no_zero_gamma_means_no_zero_weight():
    model = build_model(cifar_cfg("cifar_resnet20_v1"), num_classes=10)
    assert all(m.weight.any() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)))


@pytest.mark.parametrize("init", ["xavier", "msra", "kaiming"])
@pytest.mark.parametrize("arch", ["cifar_resnet20_v1", "cifar_resnet20_v2"])
def test_init_reaches_every_layer(arch, init):
    """xavier (gluon-cv's CIFAR scripts: mx.init.Xavier(), uniform, magnitude 3), msra, kaiming
    (timm's ResNet: normal, std sqrt(2 / fan_out)) on every conv and the classifier; BN 1 and 0,
    and the input BN of v2, which has neither, left alone."""
    torch.manual_seed(0)
    model = build_model(cifar_cfg(arch, f"model.init={init}"), num_classes=10)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and init != "kaiming"):
            fan_in, fan_out = m.weight[0].numel(), m.weight.shape[0] * m.weight[0, 0].numel()
            if init == "xavier":
                bound = math.sqrt(6 / (fan_in + fan_out))
                assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound, name
            else:
                std = math.sqrt((2 / (1 + 0.25 ** 2)) / ((fan_in + fan_out) / 2)) if init == "msra" else \
                    math.sqrt(2 / fan_out)
                assert m.weight.std().item() == pytest.approx(std, rel=0.35 if m.weight.numel() < 1000 else 0.1), name
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            assert (m.weight == 1).all() and not m.bias.any(), name
    if arch.endswith("v2"):
        assert not model.stem[0].affine


def test_no_bias_decay_decays_conv_and_fc_weights_only():
    model = build_model(cifar_cfg("cifar_resnet20_v2"), num_classes=10)
    decay, rest = param_groups(model, 1e-4, no_bias_decay=True)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert {id(p) for p in decay["params"]} == {id(p) for p in weights}
    assert len(weights) == 1 + 3 * 3 * 2 + 2 + 1  # stem, 9 blocks x 2, 2 projections, fc
    assert rest["weight_decay"] == 0 and len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))
    assert all(p.dim() == 1 for p in rest["params"])  # BN gammas and betas, the fc bias


@pytest.mark.parametrize("arch", ["cifar_resnet20_v1", "cifar_resnet20_v2"])
def test_trains_a_step_with_another_activation(arch):
    torch.manual_seed(0)
    model = build_model(cifar_cfg(arch, "model.act=silu", "model.zero_gamma=true"), num_classes=10)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == 9 + (arch.endswith("v2"))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert nn.functional.cross_entropy(model(x), y) != loss and model(x).shape == (8, 10)


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
