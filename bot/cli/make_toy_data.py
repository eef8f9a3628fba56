"""Write a small, learnable, deterministic dataset of real JPEGs  (installed as `bot-make-toy-data`)

    python scripts/make_toy_data.py data/toy [--classes 10 --train 100 --val 50 --size 64 --seed 0]
    python scripts/make_toy_data.py data/toy-new --classes 5 --first-shape 5 --train 30 --seed 1
    bot-make-toy-data data/toy && bot-train demo data.root=data/toy      # from any folder, installed

`--first-shape N` starts the classes at the N-th shape: another set of classes (names and
colours), as a dataset to fine-tune on.

The layout is ImageNet's: OUT/train/<class>/*.jpg and OUT/val/<class>/*.jpg. A class is
a shape (circle, square, triangle, ...) in a colour of the class's own hue (saturation
and brightness vary), at a random position, scale and rotation, on a cluttered
background of random colour; images have varied sizes and aspect ratios. Random-resized
crops can cut the object away and colour jitter changes its look, as on ImageNet, yet a
small ResNet learns the set in minutes on a CPU.
The same seed writes the same bytes.
"""

from __future__ import annotations

import colorsys
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bot.cli import command_parser

SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "stripes", "checker", "crescent"]


def polygon(cx, cy, r, n, rot, inner=None):
    """A regular n-gon of radius r, or an n-pointed star whose inner radius is `inner`."""
    k = 2 * n if inner else n
    return [(cx + (inner if inner and i % 2 else r) * math.cos(rot + 2 * math.pi * i / k),
             cy + (inner if inner and i % 2 else r) * math.sin(rot + 2 * math.pi * i / k)) for i in range(k)]


def draw_shape(img: Image.Image, shape: str, cx: float, cy: float, r: float, rot: float, colour, bg):
    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        d.polygon(polygon(cx, cy, r * 1.2, 4, rot), fill=colour)
    elif shape == "triangle":
        d.polygon(polygon(cx, cy, r * 1.2, 3, rot), fill=colour)
    elif shape == "star":
        d.polygon(polygon(cx, cy, r * 1.2, 5, rot, inner=r * 0.45), fill=colour)
    elif shape == "cross":
        w = r * 0.35
        for a in (rot, rot + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * w, dx * w
            d.polygon([(cx - dx * r + px, cy - dy * r + py), (cx + dx * r + px, cy + dy * r + py),
                       (cx + dx * r - px, cy + dy * r - py), (cx - dx * r - px, cy - dy * r - py)], fill=colour)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        d.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=bg)
    elif shape == "diamond":
        pts = [(cx + r * 1.3 * math.cos(rot + k * math.pi / 2) * (1 if k % 2 == 0 else 0.55),
                cy + r * 1.3 * math.sin(rot + k * math.pi / 2) * (1 if k % 2 == 0 else 0.55)) for k in range(4)]
        d.polygon(pts, fill=colour)
    elif shape == "stripes":
        for k in range(-2, 3):
            y = cy + k * r * 0.42
            d.rectangle([cx - r, y - r * 0.12, cx + r, y + r * 0.12], fill=colour)
    elif shape == "checker":
        s = r * 2 / 4
        for i in range(4):
            for j in range(4):
                if (i + j) % 2 == 0:
                    x0, y0 = cx - r + i * s, cy - r + j * s
                    d.rectangle([x0, y0, x0 + s, y0 + s], fill=colour)
    elif shape == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        ox, oy = r * 0.5 * math.cos(rot), r * 0.5 * math.sin(rot)
        d.ellipse([cx - r + ox, cy - r + oy, cx + r + ox, cy + r + oy], fill=bg)


def luminance(c) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def class_colour(rng: np.random.Generator, label: int, classes: int):
    """A colour near the class's own hue, with random saturation and brightness."""
    hue = (label / classes + rng.uniform(-0.03, 0.03)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def make_image(rng: np.random.Generator, label: int, classes: int, size: int, first: int = 0) -> Image.Image:
    w = int(size * rng.uniform(0.7, 1.4))
    h = int(size * rng.uniform(0.7, 1.4))
    colour = class_colour(rng, label, classes)
    while True:  # a background the object stands out from
        bg = tuple(int(v) for v in rng.integers(0, 256, 3))
        if abs(luminance(colour) - luminance(bg)) > 50:
            break
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):  # clutter: strokes and blobs near the background colour
        c = tuple(int(v) for v in np.clip(np.array(bg) + rng.integers(-70, 71, 3), 0, 255))
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.5:
            d.line([x0, y0, x0 + rng.uniform(-w, w) / 2, y0 + rng.uniform(-h, h) / 2], fill=c,
                   width=int(rng.integers(1, 4)))
        else:
            s = rng.uniform(2, size / 10)
            d.ellipse([x0 - s, y0 - s, x0 + s, y0 + s], fill=c)
    r = min(w, h) * rng.uniform(0.22, 0.36)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    draw_shape(img, SHAPES[(first + label) % len(SHAPES)], cx, cy, r, rng.uniform(0, 2 * math.pi), colour, bg)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def write(out: Path, classes: int, counts: dict[str, int], size: int, seed: int, first: int = 0) -> None:
    names = [f"{k:02d}_{SHAPES[k % len(SHAPES)]}" for k in range(first, first + classes)]
    total = sum(counts.values()) * classes
    done = 0
    for split_id, (split, n) in enumerate(counts.items()):
        for label, name in enumerate(names):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([seed, split_id, label, i])
                make_image(rng, label, classes, size, first).save(folder / f"{i:05d}.jpg", quality=90)
                done += 1
            if sys.stderr.isatty():  # a count that rewrites itself; a log gets the one line below
                print(f"\r{out}: {done}/{total} images", end="", file=sys.stderr, flush=True)
    back = "\r" if sys.stderr.isatty() else ""
    print(f"{back}{out}: {total} images, {classes} classes: {counts['train']} train and {counts['val']} val each",
          file=sys.stderr)
    (out / ".complete").write_text(f"classes={classes} train={counts['train']} val={counts['val']} "
                                   f"size={size} seed={seed} first_shape={first}\n")


def main(argv=None) -> int:
    p = command_parser(__doc__)
    p.add_argument("out", type=Path, help="the dataset folder: OUT/train/<class>/*.jpg, OUT/val/<class>/*.jpg")
    p.add_argument("--classes", type=int, default=10, help=f"at most {len(SHAPES)} distinct shapes")
    p.add_argument("--train", type=int, default=100, help="images per class in train/")
    p.add_argument("--val", type=int, default=50, help="images per class in val/")
    p.add_argument("--size", type=int, default=64, help="typical image side; each image varies around it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first-shape", type=int, default=0, help="classes start at this shape (another class set)")
    a = p.parse_args(argv)
    if not 2 <= a.classes <= len(SHAPES) - a.first_shape or a.first_shape < 0:
        p.error(f"--classes must be in [2, {len(SHAPES)} - --first-shape], --first-shape 0 or more")
    if a.train < 1 or a.val < 1 or a.size < 32:
        p.error("--train and --val must be at least 1 and --size at least 32")
    write(a.out, a.classes, {"train": a.train, "val": a.val}, a.size, a.seed, a.first_shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
