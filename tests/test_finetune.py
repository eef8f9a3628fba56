"""model.init_from: fine-tuning from another run, through the real trainer."""

import shutil

import torch
from conftest import run_here
from test_after_training import TRAIN as SOURCE  # its trained run is the source here too

from bot import config
from bot.models import build_model
from bot.train.finetune import init_from

SMALL = ["data.backend=torch", "data.image_size=32", "data.batch_size=16", "data.workers=0", "schedule.epochs=1",
         "schedule.warmup_epochs=0", "run.max_steps=1", "run.log_every=1"]


def source_run(toy, trained):
    """A ResNet-18-D trained on the toy data (shared: never changed here)."""
    return trained("recipes/demo.yaml", f"data.root={toy}", *SOURCE)


def test_init_from_takes_every_weight_and_reinitialises_a_classifier_for_other_classes(toy, trained):
    source = source_run(toy, trained)
    saved = torch.load(source / "best.pt", weights_only=False)
    cfg = config.load("recipes/demo.yaml", SMALL)
    same = build_model(cfg, 4)
    init_from(same, str(source), saved["classes"], say=False)
    assert all(torch.equal(v, saved["model"][k]) for k, v in same.state_dict().items())
    other = build_model(cfg, 4)
    fresh_fc = other.fc.weight.clone()
    reordered = saved["classes"][::-1]  # the same classes in another order: row k means another class
    init_from(other, str(source), reordered, say=False)
    assert torch.equal(other.fc.weight, fresh_fc) and not torch.equal(other.fc.weight, saved["model"]["fc.weight"])
    assert all(torch.equal(v, saved["model"][k]) for k, v in other.state_dict().items() if not k.startswith("fc."))


def test_fine_tune_run_with_tricks_mismatch_and_resume(toy, trained, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(source_run(toy, trained), source)  # a copy: removed below
    names = sorted(p.name for p in (toy / "train").iterdir())
    new = tmp_path / "new"  # 3 of the classes: another class list
    for split in ("train", "val"):
        for name in names[:3]:
            shutil.copytree(toy / split / name, new / split / name)
    out = tmp_path / "tuned"
    # with tricks that touch the model and the loss: mixup, label smoothing, bf16, channels_last
    args = ["train.py", "recipes/demo.yaml", f"data.root={new}", f"run.out={out}", *SMALL,
            f"model.init_from={source}", "loss.mixup_alpha=0.2", "loss.label_smoothing=0.1", "precision=bf16",
            "channels_last=true"]
    done = run_here(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (f"model.init_from: weights of {source / 'best.pt'} (resnet18-D, 4 classes" in done.stdout
            and "classifier re-initialised (4 classes against 3)" in done.stdout)
    # a resumed run continues from last.pt and never reads init_from again (here: gone)
    shutil.rmtree(source)
    again = run_here(*args)
    assert again.returncode == 0 and "already finished" in again.stdout and "init_from" not in again.stdout
    # another architecture: exit 2 naming the first key that does not fit
    bad = run_here(*args[:4], *SMALL, f"model.init_from={out}", "model.arch=resnet34", f"run.out={tmp_path / 'bad'}")
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith(f"error: model.init_from {out / 'best.pt'} (resnet18-D) does not fit this "
                                         f"model: layer1.2.conv1.weight is missing from the checkpoint")
