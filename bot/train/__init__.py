"""The training core: `train(cfg)` (trainer.py) and one step of it (engine.py), with every
trick resolved from the config before the loop: the loss with label smoothing, mixup, CutMix
and distillation (losses.py, teacher.py), the optimizer and its parameter groups (optim.py),
the learning-rate schedule (schedule.py), the weight average (ema.py), network slimming's
penalty (slim_penalty.py), fine-tuning's start (finetune.py), and the run's machinery: devices
and precision (backends.py), SyncBN (sync_bn.py), the run log (runlog.py), the run folder's
lock (runlock.py) and resume checks (run_checks.py), and a graceful stop on a scheduler's
signal (preempt.py).
"""
