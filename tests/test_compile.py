"""`compile`: torch.compile of the model, on the CPU (inductor, C++ kernels) with a ResNet-18-D at
32 px. Slow to compile (about 70 s the first time on 2 cores, then inductor's on-disk cache),
so two tests cover it: the numbers, the keys and recompilation; then resume.

Inductor writes scalar C++ loops here (`scalar_kernels`): the same graphs, fusions and kernels
as its vectorized ones, which g++ takes longer to build (this file's 50 kernels: 57 s of g++
vectorized, 44 s scalar, with an empty cache). What is tested is ours: the step's compilation,
its numbers against eager, its keys, its graphs; a GPU compiles to Triton (make gpu-check).
"""

import copy

import pytest
import torch
import torch._dynamo
from conftest import OneProcess

from bot import config
from bot.data import build_loaders
from bot.models import build_model
from bot.train.engine import evaluate
from bot.train.trainer import build_step, make_autocast, train

ARGS = ["data.backend=torch", "data.image_size=32", "data.batch_size=16", "data.workers=0", "model.arch=resnet18",
        "model.variant=D", "schedule.epochs=2", "run.log_every=1", "loss.mixup_alpha=0.2",
        "loss.label_smoothing=0.1"]


@pytest.fixture(autouse=True)
def scalar_kernels():
    """Inductor's CPU kernels without SIMD (part of its cache key, so no other test sees them)."""
    import torch._inductor.config

    with torch._inductor.config.patch({"cpp.vec_isa_ok": False}):
        yield


class OneMicroBatch(OneProcess):
    def no_sync(self, model):
        raise AssertionError("one micro-batch: never called")


def flat(state: dict) -> torch.Tensor:
    return torch.cat([v.flatten().double() for k, v in state.items() if v.is_floating_point()])


def test_compiled_step_matches_eager_keeps_the_keys_and_never_recompiles(toy, monkeypatch):
    cfg = config.load(None, [f"data.root={toy}", *ARGS])
    train_loader, val_loader = build_loaders(cfg, 0, 1, "cpu")
    batches = []
    for images, labels in train_loader:
        batches.append((images, labels))
    accelerator, autocast, runs = OneMicroBatch(), make_autocast("fp32", torch.device("cpu")), {}
    for setting in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg, 4)
        cfg.compile = setting
        step = build_step(cfg, model, accelerator, 4, 16, len(batches))
        losses = []
        for i, (images, labels) in enumerate(batches):
            losses.append(step(images, labels, i, 0).item())
            if i == 0:
                first = {k: v.clone() for k, v in model.state_dict().items()}
            if i == 0 and setting:
                compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
                monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)  # from step 2 on
        runs[setting] = losses, first, model
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", False)
    (eager_losses, eager_first, eager_model), (losses, first, model) = runs[False], runs[True]
    assert model._compiled_call_impl is not None and eager_model._compiled_call_impl is None
    # Steps 2-6 (other lr, other mixup lambda, other batches) compiled nothing: error_on_recompile
    # would have raised.

    # The same numbers as eager within float32 rounding (inductor fuses and reorders sums): the
    # first two losses and the weights after one step. Measured: 4e-7 and 1e-4 relative (the
    # second loss), 6e-6 (weights); bounds 5-10x that. Later steps drift apart as any change in
    # rounding does on this toy net (tests/test_distributed.py: BN over a few values per channel).
    assert len(losses) == 6 and all(abs(a - b) <= 1e-3 * abs(b) for a, b in zip(losses[:2], eager_losses[:2]))
    distance = ((flat(first) - flat(eager_first)).norm() / flat(eager_first).norm()).item()
    assert distance < 5e-5, distance

    # Checkpoints are interchangeable: the same keys (no `_orig_mod.`), strict loads both ways.
    state, eager_state = model.state_dict(), eager_model.state_dict()
    assert list(state) == list(eager_state) and "conv1.0.weight" in state
    copy.deepcopy(eager_model).load_state_dict(state)
    model.load_state_dict(eager_state)
    # Evaluation compiled (eval mode, no grad: one more graph) on the eager run's weights gives
    # the eager evaluation's numbers. Measured: val_loss 2e-7 relative apart.
    eager_metrics = evaluate(eager_model, val_loader, accelerator, autocast, False)
    metrics = evaluate(model, val_loader, accelerator, autocast, False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - compiled == 1
    assert metrics["val_images"] == eager_metrics["val_images"] == 32
    assert metrics["top1"] == eager_metrics["top1"] and metrics["top5"] == eager_metrics["top5"]
    assert abs(metrics["val_loss"] - eager_metrics["val_loss"]) < 1e-5 * eager_metrics["val_loss"]


def test_compiled_run_resumes_exactly(toy, tmp_path):
    """A compiled run killed at step 2 and resumed (compiled) ends bit-for-bit as an uninterrupted one."""
    def run(out, *extra):
        return train(config.load(None, [f"data.root={toy}", f"run.out={out}", *ARGS, "compile=true", *extra]))

    run(tmp_path / "whole", "run.max_steps=8")
    run(tmp_path / "part", "run.max_steps=2")
    assert run(tmp_path / "part", "run.max_steps=8")["steps"] == 8
    a, b = (torch.load(tmp_path / name / "last.pt", weights_only=False)["model"] for name in ("whole", "part"))
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_compile_setting_is_checked():
    with pytest.raises(Exception, match="compile: expected bool or default | reduce-overhead"):
        config.load(None, ["compile=fast"])
    assert config.load(None, ["compile=max-autotune"]).compile == "max-autotune"
