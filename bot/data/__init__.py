"""`build_loaders(cfg) -> (train, val)`: the same semantics from DALI or torchvision.

Both yield `(images, labels)` torch tensors, images float32 NCHW normalized with the
paper's mean and std. The train loader has `set_epoch(epoch, start_step)` and a length in
steps; each batch is this process's share of one optimizer step (data.batch_size is the
global batch). The val loader covers this process's share of the val set once.
Both carry `samples`: the split's count and fingerprint (bot.data.fingerprint), which a run
records to refuse a resume on other data.
"""

from __future__ import annotations

from bot.data.fingerprint import sample_list
from bot.data.folder import dataset_root, on_rank_zero, scan_dataset, scan_val
from bot.data.shards import is_shard_folder, open_shards, open_val_shards


def is_url(root) -> bool:
    """data.root=http(s)://...: shards streamed by the torch loader (bot.data.stream)."""
    return isinstance(root, str) and root.startswith(("http://", "https://"))
from bot.errors import UserError


def open_dataset(root: str | None, val_split: str = "val"):
    """(train, val) of data.root, val being the held-out split data.val_split: a shard folder (it
    holds _info.json: bot.data.shards, which reads that file alone) or an ImageNet-layout folder
    (bot.data.folder, scanned once)."""
    if root and is_shard_folder(dataset_root(root)):
        return open_shards(dataset_root(root), val_split)
    return scan_dataset(root, val_split)


def per_process_batch(cfg, world: int) -> int:
    """Global batch / processes, which must also split into data.accumulate micro-batches."""
    b, acc = cfg.data.batch_size, cfg.data.accumulate
    if b % (world * acc):
        raise UserError(f"data.batch_size {b} is not divisible by {world} processes x data.accumulate {acc}")
    return b // world


def build_loaders(cfg, rank: int | None = None, world: int | None = None, device=None):
    train_split, val_split, (train, val) = _build_loaders(cfg, rank, world, device)
    train.samples, val.samples = sample_list(train_split), sample_list(val_split)
    return train, val


def _build_loaders(cfg, rank, world, device):
    """(train split, val split, (train loader, val loader))."""
    if rank is None or world is None or device is None:
        from accelerate import PartialState
        state = PartialState()
        rank, world, device = state.process_index, state.num_processes, state.device
    batch = per_process_batch(cfg, world)
    if is_url(cfg.data.root):
        if cfg.data.backend == "dali":
            raise UserError(f"data.root {cfg.data.root} is a URL: data.backend=dali reads local shards (stage them on "
                            f"the node, docs/data.md), data.backend=torch streams them")
        import torch

        from bot.data.stream import open_stream, stream_loaders
        train, val = open_stream(cfg.data.root, cfg.data.val_split)
        return train, val, stream_loaders(train, val, cfg, rank, world, batch, torch.device(device).type == "cuda")
    train, val = open_dataset(cfg.data.root, cfg.data.val_split)
    if len(train) < batch * world:
        raise UserError(f"data.batch_size {cfg.data.batch_size} is larger than the {len(train)} training images "
                        f"in {cfg.data.root}")
    if cfg.data.backend == "dali":
        from bot.data.dali import build_dali_loaders
        return train, val, build_dali_loaders(train, val, cfg, rank, world, batch, device)
    from bot.data.torch_loader import build_torch_loaders
    return train, val, build_torch_loaders(train, val, cfg, rank, world, batch, device)


def build_val_loader(cfg, rank: int, world: int, device):
    """The val loader alone, for evaluating a trained model: data.root needs only its
    data.val_split folder (val/, test/, ...) or shard split.
    data.batch_size stays the global batch; every image is counted once over the processes."""
    batch = max(1, cfg.data.batch_size // world)
    if is_url(cfg.data.root) and cfg.data.backend == "torch":
        import torch

        from bot.data.stream import open_stream, stream_val_loader
        return stream_val_loader(open_stream(cfg.data.root, cfg.data.val_split)[1], cfg.data, rank, world, batch,
                                 torch.device(device).type == "cuda")
    root = dataset_root(cfg.data.root)
    split = cfg.data.val_split
    val = open_val_shards(root, split) if is_shard_folder(root) else on_rank_zero(lambda: scan_val(root, split))
    if cfg.data.backend == "dali":
        from bot.data.dali import DaliValLoader
        return DaliValLoader(val, cfg.data, rank, world, batch, device)
    import torch

    from bot.data.torch_loader import ValLoader
    return ValLoader(val, cfg.data, rank, world, batch, pin=torch.device(device).type == "cuda")
