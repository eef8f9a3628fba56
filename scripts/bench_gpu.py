"""GPU img/s of ResNet-50-D at 224: the training step, the loaders, and train.py end to end.

    python scripts/bench_gpu.py [--batch 256] [--images 10240] [--train-steps 300] [--json bench_gpu.json]
    python scripts/bench_gpu.py --parts step --precisions bf16 --compile false   (a part of it)
    python scripts/bench_gpu.py --cpu-smoke      (every part, tiny, on the CPU: checks the script, measures nothing)
    make gpu-check OUT=dir                      (a lent GPU's 8 minutes: docs/gpu.md)

On one GPU, channels_last, for fp16 and bf16, eager and compiled (torch.compile):
- step: the project's training step (bot's TrainStep, built by the trainer's build_step)
  against a bare PyTorch loop (autocast, cross-entropy, GradScaler, fused SGD) and against
  timm's own `resnet50d` in that bare loop, on one synthetic batch kept on the GPU;
  rounds alternate between the loops and the median round counts;
- loaders: the DALI GPU loader alone (nvJPEG, output on the GPU) and the torchvision
  loader alone with every CPU core (pinned batches copied to the GPU), the paper's full
  augmentation, on generated ImageNet-like JPEGs (~500 x 375, quality 90);
- end to end: train.py recipes/resnet50-d.yaml on those JPEGs for --train-steps steps,
  DALI GPU, bf16, compiled; img/s from metrics.jsonl (the median log line after the first two).
- tests (only when asked: --parts tests ...): the tests marked `cuda` (pytest -m cuda).
The batch is --batch, halved until one training step fits in memory. The parts run in the
order tests, step (eager), loader, end to end, step (compiled: the slowest last), each in
its time box (BOXES) and all within --budget seconds; each figure is written as soon as it
is measured to --json and a Markdown table beside it (or both under --out), so a run that
is cut keeps what it measured. Needs CUDA: without it, exits 2 unless --cpu-smoke.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_loader import measure, photo_like  # noqa: E402
from timeboxed import Figures, OutOfTime, cuda_test_rows, time_box  # noqa: E402

from bot import config  # noqa: E402
from bot.models import build_model  # noqa: E402
from bot.train import backends  # noqa: E402
from bot.train.trainer import build_step, make_autocast  # noqa: E402

SHAPES = [(500, 375), (375, 500), (500, 333), (500, 400), (480, 360), (640, 480)]


class OneDevice:
    """What a TrainStep needs of accelerate's Accelerator, for one process (no DDP)."""
    num_processes = 1

    def __init__(self, device):
        self.device = device

    def prepare_model(self, model):
        return model


# ---------------------------------------------------------------- the training step


