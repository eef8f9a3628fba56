"""torchrun worker for tests/test_distributed.py: train, then save this rank's final model state.

    torchrun --nproc_per_node 2 tests/dist_worker.py OUT_FILE_PREFIX dotted.key=value ...

Rank 0 alone writes the run folder; every rank writes PREFIX.rank<r>.pt so the test can
compare what each process ended with.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bot import config, trainer  # noqa: E402

built = []
build_model = trainer.build_model
trainer.build_model = lambda *a, **k: built.append(build_model(*a, **k)) or built[-1]

prefix, overrides = sys.argv[1], sys.argv[2:]
trainer.train(config.load(None, overrides))
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
torch.save(built[0].state_dict(), f"{prefix}.rank{rank}.pt")
