"""What a split holds, in a few bytes: its sample count and a digest of its sample list.

A run records both for train and val (last.pt, config.yaml), and a resume against other data
stops with one line (bot/train/run_checks.py): one image deleted changes the steps per epoch,
and with them the schedule and the position in the epoch that last.pt holds. Only names are
hashed, never images, so 1.28 M samples cost a fraction of a second.
- A folder (bot.data.folder.Split): each sample's class and file name, in the loaders' order.
  The same files elsewhere (a moved data.root) give the same digest.
- Shards, local or streamed (ShardSplit, StreamSplit): each shard's file name and sample count
  from _info.json; no shard is opened.
"""

from __future__ import annotations

import hashlib
import os


def sample_list(split) -> dict:
    """{"samples": count, "fingerprint": hex digest} of a split (see the module's docstring)."""
    if hasattr(split, "files"):  # a folder: class/name of each image
        lines = (f"{split.classes[label]}/{os.path.basename(path)}" for path, label in zip(split.files, split.labels))
    else:  # shards: name and length of each shard
        lines = (f"{name} {length}" for name, length in zip(split.filenames, split.lengths))
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    return {"samples": len(split), "fingerprint": digest}


def difference(before: dict, now: dict) -> str | None:
    """What changed between two runs' records ({split: sample_list}), in words; None when equal.
    A split missing from `before` (a run recorded before there were records) is not compared."""
    for split, was in before.items():
        new = now.get(split)
        if new is None or new == was:
            continue
        if new["samples"] != was["samples"]:
            return f"{split}: {was['samples']} samples then, {new['samples']} now"
        return f"{split}: the same count ({new['samples']}) but other samples"
    return None
