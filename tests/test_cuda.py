"""The training path on a CUDA GPU: one step per precision against the CPU's, the fp16 scaler's
skip with no host sync, a compiled step, two processes on NCCL, the CUDA RNG state of a resume
from a checkpoint of more GPUs, and the DALI colour map on the GPU against the CPU's. Marked `cuda`: skipped
where there is no GPU (tests/conftest.py); on a GPU machine they must run, not skip.

    python -m pytest -q -m cuda tests
"""

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from bot import config
from bot.data import build_loaders
from bot.models import build_model
from bot.train import backends
from bot.train.trainer import build_step

pytestmark = pytest.mark.cuda

ARGS = ["data.backend=torch", "data.image_size=32", "data.batch_size=16", "data.workers=0", "model.arch=resnet18",
        "model.variant=D", "schedule.epochs=2", "run.log_every=1", "loss.label_smoothing=0.1"]
CUDA = torch.device("cuda", 0)


class OneDevice:
    """The part of accelerate's Accelerator a TrainStep uses, for one process on `device`."""
    num_processes = 1

    def __init__(self, device):
        self.device = torch.device(device)

    def prepare_model(self, model):
        return model

    def no_sync(self, model):
        raise AssertionError("one micro-batch: never called")


@pytest.fixture(autouse=True)
def restore_backends():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32
    yield
    cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


def first_batch(toy):
    loader, _ = build_loaders(config.load(None, [f"data.root={toy}", *ARGS]), 0, 1, "cpu")
    loader.set_epoch(0)
    return next(iter(loader))


def low_loss_scale(step):
    """fp16's scaler from 2^8, not 2^16: this network's stem gradients times 2^16 (about 4e5)
    overflow fp16, so the scaler would skip the first steps, as it should in a run, and leave
    nothing to compare."""
    if step.scaler.is_enabled():
        step.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**8)
    return step


def one_step(cfg, device, images, labels):
    """(loss, update of every parameter) of the first step of `cfg` on `device`."""
    backends.configure(cfg, device)
    torch.manual_seed(0)
    model = build_model(cfg, 4).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    before = [p.detach().double().cpu() for p in model.parameters()]
    step = low_loss_scale(build_step(cfg, model, OneDevice(device), 4, len(images), steps_per_epoch=6))
    assert bool(step.optimizer.defaults["fused"]) == (device.type == "cuda")
    loss = step(images, labels, 0, 0).item()
    update = torch.cat([(p.detach().double().cpu() - b).flatten() for p, b in zip(model.parameters(), before)])
    return loss, update


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("fp16", 3e-2), ("bf16", 6e-2)])
def test_one_step_per_precision_matches_the_cpu(toy, precision, tolerance):
    """The first step on the GPU (channels_last, fused SGD) against fp32 on the CPU: the loss and
    the update of every weight. fp32 runs without TF32 (bot.train.backends), so only the order of float32
    sums differs; fp16 and bf16 round activations and gradients to 11 and 8 bits."""
    images, labels = first_batch(toy)
    cpu_loss, cpu_update = one_step(config.load(None, ARGS), torch.device("cpu"), images, labels)
    cfg = config.load(None, [*ARGS, f"precision={precision}", "channels_last=true"])
    loss, update = one_step(cfg, CUDA, images, labels)
    if precision == "fp32":
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.benchmark
    assert abs(loss - cpu_loss) <= tolerance * abs(cpu_loss), (loss, cpu_loss)
    distance = ((update - cpu_update).norm() / cpu_update.norm()).item()
    assert distance <= tolerance * 3, distance


