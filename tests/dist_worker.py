"""torchrun worker for tests/test_distributed.py and tests/test_cuda.py: train one or more runs in
one launch (a launch costs seconds of imports per process), saving after each this rank's final
model state (or, with --ema, its weight average).

    torchrun --nproc_per_node 2 tests/dist_worker.py [--ema] OUT_FILE_PREFIX dotted.key=value ... [-- JOB ...]

Rank 0 alone writes each run folder; every rank writes PREFIX.rank<r>.pt so the test can
compare what each process ended with. Rank 0 prints `== done PREFIX` after each job, so a test
can tell the jobs' output apart.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bot import config  # noqa: E402
from bot.train import trainer


def run(job: list[str]) -> None:
    ema = job[0] == "--ema"
    prefix, overrides = job[ema], job[ema + 1:]
    kept = []  # the first model (or weight average) the trainer builds
    name = "WeightEma" if ema else "build_model"
    make = getattr(trainer, name)
    setattr(trainer, name, lambda *a, **k: kept.append(make(*a, **k)) or kept[-1])
    try:
        trainer.train(config.load(None, overrides))
    finally:
        setattr(trainer, name, make)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    torch.save(kept[0].state_dict(), f"{prefix}.rank{rank}.pt")
    if rank == 0:
        print(f"== done {prefix}", flush=True)


jobs = [[]]
for arg in sys.argv[1:]:
    if arg == "--":
        jobs.append([])
    else:
        jobs[-1].append(arg)
for job in jobs:
    run(job)
