"""predict in timm's conventions (bot/artifacts/predictions.py), evaluate's and predict's progress
off a terminal, evaluate's note on --sizes, and slim's warning on an unpenalized network.

The model is the trainer's checkpoint of tests/fixtures (resnet18-D, width 1/16, 16 px, the
toy classes): no training here.
"""

import csv
import io
import json
import re
import shutil
import sys

import pytest
import torch
from conftest import ROOT

from bot.cli import evaluate, predict, progress, slim
from bot.data.torch_loader import decode
from bot.data.transforms import val_transform
from bot.artifacts import trained

FIXTURE = ROOT / "tests/fixtures/last-numpy-rng.pt"


@pytest.fixture(scope="module")
def images(toy, tmp_path_factory):
    """Two val images of each toy class, a .gif and a text file in the same folders."""
    folder = tmp_path_factory.mktemp("images")
    for cls in sorted((toy / "val").iterdir()):
        for jpg in sorted(cls.glob("*.jpg"))[:2]:
            (folder / cls.name).mkdir(exist_ok=True)
            shutil.copy(jpg, folder / cls.name / jpg.name)
    from PIL import Image

    Image.open(next(folder.rglob("*.jpg"))).save(folder / "frame.gif")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def reference(files, k, overrides=()):
    """(indices, probabilities) of the top k classes, computed here from the checkpoint."""
    from bot.cli.overrides import checkpoint_config

    info = trained.read(FIXTURE)
    transform = val_transform(checkpoint_config(info, list(overrides)).data)
    with torch.no_grad():
        probs = trained.build(info)(torch.stack([transform(decode(str(f), hint="")) for f in files])).softmax(1)
    p, i = probs.topk(k, dim=1)
    return i.tolist(), p.tolist()