def bare_loop(model, precision: str, device, x, y, lr: float = 0.1):
    """forward, cross-entropy, backward, SGD step: what one writes with nothing but torch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4,
                          fused=device.type == "cuda" or None)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = make_autocast(precision, device)

    def step():
        with autocast():
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def loops(cfg, device, x, y, compiled, with_timm: bool = True):
    """{name: step function} of the three loops (two without timm's), each on its own freshly built model."""
    import timm

    def fresh(make):
        torch.manual_seed(0)
        model = make().to(device).to(memory_format=torch.channels_last)
        return backends.compile_model(model, compiled)

    ours = fresh(lambda: build_model(cfg, 1000))
    train_step = build_step(cfg, ours, OneDevice(device), 1000, len(x), steps_per_epoch=5000)
    counter = iter(range(10**9))
    steps = {"bot step": lambda: train_step(x, y, next(counter), 0),
             "bare loop": bare_loop(fresh(lambda: build_model(cfg, 1000)), cfg.precision, device, x, y)}
    if with_timm:
        steps[f"timm {cfg.model.arch}d, bare loop"] = bare_loop(fresh(lambda: timm.create_model(cfg.model.arch + "d")),
                                                                cfg.precision, device, x, y)
    return steps


def timed(step, n: int, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        loss = step()
    loss.item()  # waits for the device
    return time.perf_counter() - start


def fitting_batch(args, device) -> int:
    """--batch, halved until a step of the bare loop fits in the GPU's memory."""
    batch, precision = args.batch, args.precisions[0]
    cfg = config.load(None, base_overrides(args, batch, precision))
    while batch >= 8:
        try:
            x = torch.randn(batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
            model = build_model(cfg, 1000).to(device).to(memory_format=torch.channels_last)
            timed(bare_loop(model, precision, device, x, torch.zeros(batch, dtype=torch.long, device=device)), 2, device)
            return batch
        except torch.cuda.OutOfMemoryError:
            batch //= 2
        finally:
            x = model = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    raise SystemExit("error: not even a batch of 8 fits in this GPU's memory")


def base_overrides(args, batch: int, precision: str) -> list[str]:
    return [f"model.arch={args.arch}", "model.variant=D", f"data.image_size={args.size}", f"data.batch_size={batch}",
            f"precision={precision}", "channels_last=true"]


def step_rows(args, device, batch: int, compiled_ones: bool):
    """The step's rows, one (precision, compile) pair at a time: the eager pairs, or the compiled ones."""
    x = torch.randn(batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    for compiled in [c for c in args.compile if bool(c) == compiled_ones]:
        for precision in (args.compile_precisions or args.precisions) if compiled else args.precisions:
            cfg = config.load(None, base_overrides(args, batch, precision))
            backends.configure(cfg, device)
            steps = loops(cfg, device, x, y, compiled, with_timm=args.timm == "always" or not compiled)
            for step in steps.values():  # warm-up: compilation, cuDNN autotuning
                timed(step, args.warmup, device)
            times = {k: [] for k in steps}
            for _ in range(args.rounds):
                for k, step in steps.items():
                    times[k].append(timed(step, args.steps, device))
            ips = {k: args.steps * batch / statistics.median(v) for k, v in times.items()}
            print(f"step {precision} compile={compiled}: " + ", ".join(f"{k} {v:,.0f}" for k, v in ips.items()),
                  file=sys.stderr)
            del steps
            for k, v in ips.items():
                yield {"part": "step", "what": k, "precision": precision, "compiled": compiled,
                       "img_per_s": round(v, 1), "vs_bare": round(v / ips["bare loop"], 3)}


# ---------------------------------------------------------------- the loaders


def write_one(job) -> None:
    root, split, i, classes, seed = job
    rng = np.random.default_rng([seed, i, split == "val"])
    w, h = SHAPES[int(rng.integers(len(SHAPES)))]
    folder = Path(root) / split / f"c{i % classes:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    photo_like(rng, w, h).save(folder / f"{i:06d}.jpg", quality=90)


def write_images(root: Path, n: int, n_val: int, classes: int, workers: int) -> None:
    jobs = [(str(root), "train", i, classes, 0) for i in range(n)] + [(str(root), "val", i, classes, 0)
                                                                     for i in range(n_val)]
    if workers < 2:
        for job in jobs:
            write_one(job)
        return
    with get_context("forkserver").Pool(workers) as pool:  # not fork: CUDA and torch's threads are up by now
        for _ in pool.imap_unordered(write_one, jobs, chunksize=16):
            pass


def has_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def loader_rows(args, root: Path, device, batch: int):
    from bot.data import build_loaders

    kinds = [("dali", "DALI GPU loader alone" if device.type == "cuda" else "DALI CPU loader alone (smoke)"),
             ("torch", f"torchvision loader alone, {args.cores} workers")]
    for backend, name in kinds:
        if backend == "dali" and not has_dali():
            print("DALI is not installed: no DALI row (../shared/gpu/README.md says how to bring it)", file=sys.stderr)
            yield {"part": "loader", "what": name, "img_per_s": None, "note": "skipped: no DALI"}
            continue
        cfg = config.load(None, [f"data.root={root}", f"data.backend={backend}", f"data.batch_size={batch}",
                                 f"data.workers={args.cores}", f"data.image_size={args.size}", "data.antialias=false"])

        def make():
            loader = build_loaders(cfg, 0, 1, device)[0]
            if backend == "dali" or device.type != "cuda":
                return loader
            return OnDevice(loader, device)
        rate, cpu_ms = measure(make, args.loader_epochs)
        print(f"{name}: {rate:,.0f} img/s", file=sys.stderr)
        yield {"part": "loader", "what": name, "img_per_s": round(rate, 1), "cpu_ms_per_img": round(cpu_ms, 2)}


class OnDevice:
    """The torch loader's pinned batches copied to the GPU, as the training step does."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


# ---------------------------------------------------------------- end to end


def end_to_end_row(args, root: Path, device, batch: int) -> dict:
    # the recipes read with DALI: without it, the torchvision loader, said in the row's `what`
    overrides = args.train_overrides + ([] if has_dali() else ["data.backend=torch"])
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "train.py", args.recipe, f"data.root={root}", f"run.out={out}",
                   f"data.batch_size={batch}", f"data.image_size={args.size}", f"data.workers={args.cores}",
                   f"run.max_steps={args.train_steps}", f"run.log_every={args.log_every}", "schedule.epochs=1000",
                   "run.checkpoint_every=1000000", *overrides]
        print(" ".join(command[1:]), file=sys.stderr)
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        metrics = Path(out) / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        records = [json.loads(line) for line in lines if line.endswith("}")]
    rates = steady_rates(records)
    if done.returncode and not rates:
        raise SystemExit(f"error: train.py failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    row = {"part": "end to end", "what": "train.py " + " ".join(command[2:3] + overrides),
           "img_per_s": round(statistics.median(rates), 1) if rates else None, "log_lines": len(rates)}
    # a run that trained and then failed (DALI's teardown at exit, say) keeps its figure, and says so
    return row | ({"note": f"train.py exit {done.returncode} after its steps: {done.stderr.strip()[-200:]}"}
                  if done.returncode else {})


def steady_rates(records: list[dict]) -> list[float]:
    """The training lines' img/s but the first two windows (compilation, warm-up) and those that
    begin an epoch: the trainer's clock restarts there, so they hold the loader's restart, which
    an ImageNet epoch of 5,000 steps would not show."""
    lines = [r for r in records if "img_per_s" in r]
    return [r["img_per_s"] for i, r in enumerate(lines) if i >= 2 and lines[i - 1]["epoch"] == r["epoch"]]


# ---------------------------------------------------------------- main

# Each part's time box in seconds, for one H100/H200 (docs/gpu.md): all of them fit in 480 s
# with torch 2.11 when nothing is cut; the whole run is capped by --budget as well.
BOXES = {"tests": 150, "step": 70, "loader": 90, "end to end": 90, "step compiled": 180}


def table(rows: list[dict], header: str = "") -> str:
    lines = [header, "", "| part | what | precision | compiled | img/s | vs bare loop |", "|---|---|---|---|---|---|"]
    for r in rows:
        compiled = {False: "no", True: "yes"}.get(r.get("compiled"), r.get("compiled", ""))
        lines.append(f"| {r['part']} | {r['what']} | {r.get('precision', '')} | {compiled} | "
                     f"{r['img_per_s']:,.0f} | {r.get('vs_bare', '')} |" if r["img_per_s"] is not None else
                     f"| {r['part']} | {r['what']} | | | {r.get('note', 'not measured')} | |")
    return "\n".join(lines)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256, help="per GPU; halved until it fits")
    p.add_argument("--precisions", nargs="+", default=["fp16", "bf16"])
    p.add_argument("--compile", nargs="+", type=lambda s: {"false": False, "true": True}.get(s, s),
                   default=[False, True], help="false, true or torch.compile modes")
    p.add_argument("--compile-precisions", nargs="+", help="the precisions to compile (default: --precisions)")
    p.add_argument("--timm", choices=["always", "eager"], default="always",
                   help="eager: timm's loop only uncompiled (a compile less)")
    p.add_argument("--steps", type=int, default=20, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--images", type=int, default=10240, help="generated training JPEGs")
    p.add_argument("--loader-epochs", type=int, default=2)
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--recipe", default="recipes/resnet50-d.yaml")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--train-overrides", nargs="*", default=["precision=bf16", "compile=true"])
    p.add_argument("--parts", nargs="+", choices=["tests", "step", "loader", "end-to-end"],
                   default=["step", "loader", "end-to-end"], help="a subset, to split the run into shorter commands")
    p.add_argument("--budget", type=float, default=3600, help="seconds for the whole run; parts past it are skipped")
    p.add_argument("--json", type=Path, default=Path("bench_gpu.json"), help="and the Markdown table beside it")
    p.add_argument("--out", type=Path, help="a folder: figures in OUT/gpu-check.json and .md, logs beside")
    p.add_argument("--cpu-smoke", action="store_true", help="every part, tiny, on the CPU (checks the script only)")
    return p.parse_args(argv)


def smoke(args) -> None:
    """ResNet-18-D at 32 px and a handful of images: every part, in seconds, on the CPU."""
    args.arch, args.size, args.batch, args.precisions, args.compile = "resnet18", 32, 8, ["fp32"], [False]
    args.steps, args.rounds, args.warmup, args.images, args.loader_epochs = 1, 1, 1, 32, 1
    args.train_steps, args.log_every, args.cores = 4, 1, 0  # 0: no worker processes to start
    # fp32: the recipe's fp16 is emulated on a CPU (this train.py, start to end: 11.5 s in fp16,
    # 8.2 s in fp32 on 2 cores)
    args.train_overrides = ["data.backend=torch", "model.arch=resnet18", "precision=fp32"]


def plan(args, device, batch: int, images, folder: Path) -> list:
    """(part, rows) in the order they run: the slowest to compile last, so a cut loses least."""
    wanted = {"tests": "tests", "step": "step", "loader": "loader", "end to end": "end-to-end", "step compiled": "step"}
    parts = [("tests", lambda: cuda_test_rows(folder / "cuda-tests.log")),
             ("step", lambda: step_rows(args, device, batch, compiled_ones=False)),
             ("loader", lambda: loader_rows(args, images(), device, batch)),
             ("end to end", lambda: iter([end_to_end_row(args, images(), device, batch)])),
             ("step compiled", lambda: step_rows(args, device, batch, compiled_ones=True))]
    return [(name, rows) for name, rows in parts if wanted[name] in args.parts
            and (name != "step compiled" or any(args.compile))]


def main(argv=None) -> int:
    args = parse(argv)
    started = time.monotonic()
    if args.cpu_smoke:
        smoke(args)
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("error: bench_gpu.py measures a CUDA GPU and torch sees none; --cpu-smoke runs every part tiny "
              "on the CPU to check the script", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda", 0)
    path = args.out / "gpu-check.json" if args.out else args.json
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run: not a measurement)"
    batch = fitting_batch(args, device)
    header = (f"{args.arch}-D {args.size}px, batch {batch}, channels_last, on {name} (torch {torch.__version__}, "
              f"DALI {'yes' if has_dali() else 'no'}, {os.cpu_count()} CPU cores); "
              f"step: median of {args.rounds} rounds x {args.steps} steps")
    figures = Figures(path, {"device": name, "torch": torch.__version__, "batch": batch, "arch": f"{args.arch}-D",
                             "size": args.size, "cpu_smoke": args.cpu_smoke}, lambda rows: table(rows, header))
    with tempfile.TemporaryDirectory() as tmp:
        def images() -> Path:  # written once, by the first part that reads them, inside its time box
            if not (Path(tmp) / "done").exists():
                write_images(Path(tmp), args.images, 64 if args.cpu_smoke else 1024,
                             classes=4 if args.cpu_smoke else 100, workers=args.cores)
                (Path(tmp) / "done").touch()
            return Path(tmp)
        for part, rows in plan(args, device, batch, images, path.parent):
            box = 600 if args.cpu_smoke else BOXES[part]  # a busy CPU is no GPU: the smoke checks paths, not time
            run_part(figures, part, rows, min(box, args.budget - (time.monotonic() - started)))
    print(table(figures.rows, header))
    print(json.dumps(figures.meta | {"rows": figures.rows}))
    return 0


def run_part(figures: Figures, part: str, rows, box: float) -> None:
    """The part's rows into `figures` as they come; a note row if it is cut, fails or has no time."""
    if box < 2:
        figures.add({"part": part, "what": "", "img_per_s": None, "note": "skipped: out of --budget"})
        return
    try:
        with time_box(box):
            for row in rows():
                figures.add(row)
    except OutOfTime:
        figures.add({"part": part, "what": "", "img_per_s": None, "note": f"cut by its time box of {box:.0f} s"})
    except (Exception, SystemExit) as error:  # one part failing must not lose the others' figures
        figures.add({"part": part, "what": "", "img_per_s": None, "note": f"failed: {str(error)[-300:]}"})
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
