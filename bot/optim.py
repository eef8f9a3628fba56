"""`bot.optim.build_optimizer(model, cfg)`, a stable name of the public Python API; the
optimizer (NAG, linear scaling, no bias decay) lives in bot/train/optim.py."""

from bot.train.optim import build_optimizer

__all__ = ["build_optimizer"]
