"""WebDataset shards: written by bot-make-shards, read by timm and DALI's tools, and by both
loaders with the same batches as the folder they were made from; resume, bad input, the
hub's layout, Hugging Face sources. Real tar files, real DALI (CPU), real torchrun."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch
from conftest import ROOT, call_main, run_cli

from bot import config
from bot.cli.make_shards import main as make_shards_main
from bot.cli.make_shards import make_shards, shard_lengths
from bot.data import open_dataset
from bot.data.folder import scan_dataset
from bot.data.shards import index_path, index_tar, open_shards, read_index, write_index
from bot.data.torch_loader import TrainLoader, ValLoader
from bot.errors import UserError
from bot.train.trainer import train

TINY = ["data.image_size=32", "data.batch_size=8", "data.workers=0", "model.arch=resnet18", "model.variant=D",
        "model.width=0.25", "schedule.epochs=2", "run.log_every=1"]


@pytest.fixture(scope="module")
def shards(toy_shards):
    """The toy data as shards in its own (label) order, so index i is the same image in both."""
    return toy_shards  # tests/conftest.py: 10 samples a shard


@pytest.fixture(scope="module")
def shuffled(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("shuffled") / "toy"
    make_shards(toy, out, seed=3, shard_samples=7, progress=False)
    return out


def members(tar_path):
    with tarfile.open(tar_path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


# ---------------------------------------------------------------- writing


def test_layout_index_and_timm_read_what_we_write(toy, shuffled, tmp_path):
    pytest.importorskip("webdataset")
    from timm.data import create_dataset
    from wds2idx import IndexCreator

    info = json.loads((shuffled / "_info.json").read_text())
    train, val = scan_dataset(str(toy))
    assert info["classes"] == train.classes and set(info["splits"]) == {"train", "validation"}
    assert info["splits"]["train"]["num_samples"] == len(train) == sum(info["splits"]["train"]["shard_lengths"])
    # each sample: the file's bytes unchanged + its label; shuffled (not in label order)
    first = members(shuffled / info["splits"]["train"]["filenames"][0])
    names = [n for n, _ in first]
    assert names[0].endswith(".jpg") and names[1] == names[0][:-3] + "cls"
    label_of = {open(f, "rb").read(): label for f, label in zip(train.files, train.labels)}
    assert [label_of[data] for _, data in first[::2]] == [int(cls) for _, cls in first[1::2]]
    # the index is byte for byte what DALI's wds2idx writes
    tar = shuffled / info["splits"]["train"]["filenames"][1]
    with IndexCreator(str(tar), str(tmp_path / "theirs.idx"), verbose=False) as ic:
        ic.create_index()
    assert (tmp_path / "theirs.idx").read_text() == index_path(tar).read_text()
    # timm's own WebDataset reader: the same counts, and the same labels in shard order
    ours_train, ours_val = open_shards(shuffled)
    for split, ours in (("train", ours_train), ("validation", ours_val)):
        theirs = [int(t) for _, t in create_dataset("wds/toy", root=str(shuffled), split=split, batch_size=1)]
        assert theirs == [ours.sample(i)[1] for i in range(len(ours))]
    assert sorted(ours_train.sample(i)[1] for i in range(len(ours_train))) == sorted(train.labels)


def test_an_interrupted_run_continues_where_it_stopped(toy, tmp_path, monkeypatch):
    import bot.cli.make_shards as ms

    whole = tmp_path / "whole"
    make_shards(toy, whole, shard_samples=16, progress=False)
    real, calls = ms.write_shard, []

    def dies_on_the_third(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[2].name)
        real(*args)

    monkeypatch.setattr(ms, "write_shard", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        make_shards(toy, tmp_path / "cut", shard_samples=16, progress=False)
    assert not (tmp_path / "cut/_info.json").exists()
    monkeypatch.setattr(ms, "write_shard", lambda *a: calls.append(a[2].name) or real(*a))
    make_shards(toy, tmp_path / "cut", shard_samples=16, progress=False)
    assert calls[:2] == ["train-000000.tar", "train-000001.tar"] and "train-000000.tar" not in calls[2:]
    for f in whole.iterdir():
        assert (tmp_path / "cut" / f.name).read_bytes() == f.read_bytes(), f.name
    with pytest.raises(UserError, match="other settings"):
        make_shards(toy, tmp_path / "cut", shard_samples=8, progress=False)


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("where, says", [("SRC", "is SRC"), ("inside SRC", "is inside SRC"),
                                         ("holding SRC", "is inside OUT"), ("a run folder", "not empty"),
                                         ("an ImageNet folder", "not empty")])
def test_an_out_that_is_not_the_shards_own_is_refused_in_one_line_leaving_nothing(toy, tmp_path, where, says):
    """Written there, _info.json would make data.root read that folder as shards."""
    src = tmp_path / "data/toy"
    shutil.copytree(toy, src)
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "last.pt"):
        (run / name).write_text("a run's\n")
    imagenet = tmp_path / "imagenet"
    (imagenet / "train/n01440764").mkdir(parents=True)
    (imagenet / "val/n01440764").mkdir(parents=True)
    out = {"SRC": src, "inside SRC": src / "wds", "holding SRC": tmp_path / "data", "a run folder": run,
           "an ImageNet folder": imagenet}[where]
    before = files_under(tmp_path)
    done = call_main(make_shards_main, src, out)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert says in done.stderr
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("fault", ["a class folder without images", "an empty image file"])
def test_a_failed_run_leaves_no_folder_it_made_and_an_empty_out_empty(toy, tmp_path, fault):
    src = tmp_path / "src"
    shutil.copytree(toy, src)
    if fault == "a class folder without images":  # found while reading SRC, before anything is written
        (src / "train/zzz").mkdir()
    else:  # found while writing the first shard
        (next((src / "train").iterdir()) / "empty.jpg").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new/shards", tmp_path / "empty"):  # made by the run (two levels), and there before
        done = call_main(make_shards_main, src, out)
        assert done.returncode == 2 and "\nerror: " in "\n" + done.stderr, done.stderr  # after the progress bar
    assert not (tmp_path / "new").exists() and list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("form", ["save_to_disk", "parquet"])
def test_hugging_face_dataset_as_source(toy, tmp_path, form):
    datasets = pytest.importorskip("datasets")
    train, val = scan_dataset(str(toy))
    features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=train.classes))
    dd = datasets.DatasetDict({name: datasets.Dataset.from_dict(
        {"image": [{"bytes": open(f, "rb").read(), "path": None} for f in s.files], "label": s.labels}, features=features)
        for name, s in (("train", train), ("validation", val))})
    src = tmp_path / "hf"
    if form == "save_to_disk":
        dd.save_to_disk(str(src))
    else:
        for name, ds in dd.items():
            ds.to_parquet(str(src / f"{name}-00000-of-00001.parquet"))
    make_shards(src, tmp_path / "out", shuffle=False, shard_samples=50, progress=False)
    got_train, got_val = open_shards(tmp_path / "out")
    assert got_train.classes == train.classes and len(got_val) == len(val)
    assert all(got_train.sample(i) == train.sample(i) for i in range(len(train)))  # bytes as stored, labels
    assert not (tmp_path / "out/.hf-cache").exists()  # datasets' arrow copy of the parquet files is gone


# ---------------------------------------------------------------- reading: the same batches as the folder


def loaders(root, backend, rank=0, world=1):
    cfg = config.load(None, [f"data.root={root}", f"data.backend={backend}", *TINY])
    train_split, val_split = open_dataset(str(root))
    if backend == "torch":
        return (TrainLoader(train_split, cfg.data, 5, rank, world, 8, pin=False),
                ValLoader(val_split, cfg.data, rank, world, 8, pin=False))
    from bot.data.dali import DaliTrainLoader, DaliValLoader
    return (DaliTrainLoader(train_split, cfg.data, 5, rank, world, 8, "cpu"),
            DaliValLoader(val_split, cfg.data, rank, world, 8, "cpu"))


@pytest.mark.parametrize("backend", ["torch", "dali"])
@pytest.mark.parametrize("rank, world", [(0, 1), (1, 2)])  # (1, 2): the second of 2 processes
def test_both_loaders_give_the_folders_batches(toy, shards, backend, rank, world):
    """Also mid-epoch, as a resumed run asks: with the folder's batches, a run on shards resumes
    as on the folder (tests/test_preempt.py stops and resumes real runs on shards)."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    (folder_train, folder_val), (shard_train, shard_val) = loaders(toy, backend, rank, world), \
        loaders(shards, backend, rank, world)
    assert shard_train.classes == folder_train.classes
    for loader in (folder_train, shard_train):
        loader.set_epoch(1, start_step=3)  # mid-epoch, as a resumed run asks
    for (a, la), (b, lb) in zip(list(folder_train)[:3], list(shard_train)[:3], strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    folder, ours = list(folder_val), list(shard_val)
    assert len(folder) == len(ours) and all(torch.equal(a, b) and torch.equal(x, y)
                                           for (a, x), (b, y) in zip(folder, ours))


def test_opening_reads_only_info_json(shards, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(shards / "_info.json", copy)  # no tar at all: opening still works
    train_split, val_split = open_dataset(str(copy))
    assert len(train_split) == 96 and len(val_split) == 32
    with pytest.raises(UserError, match="train-000000.tar"):
        train_split.sample(0)


def test_resume_mid_epoch_is_bit_exact_on_shards(shuffled, tmp_path):
    small = lambda out, *extra: config.load(None, [f"data.root={shuffled}", f"run.out={out}", *TINY, *extra])  # noqa: E731
    whole = train(small(tmp_path / "whole", "run.max_steps=6"))
    assert train(small(tmp_path / "part", "run.max_steps=4"))["steps"] == 4  # mid-epoch 0 (12 steps an epoch)
    again = train(small(tmp_path / "part", "run.max_steps=6"))
    assert whole["steps"] == again["steps"] == 6
    a, b = (torch.load(tmp_path / f"{r}/last.pt", weights_only=False)["model"] for r in ("whole", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_val_top1_under_two_processes_equals_one_and_the_folder(toy, shards, tmp_path, capsys):
    from bot.cli.evaluate import main as evaluate

    out = tmp_path / "run"
    train(config.load(None, [f"data.root={shards}", f"run.out={out}", *TINY, "run.max_steps=1"]))
    args = lambda root: [str(out / "last.pt"), f"data.root={root}", "data.batch_size=6"]  # noqa: E731
    two = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "scripts/evaluate.py",
                  *args(shards))
    assert two.returncode == 0, two.stderr[-2000:]
    capsys.readouterr()
    # one process, on the shards and on the folder: a run trained on shards evaluates on the folder
    assert evaluate(args(shards)) == 0 and evaluate(args(toy)) == 0, capsys.readouterr().err[-2000:]
    one, folder = (part for part in capsys.readouterr().out.split("| test size") if "| 32" in part)
    assert ": 32 images" in two.stdout
    row = lambda text: next(line for line in text.splitlines() if line.startswith("| 32"))  # noqa: E731
    assert row(two.stdout) == row(one) == row(folder)


# ---------------------------------------------------------------- the hub's layout


def hub_layout(toy, out):
    """timm/imagenet-1k-wds as the hub has it: flat, jpg/cls/json members, no class names, no index."""
    out.mkdir()
    info = {"name": "toy-wds", "splits": {}}
    for split, folder in (("train", "train"), ("validation", "val")):
        s = scan_dataset(str(toy))[folder == "val"]
        files = []
        for k in range(2):
            name = f"toy-{split}-{k:04d}.tar"
            with tarfile.open(out / name, "w") as tar:
                for i in range(k, len(s), 2):
                    key = f"{split}_{i:05d}"
                    for ext, data in (("cls", str(s.labels[i]).encode()), ("jpg", open(s.files[i], "rb").read()),
                                      ("json", json.dumps({"label": s.labels[i]}).encode())):
                        member = tarfile.TarInfo(f"{key}.{ext}")
                        member.size = len(data)
                        tar.addfile(member, io.BytesIO(data))
            files.append(name)
        info["splits"][split] = {"name": split, "num_samples": len(s), "filenames": files,
                                 "shard_lengths": [len(range(k, len(s), 2)) for k in range(2)]}
    (out / "_info.json").write_text(json.dumps(info))
    return out


def test_the_hubs_layout_trains_with_class_names_from_classes_txt(toy, tmp_path, capsys):
    """Shards whose _info.json names no classes (the hub's, webdataset's own writers): ImageNet's
    1000 names only for ImageNet-1k itself; any other set stops, in one line, until classes.txt
    names them. A 1000-way head on the 4-class toy set trained silently before."""
    from bot.cli.train import main

    root = hub_layout(toy, tmp_path / "hub")
    args = [f"data.root={root}", f"run.out={tmp_path / 'run'}", *TINY, "run.max_steps=2", "data.backend=dali"]
    assert main(["recipes/baseline.yaml", *args]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {root} names no classes (_info.json has no 'classes' and there is no classes.txt beside it): "
        f"write {root}/classes.txt, one class name a line in label order"]
    assert not (tmp_path / "run").exists()
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    assert train(config.load(None, args))["steps"] == 2
    assert torch.load(tmp_path / "run/last.pt", weights_only=False)["classes"] == ["a", "b", "c", "d"]
    imagenet = tmp_path / "imagenet-1k-wds"  # the hub's ImageNet: _info.json alone is read to open it
    imagenet.mkdir()
    info = json.loads((root / "_info.json").read_text())
    info["splits"]["train"].update(num_samples=1281167, shard_lengths=[1281167], filenames=["train-0000.tar"])
    (imagenet / "_info.json").write_text(json.dumps(info))
    classes = open_dataset(str(imagenet))[0].classes
    assert len(classes) == 1000 and classes[:2] == ["n01440764", "n01443537"]  # ImageNet-1k's, sorted


def test_a_folder_of_tars_without_info_json_says_how_to_write_it_and_then_trains(toy, tmp_path, capsys):
    hub = hub_layout(toy, tmp_path / "hub")
    root = tmp_path / "tars"
    root.mkdir()
    for tar in hub.glob("*.tar"):
        shutil.copy(tar, root)
    with pytest.raises(UserError) as e:
        open_dataset(str(root))
    assert str(e.value) == (f"data folder {root} holds shards (toy-train-0000.tar ...) but no _info.json, which lists "
                            f"them: write it with python scripts/make_shards.py --index {root}")
    assert make_shards_main(["--index", str(root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{root}/_info.json: train: 96 samples in 2 shards", f"{root}/_info.json: validation: 32 samples in 2 shards",
        f"note: it names no classes: write {root}/classes.txt, one class name a line in label order (the hub's "
        f"ImageNet-1k alone is known without)"]
    written = json.loads((root / "_info.json").read_text())
    assert written["splits"] == json.loads((hub / "_info.json").read_text())["splits"]  # counts from the tar headers
    assert sorted(p.name for p in root.glob("*.idx")) == ["toy-train-0000.idx", "toy-train-0001.idx",
                                                          "toy-validation-0000.idx", "toy-validation-0001.idx"]
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    (hub / "classes.txt").write_text("a\nb\nc\nd\n")
    ours, theirs = open_dataset(str(root)), open_dataset(str(hub))
    for a, b in zip(ours, theirs):
        assert [a.sample(i) for i in range(len(a))] == [b.sample(i) for i in range(len(b))]
    pytest.importorskip("webdataset")
    from timm.data import create_dataset
    assert len(list(create_dataset("wds/toy", root=str(root), split="validation", batch_size=1))) == 32


FD_CAP = """
import os, random, resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from bot.data import shards

shards.OPEN_SHARDS = 4
train, _ = shards.open_shards(Path(sys.argv[1]))


def open_tars():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").endswith(".tar")
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return n


_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + shards.OPEN_SHARDS + 3, hard))
most = 0
for epoch in range(2):
    order = list(range(len(train)))
    random.Random(epoch).shuffle(order)
    for i in order:
        train.sample(i)
        most = max(most, open_tars())
print(len(train.filenames), most)
"""


def test_open_shards_stay_under_the_cap_under_a_low_descriptor_limit(toy, tmp_path):
    """Two shuffled epochs over 48 shards with OPEN_SHARDS 4, under a descriptor limit a few
    above what the process had: a shard closed for the cap and read again must close again."""
    make_shards(toy, tmp_path / "many", shuffle=False, shard_samples=2, progress=False)
    done = subprocess.run([sys.executable, "-c", FD_CAP, str(tmp_path / "many"), str(ROOT)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["48", "4"]  # 48 shards, never more than 4 of them open


def test_progress_off_a_terminal_is_plain_lines(toy, tmp_path, capsys):
    """Into a pipe or a log file, make_shards writes whole lines (no carriage-return bar)."""
    make_shards(toy, tmp_path / "out", shuffle=False, shard_samples=2, progress=True)
    tars = sorted((tmp_path / "out").glob("*.tar"))
    for tar in tars:
        index_path(tar).unlink()
    shard_lengths(tars * 2, workers=1)  # 64 or more shards: the index pass reports too
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert any(line.startswith(f"shards -> {tmp_path / 'out'}: ") and "(100%)" in line for line in lines), err
    assert any(line.startswith(f"index: {len(tars) * 2}/{len(tars) * 2} shard (100%)") for line in lines), err


# ---------------------------------------------------------------- bad input: one line naming shard and key


def broken(shards, tmp_path, how):
    root = tmp_path / "bad"
    shutil.copytree(shards, root)
    tar = root / "train-000000.tar"
    samples = read_index(index_path(tar))
    if how == "truncated tar":
        with open(tar, "r+b") as f:
            f.truncate(samples[-1][0][1] + 10)  # into the last sample's image
    elif how == "label out of range":
        _, offset, size, _ = samples[3][1]
        with open(tar, "r+b") as f:
            f.seek(offset)
            f.write(b"9".ljust(size))
    elif how == "sample without label":
        with tarfile.open(shards / "train-000000.tar") as src, tarfile.open(tar, "w") as dst:
            for m in src:
                if m.name != samples[2][1][3]:
                    dst.addfile(m, src.extractfile(m))
        write_index(index_tar(tar), index_path(tar))
    elif how == "count disagrees with _info.json":
        info = json.loads((root / "_info.json").read_text())
        info["splits"]["train"]["shard_lengths"][:2] = [11, 9]
        (root / "_info.json").write_text(json.dumps(info))
    elif how == "missing index file":  # made on the fly: not an error
        index_path(tar).unlink()
    return root, tar, [s[0][3].split(".")[0] for s in samples]


@pytest.mark.parametrize("how, line", [
    ("truncated tar", "shard {tar} is truncated: sample {key9} ends at byte"),
    ("label out of range", "shard {tar}: sample {key3} has label 9, outside the 4 classes (0 to 3)"),
    ("sample without label", "shard {tar}: sample {key2} has no .cls member (its label)"),
    ("count disagrees with _info.json", "shard {tar} holds 10 samples, _info.json says 11"),
    ("missing index file", None),
])
def test_bad_shards_are_one_line_naming_shard_and_key(shards, tmp_path, how, line):
    root, tar, keys = broken(shards, tmp_path, how)
    train_split, _ = open_dataset(str(root))
    if line is None:
        assert [train_split.sample(i) for i in range(10)] == [open_dataset(str(shards))[0].sample(i) for i in range(10)]
        return
    expected = line.format(tar=tar, key9=keys[9], key3=keys[3], key2=keys[2])
    with pytest.raises(UserError) as e:
        [train_split.sample(i) for i in range(10)]
    assert str(e.value).startswith(expected), str(e.value)


def test_a_bad_shard_stops_training_with_exit_2_and_one_line(shards, tmp_path, capsys):
    from bot.cli.train import main

    root, tar, keys = broken(shards, tmp_path, "label out of range")
    assert main(["recipes/baseline.yaml", f"data.root={root}", f"run.out={tmp_path / 'run'}", *TINY,
                 "data.workers=1"]) == 2  # the error comes from a loader worker
    assert capsys.readouterr().err.strip().splitlines() == [f"error: shard {tar}: sample {keys[3]} has label 9, "
                                                            f"outside the 4 classes (0 to 3)"]