def test_predict_writes_timm_columns_in_every_format(images, tmp_path, capsys):
    outs = {fmt: tmp_path / f"p.{fmt}" for fmt in ("csv", "json", "jsonl", "parquet")}
    for out in outs.values():
        assert predict.main([str(FIXTURE), str(images), "--topk", "2", "--include-index", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "not read from the folders: 2 file(s) without an image suffix (1 .gif, 1 .txt)" in err
    files = sorted(images.rglob("*.jpg"))
    indices, probs = reference(files, 2)
    names = trained.read(FIXTURE).classes
    expected = [{"filename": str(f), "index": i, "label": [names[k] for k in i], "prob": [round(q, 6) for q in p]}
                for f, i, p in zip(files, indices, probs)]

    raw = outs["csv"].read_bytes()
    assert b"\r" not in raw and raw.startswith(b"filename,index,label,prob\n")  # LF, timm's columns
    rows = [{k: v if k == "filename" else json.loads(v) for k, v in r.items()}
            for r in csv.DictReader(io.StringIO(raw.decode()))]
    assert rows == expected  # the same batch as predict's: the same numbers
    keyed = json.loads(outs["json"].read_text())  # one object keyed by filename
    assert [{"filename": name, **value} for name, value in keyed.items()] == rows
    assert [json.loads(line) for line in outs["jsonl"].read_text().splitlines()] == rows  # one object a line
    import pyarrow.parquet

    assert pyarrow.parquet.read_table(outs["parquet"]).to_pylist() == rows  # list columns


def test_predict_top1_scalars_and_separate_columns(images, tmp_path):
    files = sorted(images.rglob("*.jpg"))
    names = trained.read(FIXTURE).classes
    indices, probs = reference(files, 1)
    assert predict.main([str(FIXTURE), str(images), "--out", str(tmp_path / "one.jsonl")]) == 0  # --topk 1
    one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert [(r["label"], r["prob"]) for r in one] == [(names[i[0]], round(p[0], 6)) for i, p in zip(indices, probs)]
    assert predict.main([str(FIXTURE), str(images), "--topk", "3", "--results-separate-col", "--include-index",
                         "--out", str(tmp_path / "sep.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sep.csv")))
    assert list(rows[0]) == ["filename", "index_0", "index_1", "index_2", "label_0", "label_1", "label_2",
                             "prob_0", "prob_1", "prob_2"]
    assert [r["label_0"] for r in rows] == [r["label"] for r in one]


def test_predict_takes_data_overrides_and_refuses_others(images, tmp_path, capsys):
    files = sorted(images.rglob("*.jpg"))
    out = tmp_path / "p.jsonl"
    assert predict.main([str(FIXTURE), "data.image_size=24", str(images), "--topk", "4", "--out", str(out)]) == 0
    _, probs = reference(files, 4, ["data.image_size=24"])  # resize 27 (256/224), crop 24
    _, at_16 = reference(files, 4)
    got = [json.loads(line)["prob"] for line in out.read_text().splitlines()]
    assert got == [[round(q, 6) for q in p] for p in probs] and got != [[round(q, 6) for q in p] for p in at_16]
    with pytest.raises(SystemExit) as exit_:
        predict.main([str(FIXTURE), str(images), "model.width=2"])
    assert exit_.value.code == 2 and "data.* overrides only" in capsys.readouterr().err
    gif = next(images.glob("*.gif"))  # named: tried whatever its suffix, and not reported as passed over
    assert predict.main([str(FIXTURE), str(gif)]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == "1 image(s) classified"


def test_predict_output_rule_knows_every_format(images, tmp_path, capsys, monkeypatch):
    image = str(next(images.rglob("*.jpg")))
    for name in ("p.csv", "p.json", "p.jsonl", "p.parquet"):
        for _ in range(2):  # a rerun replaces its own output, whatever the format
            assert predict.main([str(FIXTURE), image, "--out", str(tmp_path / name)]) == 0
    foreign = {"f.csv": "name,score\n", "f.json": '{"a": 1}\n', "f.jsonl": '{"a": 1}\n', "f.parquet": "PAR1"}
    for name, text in foreign.items():
        (tmp_path / name).write_text(text)
        capsys.readouterr()
        assert predict.main([str(FIXTURE), image, "--out", str(tmp_path / name)]) == 2
        assert "did not write (not a predictions file)" in capsys.readouterr().err
        assert (tmp_path / name).read_text() == text
    assert predict.main([str(FIXTURE), image, "--out", str(tmp_path / "p.txt")]) == 2
    assert "--results-format csv | json | json-records | parquet" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert predict.main([str(FIXTURE), image, "--out", str(tmp_path / "new.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --results-format parquet needs pyarrow, which is not installed (pip install pyarrow); "
                   "csv, json and json-records need nothing more"]
    assert not (tmp_path / "new.parquet").exists()


def test_progress_off_a_terminal_is_a_line_per_tenth(monkeypatch):
    stream = io.StringIO()  # not a terminal
    with progress.Progress(40, "predict", "img", stream=stream) as bar:
        for _ in range(40):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"predict: {4 * k}/40 img ({10 * k}%)" for k in range(1, 11)]
    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # and a line after EVERY_S seconds, whatever the share
    stream = io.StringIO()
    with progress.Progress(1000, "evaluate 16 px", "batch", stream=stream) as bar:
        bar.update(3)
    assert stream.getvalue().startswith("evaluate 16 px: 3/1000 batch (0%), ")
    stream = io.StringIO()
    with progress.Progress(10, "x", "img", enabled=False, stream=stream) as bar:  # another process than rank 0
        bar.update(10)
    assert stream.getvalue() == ""


def test_evaluate_reports_progress_and_what_sizes_replace(toy, capsys):
    argv = [str(FIXTURE), f"data.root={toy}", "data.workers=0", "data.batch_size=4", "data.image_size=24"]
    assert evaluate.main([*argv, "--sizes", "16,20"]) == 0
    out, err = capsys.readouterr()
    assert ("note: --sizes 16,20 sets the test sizes, so data.image_size=24 is not tested (add it to --sizes "
            "to test it too)") in err
    assert [line.split("|")[1].strip() for line in out.splitlines() if re.match(r"\| \d", line)] == ["16", "20"]
    for size in (16, 20):  # 32 val images in 8 batches: a line at each tenth passed, the last at 100%
        lines = [line for line in err.splitlines() if line.startswith(f"evaluate {size} px: ")]
        assert lines[-1].startswith(f"evaluate {size} px: 8/8 batch (100%)") and len(lines) == 8
    assert evaluate.main(argv) == 0
    assert "note:" not in capsys.readouterr().err


def test_slim_warns_when_no_gamma_was_driven_to_zero(tmp_path, capsys):
    assert slim.main([str(FIXTURE), "--ratio", "0.3", "--out", str(tmp_path / "a")]) == 0
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert "was trained without model.slim_l1" in warning and "says little" in warning
    ckpt = torch.load(FIXTURE, weights_only=False)  # as if trained with the penalty: a third of the gammas ~0
    ckpt["config"]["model"]["slim_l1"] = 1e-4
    for name, value in ckpt["model"].items():
        if name.endswith("bn1.weight") and "layer" in name:
            value[: len(value) // 3] = 0.0
    torch.save(ckpt, tmp_path / "penalized.pt")
    assert slim.main([str(tmp_path / "penalized.pt"), "--ratio", "0.3", "--out", str(tmp_path / "b")]) == 0
    assert "warning" not in capsys.readouterr().err
    ckpt["model"] = torch.load(FIXTURE, weights_only=False)["model"]  # the penalty on, yet no gamma near 0
    torch.save(ckpt, tmp_path / "weak.pt")
    assert slim.main([str(tmp_path / "weak.pt"), "--ratio", "0.3", "--out", str(tmp_path / "c")]) == 0
    assert "model.slim_l1=0.0001, but none of its" in capsys.readouterr().err
