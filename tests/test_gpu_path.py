"""The GPU path's pieces that a CPU can check: backend switches, the CUDA RNG state of a resume
with fewer GPUs, the fused SGD step under the fp16 scaler, the DALI feeder thread and the
colour map's single chunk. tests/test_cuda.py runs the same paths on a GPU."""

import threading

import numpy as np
import pytest
import torch

from bot import config
from bot.artifacts import checkpoint
from bot.models import build_model
from bot.train import backends, optim


def test_configure_turns_cudnn_autotuning_on_and_tf32_off_for_fp32():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = False, True, True
        backends.configure(config.load(None, ["precision=bf16"]), torch.device("cpu"))  # not CUDA: nothing changes
        assert not cudnn.benchmark and cudnn.allow_tf32
        backends.configure(config.load(None, ["precision=bf16"]), torch.device("cuda"))
        assert cudnn.benchmark and cudnn.allow_tf32
        backends.configure(config.load(None, ["precision=fp32"]), torch.device("cuda", 0))
        assert not cudnn.allow_tf32 and not matmul.allow_tf32
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


class FakeCuda:
    """torch.cuda with `visible` GPUs, this process on `current`; records what is restored."""

    def __init__(self, monkeypatch, visible: int, current: int):
        self.restored = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: torch.full((16,), current, dtype=torch.uint8))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                            lambda: [torch.full((16,), i, dtype=torch.uint8) for i in range(visible)])
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state: self.restored.append(int(state[0])))

        def set_all(states):  # torch's: one state per visible GPU, IndexError beyond them
            for i, state in enumerate(states):
                if i >= visible:
                    raise IndexError("list index out of range")
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)


def test_resume_with_fewer_visible_gpus(monkeypatch):
    """Trained on 8 GPUs, resumed on 1 (CUDA_VISIBLE_DEVICES=0): the current device's state only.
    torch.cuda is faked to stand for 8 GPUs and then 1; tests/test_cuda.py restores a real one."""
    with monkeypatch.context() as m:
        FakeCuda(m, visible=8, current=0)
        saved = checkpoint.rng_states()
    assert isinstance(saved["cuda"], torch.Tensor)  # one state, not one per visible GPU

    fake = FakeCuda(monkeypatch, visible=1, current=0)
    checkpoint.set_rng_states(saved)
    assert fake.restored == [0]
    # a checkpoint written before, with one state per GPU visible then
    older = dict(saved, cuda=[torch.full((16,), i, dtype=torch.uint8) for i in range(8)])
    checkpoint.set_rng_states(older)
    assert fake.restored == [0, 0]
    fake = FakeCuda(monkeypatch, visible=8, current=3)
    checkpoint.set_rng_states(older)
    assert fake.restored == [3]
    checkpoint.set_rng_states(dict(saved, cuda=[]))  # written on a machine without CUDA
    checkpoint.set_rng_states(dict(saved, cuda=None))
    assert fake.restored == [3]


def sgd_pair(monkeypatch, *overrides):
    cfg = config.load(None, ["model.arch=resnet18", "model.variant=D", "optim.no_bias_decay=true", *overrides])
    made = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg, 4)
        monkeypatch.setattr(optim, "use_fused", lambda model: fused)
        made.append((model, optim.build_optimizer(model, cfg)))
    return made


def test_fused_sgd_under_the_scaler_matches_the_default_step_and_never_reads_the_overflow_flag(monkeypatch):
    """The fused step (CUDA's) takes GradScaler's path for optimizers that handle the scale
    themselves: no .item() on the overflow flag, the same update, and an overflow skips it."""
    try:
        (model, plain), (fused_model, fused) = sgd_pair(monkeypatch)
    except RuntimeError as e:  # torch before 2.4 fuses SGD on CUDA only: tests/test_cuda.py checks it there
        pytest.skip(f"this torch has no fused SGD on the CPU: {e}")
    assert fused.defaults["fused"] and not plain.defaults["fused"] and fused._step_supports_amp_scaling
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for m, opt in ((model, plain), (fused_model, fused)):
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for poison in (False, True, False):
            loss = torch.nn.functional.cross_entropy(m(x), y) * (float("inf") if poison else 1.0)
            scaler.scale(loss).backward()
            before = [p.detach().clone() for p in m.parameters()]
            if opt is fused:
                with monkeypatch.context() as patch:  # the foreach path reads found_inf with .item()
                    patch.setattr(torch.Tensor, "item", lambda self: pytest.fail("host read in the fused step"))
                    scaler.step(opt)
            else:
                scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            unchanged = all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
            assert unchanged == poison  # an overflow skips the step, and only an overflow
        assert scaler.get_scale() == 512.0  # halved once
    for a, b in zip(model.parameters(), fused_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resumed_optimizer_keeps_this_runs_step_implementation(monkeypatch):
    try:
        (_, plain), (_, fused) = sgd_pair(monkeypatch)
    except RuntimeError as e:
        pytest.skip(f"this torch has no fused SGD on the CPU: {e}")
    optim.load_optimizer_state(plain, fused.state_dict())
    assert all(not g["fused"] for g in plain.param_groups)
    optim.load_optimizer_state(fused, plain.state_dict())
    assert all(g["fused"] for g in fused.param_groups)


def test_feeder_prepares_off_the_main_thread_in_order_and_raises_where_the_item_is_asked_for():
    pytest.importorskip("nvidia.dali")
    from bot.data.dali_pipeline import Feeder

    threads = set()

    def make(i):
        threads.add(threading.current_thread())
        if i == 5:
            raise ValueError("bad item 5")
        return {"x": i * i}

    feeder = Feeder(range(8), make, depth=2)
    got = [feeder.next() for _ in range(5)]
    assert got == [(i, {"x": i * i}) for i in range(5)] and threading.main_thread() not in threads
    with pytest.raises(ValueError, match="bad item 5"):
        feeder.next()
    with pytest.raises(StopIteration):
        feeder.next()
    feeder.stop()
    stopped = Feeder(range(1000), make, depth=2)  # left early: stop() ends the thread
    stopped.next()
    stopped.stop()
    assert not stopped.thread.is_alive()
    with pytest.raises(StopIteration):
        stopped.next()


def test_colour_normalize_in_one_chunk_equals_small_chunks():
    """The chunking of colour_normalize (small chunks on a CPU, the whole batch on a GPU) changes no
    number; the GPU itself: tests/test_cuda.py."""
    pytest.importorskip("nvidia.dali")
    from bot.data.dali_draws import colour_maps, colour_normalize, train_draws

    d = config.load(None, []).data
    rng = np.random.default_rng(0)
    draws = np.asarray([train_draws(rng, 64, 48, d) for _ in range(10)])
    images = torch.randint(0, 256, (10, 16, 16, 3), dtype=torch.uint8)
    chunks = colour_normalize(images, colour_maps(draws), torch.empty(10, 3, 16, 16))
    whole = colour_normalize(images, colour_maps(draws), torch.empty(10, 3, 16, 16), chunk=10)
    torch.testing.assert_close(whole, chunks, rtol=1e-6, atol=1e-5)
