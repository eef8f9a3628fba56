"""Images per second of the DALI and torchvision loaders on the same JPEGs, in one run.

    python scripts/bench_loader.py [--images 256 --batch 64 --epochs 8 --threads 2 --save docs/benchmarks.md]

Writes ImageNet-like JPEGs (about 500 x 375, photo-like texture) into a temporary
folder and times, on the same files and with the same output (224 x 224 normalized
float32 NCHW):
- torchvision: bot's torch loader, the paper's full augmentation (section 2);
- DALI (CPU): bot's DALI loader, the same augmentation;
- both again without PCA lighting (the calibration figures were taken so);
- DALI decode + random crop alone (fn.readers.file + fn.decoders.image_random_crop):
  the decode-bound ceiling of any DALI pipeline on this machine, and the same plus
  DALI's antialiased resize to 224 (why the loader resizes with torchvision on the CPU);
- DALI (GPU) when a GPU is present;
- both loaders again on the same images as WebDataset shards (bot-make-shards, label
  order, so the same batches): where the bytes come from is all that changes.
Prints a table, then one line holding a JSON object of the figures. With --save, the
table and the command replace the "## Data loader" section of that Markdown file.
A benchmark, not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.cli.make_shards import make_shards  # noqa: E402
from bot.config import load  # noqa: E402
from bot.data import build_loaders  # noqa: E402

SECTION = "## Data loader"


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour regions plus fine texture: JPEG sizes and decode times near ImageNet's."""
    img = np.zeros((height, width, 3), np.float32)
    for cells, weight in ((4, 90), (16, 45), (64, 20), (256, 8)):
        noise = rng.normal(0, 1, (max(2, cells * height // width), cells, 3)).astype(np.float32)
        up = Image.fromarray(np.uint8(np.clip(noise * 40 + 128, 0, 255))).resize((width, height), Image.BICUBIC)
        img += (np.asarray(up, np.float32) - 128) * weight / 40
    img += rng.normal(0, 6, img.shape)  # sensor noise
    return Image.fromarray(np.uint8(np.clip(img + 128, 0, 255)))


def write_images(root: Path, n: int, classes: int = 4, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    shapes = [(500, 375), (375, 500), (500, 333), (500, 400), (480, 360), (640, 480)]
    for split, count in (("train", n), ("val", classes)):
        for i in range(count):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = shapes[int(rng.integers(len(shapes)))]
            photo_like(rng, w, h).save(folder / f"{i:05d}.jpg", quality=90)


def cpu_seconds() -> float:
    """CPU time of this process and every process under it, live or finished.

    The torch loader's workers start from a fork server (a child of this process), so
    their time is theirs while they live and the fork server's once it reaps them; each
    second is counted once over the tree.
    """
    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:  # exited between the listing and the read
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def measure(make, epochs: int) -> tuple[float, float]:
    """(img/s, CPU ms per image) over `epochs` epochs after a warm-up epoch.

    The wall rate is what a run sees; the CPU cost per image (workers and DALI threads
    included, start-up excluded) depends little on what else the machine is running.
    """
    loader = make()
    loader.set_epoch(0)
    for images, _ in loader:
        pass
    n, cpu0, t0 = 0, cpu_seconds(), time.perf_counter()
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        for images, _ in loader:
            n += len(images)
    if getattr(images, "is_cuda", False):
        torch.cuda.synchronize()
    rate = n / (time.perf_counter() - t0)
    cpu_ms = (cpu_seconds() - cpu0) * 1000 / n
    del loader, images
    gc.collect()
    return rate, cpu_ms


def loader_rate(root: Path, backend: str, args, device: str, pca: float, antialias: bool = True) -> tuple[float, float]:
    cfg = load(None, [f"data.root={root}", f"data.backend={backend}", f"data.batch_size={args.batch}",
                      f"data.workers={args.threads}", f"data.pca_lighting={pca}", f"data.antialias={antialias}"])
    return measure(lambda: build_loaders(cfg, 0, 1, device)[0], args.epochs)


class BarePipeline:
    """A DALI pipeline behind the loaders' set_epoch / iteration interface."""

    def __init__(self, pipe, steps: int):
        self.pipe, self.steps = pipe, steps

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        for _ in range(self.steps):
            yield self.pipe.run()


def decode_crop_rate(root: Path, args, resize: bool = False) -> tuple[float, float]:
    """DALI's reader + fused decode and random crop, nothing else: the decode-bound ceiling.

    With `resize`, also the antialiased resize to 224 x 224: what decoding and resizing
    alone cost, before any colour work, normalization or Python.
    """
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    files = sorted(str(p) for p in (root / "train").glob("*/*.jpg"))

    def make():
        pipe = Pipeline(batch_size=args.batch, num_threads=args.threads, device_id=None, seed=0)
        with pipe:
            jpegs, labels = fn.readers.file(files=files, labels=list(range(len(files))), random_shuffle=True)
            images = fn.decoders.image_random_crop(jpegs, output_type=types.RGB, random_area=[0.08, 1.0],
                                                   random_aspect_ratio=[0.75, 1.3333])
            if resize:
                images = fn.resize(images, size=[224, 224], interp_type=types.INTERP_LINEAR, antialias=True)
            pipe.set_outputs(images, labels)
        pipe.build()
        return BarePipeline(pipe, len(files) // args.batch)

    return measure(make, args.epochs)


ROWS = [  # key, label
    ("torch", "torchvision, full augmentation"),
    ("dali", "DALI CPU, full augmentation"),
    ("torch_no_aa", "torchvision, full augmentation, no antialias (ImageNet recipes)"),
    ("dali_no_aa", "DALI CPU, full augmentation, no antialias (ImageNet recipes)"),
    ("torch_no_pca", "torchvision, no PCA lighting"),
    ("dali_no_pca", "DALI CPU, no PCA lighting"),
    ("decode_crop", "DALI decode + random crop alone (ceiling)"),
    ("decode_crop_resize", "DALI decode + random crop + DALI's resize (not used on the CPU)"),
    ("torch_shards", "torchvision, full augmentation, from shards"),
    ("dali_shards", "DALI CPU, full augmentation, from shards"),
]


def shard_lines(r: dict) -> list[str]:
    """The shards / folder ratios, for the rows measured."""
    return [f"Shards / folder ({name}, same images, same batches): {r[key + '_shards'] / r[key]:.2f}x in img/s, "
            f"{r[key + '_cpu_ms'] / r[key + '_shards_cpu_ms']:.2f}x in images per CPU second."
            for key, name in (("torch", "torchvision"), ("dali", "DALI CPU")) if key in r and key + "_shards" in r]


def table(r: dict, args) -> str:
    lines = ["| loader | img/s | CPU ms / img | img/s per core |", "|---|---|---|---|"]
    for key, label in ROWS:
        if key in r:
            lines.append(f"| {label} | {r[key]:,.0f} | {r[key + '_cpu_ms']:.2f} | {1000 / r[key + '_cpu_ms']:,.0f} |")
    gpu = f"{r['dali_gpu']:,.0f} img/s" if r.get("dali_gpu") else "not measured yet"
    lines += [f"| DALI GPU, full augmentation | {gpu} | | |", "", *shard_lines(r), ""]
    if not all(key in r for key, _ in ROWS):  # --only: the rows measured, then the set-up
        return "\n".join(lines + [setup(args)])
    lines += [
              f"DALI / torchvision, full augmentation: {r['dali_vs_torch']:.2f}x in img/s, "
              f"{r['dali_vs_torch_cpu']:.2f}x in CPU time per image. DALI full / decode-bound ceiling: "
              f"{r['dali_vs_ceiling']:.0%} in img/s, {r['dali_vs_ceiling_cpu']:.0%} in CPU time.",
              f"Without antialiasing (the ImageNet recipes, as the authors' code): DALI / torchvision "
              f"{r['dali_no_aa_vs_torch_no_aa']:.2f}x in img/s, DALI / ceiling {r['dali_no_aa_vs_ceiling']:.0%} in img/s, "
              f"{r['decode_crop_cpu_ms'] / r['dali_no_aa_cpu_ms']:.0%} in CPU time.",
              "",
              f"Where the DALI loader's CPU time goes, per image: decode + crop {r['decode_crop_cpu_ms']:.2f} ms "
              f"(DALI's threads); torchvision's resize, the flip, jitter, lighting, normalization and feeding "
              f"+{r['dali_cpu_ms'] - r['decode_crop_cpu_ms']:.2f} ms (the main thread). DALI's own antialiased CPU "
              f"resize alone would add {r['decode_crop_resize_cpu_ms'] - r['decode_crop_cpu_ms']:.2f} ms.",
              "", setup(args)]
    return "\n".join(lines)


def setup(args) -> str:
    return (f"{args.images} JPEGs (~500 x 375, quality 90), batch {args.batch}, {args.threads} DALI threads / "
            f"torch workers, {args.epochs} timed epochs after a warm-up epoch; {os.cpu_count()} CPU cores, "
            f"load average {os.getloadavg()[0]:.1f} at the end. CPU time per image counts every thread and worker "
            "(start-up and the warm-up epoch excluded) and depends little on what else the machine runs; img/s does.")


def save(path: Path, text: str) -> None:
    """Replace (or append) this script's section; other sections stay as they are."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip() + "\n\n" + text + "\n"
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + ("\n" + old[end:] if end >= 0 else "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8, help="timed epochs over the images, per loader")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="DALI threads and torch workers")
    p.add_argument("--save", type=Path, help="Markdown file whose '## Data loader' section gets the table")
    p.add_argument("--only", default="", help="comma-separated rows to measure (e.g. torch,torch_shards), not --save")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the loaders' own threads do the work; keep the main thread's ops serial
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "folder", args.images)
        make_shards(root / "folder", root / "shards", shuffle=False, shard_samples=64, progress=False)
        shards, root = root / "shards", root / "folder"
        runs = {"torch": lambda: loader_rate(root, "torch", args, "cpu", 0.1),
                "dali": lambda: loader_rate(root, "dali", args, "cpu", 0.1),
                "torch_no_aa": lambda: loader_rate(root, "torch", args, "cpu", 0.1, antialias=False),
                "dali_no_aa": lambda: loader_rate(root, "dali", args, "cpu", 0.1, antialias=False),
                "torch_no_pca": lambda: loader_rate(root, "torch", args, "cpu", 0.0),
                "dali_no_pca": lambda: loader_rate(root, "dali", args, "cpu", 0.0),
                "decode_crop": lambda: decode_crop_rate(root, args),
                "decode_crop_resize": lambda: decode_crop_rate(root, args, resize=True),
                "torch_shards": lambda: loader_rate(shards, "torch", args, "cpu", 0.1),
                "dali_shards": lambda: loader_rate(shards, "dali", args, "cpu", 0.1)}
        only = [k for k in args.only.split(",") if k]
        if only and (set(only) - set(runs) or args.save):
            p.error(f"--only takes rows of {sorted(runs)}, without --save")
        r = {}
        for key, run in runs.items():
            if only and key not in only:
                continue
            r[key], r[key + "_cpu_ms"] = run()
            print(f"{key}: {r[key]:,.0f} img/s, {r[key + '_cpu_ms']:.2f} CPU ms per image", file=sys.stderr)
        r["dali_gpu"] = loader_rate(root, "dali", args, "cuda:0", 0.1)[0] if torch.cuda.is_available() and not only else None
    if only:
        print(table(r, args))
        return 0
    r["dali_vs_torch"] = r["dali"] / r["torch"]
    r["dali_vs_torch_cpu"] = r["torch_cpu_ms"] / r["dali_cpu_ms"]
    r["dali_vs_ceiling"] = r["dali"] / r["decode_crop"]
    r["dali_vs_ceiling_cpu"] = r["decode_crop_cpu_ms"] / r["dali_cpu_ms"]
    r["dali_no_aa_vs_torch_no_aa"] = r["dali_no_aa"] / r["torch_no_aa"]
    r["dali_no_aa_vs_ceiling"] = r["dali_no_aa"] / r["decode_crop"]
    text = table(r, args)
    print(text)
    figures = json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
    if args.save:
        command = " ".join(["python scripts/bench_loader.py", *(argv if argv is not None else sys.argv[1:])])
        save(args.save, f"{SECTION}\n\n`{command}`\n\n{text}\n\n```\n{figures}\n```\n")
    print(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