def test_fp16_scaler_skips_an_overflow_on_cuda_without_a_host_sync(toy):
    cfg = config.load(None, [*ARGS, "precision=fp16", "channels_last=true"])
    backends.configure(cfg, CUDA)
    torch.manual_seed(0)
    model = build_model(cfg, 4).to(CUDA).to(memory_format=torch.channels_last)
    step = low_loss_scale(build_step(cfg, model, OneDevice(CUDA), 4, 16, steps_per_epoch=6))
    assert step.optimizer.defaults["fused"]
    images, labels = (t.to(CUDA) for t in first_batch(toy))
    for i in range(2):  # warm-up: cuDNN's autotuning and the scaler's first tensors may sync
        step(images, labels, i, 0)
    scale = step.scaler.get_scale()
    before = [p.detach().clone() for p in model.parameters()]
    finite_loss = step.objective.loss
    step.objective.loss = lambda *a: finite_loss(*a) * float("inf")
    torch.cuda.set_sync_debug_mode("error")  # any host sync in the step raises
    try:
        step(images, labels, 2, 0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # skipped
    assert step.scaler.get_scale() == scale / 2 and int(step.watch.nonfinite) == 1
    step.objective.loss = finite_loss
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(images, labels, 3, 0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and int(step.watch.nonfinite) == 0


def test_compiled_step_on_cuda_matches_eager(toy):
    images, labels = first_batch(toy)
    cfg = config.load(None, [*ARGS, "precision=bf16", "channels_last=true"])
    eager = one_step(cfg, CUDA, images, labels)
    cfg.compile = True
    compiled = one_step(cfg, CUDA, images, labels)
    assert abs(compiled[0] - eager[0]) <= 2e-2 * abs(eager[0])
    assert ((compiled[1] - eager[1]).norm() / eager[1].norm()).item() < 0.1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_processes_on_nccl_match_one_process(toy, tmp_path):
    """tests/test_distributed.py's check on GPUs: NCCL, SyncBatchNorm, one global batch of 16."""
    from test_distributed import ARGS as DIST_ARGS
    from test_distributed import relative_distance

    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "tests/dist_worker.py", str(tmp_path / "final"), f"data.root={toy}", f"run.out={tmp_path / 'two'}",
              *DIST_ARGS]
    done = subprocess.run(launch, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es) on cuda" in done.stdout
    rank0, rank1 = (torch.load(tmp_path / f"final.rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    one = [sys.executable, "tests/dist_worker.py", str(tmp_path / "single"), f"data.root={toy}",
           f"run.out={tmp_path / 'one'}", *DIST_ARGS]
    done = subprocess.run(one, cwd=ROOT, env=os.environ | {"CUDA_VISIBLE_DEVICES": "0"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = torch.load(tmp_path / "single.rank0.pt")
    assert relative_distance(rank0, single) < 1.5e-2  # the CPU test's bound (its docstring says why)


def test_resume_from_a_checkpoint_of_more_gpus_restores_this_devices_state():
    """A checkpoint holding one CUDA RNG state per GPU of an 8-GPU machine (written before a run
    kept only its own) restores, on this machine's GPU, the state of the same device index."""
    from bot.artifacts import checkpoint

    saved = checkpoint.rng_states()
    assert isinstance(saved["cuda"], torch.Tensor)  # this device's state only, not one per visible GPU
    states = [torch.cuda.get_rng_state()] * 8
    torch.cuda.manual_seed(1234)
    expect = torch.cuda.get_rng_state()
    states[torch.cuda.current_device()] = expect
    torch.cuda.manual_seed(0)
    checkpoint.set_rng_states(dict(saved, cuda=states))
    assert torch.equal(torch.cuda.get_rng_state(), expect)
    checkpoint.set_rng_states(saved)
    assert torch.equal(torch.cuda.get_rng_state(), saved["cuda"])


def test_colour_normalize_on_the_gpu_equals_the_cpu():
    """The DALI loader's colour and normalization map applied on the GPU (the whole batch at once)
    gives the CPU's numbers."""
    pytest.importorskip("nvidia.dali")
    import numpy as np

    from bot.data.dali_draws import colour_maps, colour_normalize, train_draws

    d = config.load(None, []).data
    rng = np.random.default_rng(0)
    draws = np.asarray([train_draws(rng, 64, 48, d) for _ in range(10)])
    images = torch.randint(0, 256, (10, 16, 16, 3), dtype=torch.uint8)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 sums, as the CPU's (restored after the test)
    cpu = colour_normalize(images, colour_maps(draws), torch.empty(10, 3, 16, 16))
    gpu = colour_normalize(images.to(CUDA), colour_maps(draws), torch.empty(10, 3, 16, 16, device=CUDA))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-4)
