"""The rehearsal's shard set (scripts/rehearse.py): ImageNet's counts in timm's layout, as the
hub's copy comes, each sample a tiny real JPEG whose bytes are reused; written once, reused while
complete (its _rehearse.json says so)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np

SIDE, VARIANTS = 20, 4  # a JPEG this small stays under 512 bytes: a sample is 2 KiB of tar
PLAN = "_rehearse.json"  # in the shard folder: what was written, and whether it is complete


def say(clock: float, text: str) -> None:
    minutes, seconds = divmod(int(time.monotonic() - clock), 60)
    print(f"[{minutes:3d}:{seconds:02d}] {text}", flush=True)


# ---------------------------------------------------------------- the shard set


def tar_header(name: bytes, size: int) -> bytes:
    """A ustar member header, from a template: tarfile's TarInfo would be most of the time taken
    to write ImageNet's 2.6 M members."""
    size_field = b"%011o\0" % size
    checksum = HEADER_SUM + sum(name) + sum(size_field)
    return (name.ljust(100, b"\0") + HEADER[100:124] + size_field + HEADER[136:148] + b"%06o\0 " % checksum
            + HEADER[156:])


def _template() -> bytes:
    h = bytearray(512)
    h[100:124] = b"0000444\0" b"0000000\0" b"0000000\0"  # mode, uid, gid
    h[136:148] = b"00000000000\0"  # mtime
    h[148:157] = b"        0"  # the checksum counts as spaces; a regular file
    h[257:265] = b"ustar\x0000"
    return bytes(h)


HEADER = _template()
HEADER_SUM = sum(HEADER)  # name and size are zeros in the template


def tar_of(members: list[tuple[bytes, bytes]]) -> bytes:
    parts = []
    for name, data in members:
        parts += [tar_header(name, len(data)), data, bytes(-len(data) % 512)]
    data = b"".join(parts) + bytes(1024)  # two zero blocks end a tar
    return data + bytes(-len(data) % 10240)  # and tarfile pads to its record size


def image_pool(classes: int) -> list[list[bytes]]:
    """VARIANTS small JPEGs per class: a colour per class (10 levels a channel) with noise, so
    a tiny network learns something in an epoch."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pool = []
    for c in range(classes):
        colour = np.array([c % 10, c // 10 % 10, c // 100 % 10]) * 25 + 10
        images = []
        for _ in range(VARIANTS):
            pixels = (colour + rng.normal(0, 6, (SIDE, SIDE, 3))).clip(0, 255).astype(np.uint8)
            out = io.BytesIO()
            Image.fromarray(pixels).save(out, "JPEG", quality=75, optimize=True)
            images.append(out.getvalue())
        pool.append(images)
    return pool


def lengths(n: int, shards: int) -> list[int]:
    return [n // shards + (k < n % shards) for k in range(shards)]


def complete(root: Path, plan: dict) -> bool:
    """ROOT holds the set of `plan`, written to its end."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((root / PLAN).read_text()) == {**plan, "complete": True}
    return False


def refusal(root: Path, plan: dict) -> str | None:
    """Why the set of `plan` cannot be written in ROOT (a folder not ours, too little disk), or None."""
    if complete(root, plan):
        return None
    if root.exists() and not (root / PLAN).is_file():
        return f"{root} exists and was not written by scripts/rehearse.py (no {PLAN}): give another --out"
    need = (plan["train"] + plan["val"]) * 2048 * 1.1  # a tiny JPEG's sample is 4 tar blocks
    parent = next(p for p in [root, *root.parents] if p.exists())
    free = shutil.disk_usage(parent).free
    if free < need:
        return f"the shard set needs {need / 2**30:.1f} GiB, {parent} has {free / 2**30:.1f} GiB free"
    return None


def write_set(root: Path, plan: dict, names: list[str] | None, clock: float) -> str:
    """The shard set of `plan` in ROOT, in the hub's form (no index files; class names only where
    `names` are given, as classes.txt), unless ROOT holds it complete; a set cut short is removed."""
    if complete(root, plan):
        for index in root.glob("*.idx"):  # an earlier rehearsal's: the hub ships none, --index writes them
            index.unlink()
        return "reused (complete)"
    shutil.rmtree(root, ignore_errors=True)  # ours (refusal said so), but another plan or cut short
    try:
        root.mkdir(parents=True)
        (root / PLAN).write_text(json.dumps({**plan, "complete": False}) + "\n")
        total = write_splits(root, plan, clock)
        if names is not None:
            (root / "classes.txt").write_text("".join(f"{c}\n" for c in names))
        (root / PLAN).write_text(json.dumps({**plan, "complete": True}) + "\n")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return f"written, {total / 2**30:.2f} GiB"


def write_splits(root: Path, plan: dict, clock: float) -> int:
    """The tars of both splits, named as the hub names them, and _info.json; returns the bytes written."""
    pool = image_pool(plan["classes"])
    rng = np.random.default_rng(1)
    info = {"name": root.name, "splits": {}}  # the hub's: no "classes"
    total = 0
    for split, hub_name in (("train", "train"), ("val", "validation")):
        n, shards = plan[split], plan[f"{split}_shards"]
        labels = (rng.permutation(n) % plan["classes"]).tolist()  # balanced, in shuffled order
        variants = rng.integers(0, VARIANTS, n).tolist()
        files, start = [], 0
        for k, count in enumerate(lengths(n, shards)):
            files.append(f"imagenet1k-{hub_name}-{k:0{4 if split == 'train' else 2}d}.tar")
            members = []
            for i in range(start, start + count):
                key = b"%s_%08d" % (hub_name.encode(), i)
                members += [(key + b".jpg", pool[labels[i]][variants[i]]), (key + b".cls", b"%d" % labels[i])]
            data = tar_of(members)
            (root / files[-1]).write_bytes(data)
            total += len(data)
            start += count
            if k % 256 == 255:
                say(clock, f"shards: {hub_name} {k + 1}/{shards}")
        info["splits"][hub_name] = {"name": hub_name, "num_samples": n, "filenames": files,
                                    "shard_lengths": lengths(n, shards)}
    (root / "_info.json").write_text(json.dumps(info) + "\n")
    return total
