"""torchrun worker for tests/test_extras_train.py: train with model.ema_decay, then save this
rank's weight average as PREFIX.rank<r>.pt so the test can compare the processes' averages.

    torchrun --nproc_per_node 2 tests/ema_worker.py OUT_FILE_PREFIX dotted.key=value ...
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bot import config, trainer  # noqa: E402

made = []
WeightEma = trainer.WeightEma
trainer.WeightEma = lambda *a, **k: made.append(WeightEma(*a, **k)) or made[-1]

prefix, overrides = sys.argv[1], sys.argv[2:]
trainer.train(config.load(None, overrides))
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
torch.save(made[0].state_dict(), f"{prefix}.rank{rank}.pt")
