"""torchrun worker for tests/test_distributed.py and tests/test_extras_train.py: train, then
save this rank's final model state (or, with --ema, its weight average).

    torchrun --nproc_per_node 2 tests/dist_worker.py [--ema] OUT_FILE_PREFIX dotted.key=value ...

Rank 0 alone writes the run folder; every rank writes PREFIX.rank<r>.pt so the test can
compare what each process ended with.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bot import config  # noqa: E402
from bot.train import trainer

args = sys.argv[1:]
ema = args[0] == "--ema"
prefix, overrides = args[ema], args[ema + 1:]
kept = []  # the first model (or weight average) the trainer builds
name = "WeightEma" if ema else "build_model"
make = getattr(trainer, name)
setattr(trainer, name, lambda *a, **k: kept.append(make(*a, **k)) or kept[-1])

trainer.train(config.load(None, overrides))
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
torch.save(kept[0].state_dict(), f"{prefix}.rank{rank}.pt")
