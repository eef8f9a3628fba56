"""Classify images with a trained model  (installed as `bot-predict`)

    python scripts/predict.py CHECKPOINT_OR_RUN IMAGES_OR_FOLDERS... [--top 5] [--out preds.csv]

Each image gets its `--top` classes and probabilities, named from the checkpoint's class
list, after the val transform of the checkpoint's config (resize the shorter side, centre
crop). Folders are searched recursively for images. An unreadable file is reported by
name on stderr and skipped; the others are still classified.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from bot.cli import run
from bot.data.folder import IMAGE_SUFFIXES
from bot.errors import UserError, one_line
from bot.files import outputs, trained

CSV_HEAD = "path,class_1,prob_1"  # the first columns of the CSV this command writes


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint (best.pt, last.pt), a run folder (its best.pt) "
                                       "or an int8 model of scripts/quantize.py (.onnx)")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--out", default=None, help="also write the predictions to this CSV (a new file, or one "
                                                "this command wrote before)")
    p.add_argument("--batch", type=int, default=64, help="images per forward pass")
    p.add_argument("--ema", action="store_true", help="the moving average of the weights")
    args = p.parse_args(argv)
    if args.top < 1 or args.batch < 1:
        p.error("--top and --batch must be at least 1")
    return args


def find_images(inputs: list[str]) -> list[Path]:
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.exists():
            files.append(item)  # named explicitly: tried whatever its suffix
        else:
            raise UserError(f"{item} does not exist")
    if not files:
        raise UserError(f"no images found in {', '.join(inputs)}")
    return files


def predict(model, transform, files: list[Path], top: int, batch: int, class_names: list[str]):
    """(path, [(class, probability)] best first) per readable file; unreadable ones are reported."""
    from bot.data.torch_loader import decode

    results, skipped = [], 0
    with tqdm(total=len(files), desc="predict", unit="img", disable=None, leave=False) as bar:
        for start in range(0, len(files), batch):
            chunk, images = [], []
            for path in files[start:start + batch]:
                try:
                    images.append(transform(decode(str(path), hint="")))  # a file given, not a dataset's
                    chunk.append(path)
                except (UserError, OSError, ValueError) as e:
                    bar.write(f"skipped {path}: {one_line(e)}", file=sys.stderr)
                    skipped += 1
            bar.update(len(files[start:start + batch]))
            if not images:
                continue
            with torch.no_grad():
                probs = model(torch.stack(images)).float().softmax(dim=1)
            p, idx = probs.topk(min(top, probs.shape[1]), dim=1)
            for path, ps, ks in zip(chunk, p.tolist(), idx.tolist()):
                results.append((path, [(class_names[k], q) for k, q in zip(ks, ps)]))
    return results, skipped


def predictions_csv(results, top: int) -> str:
    text = io.StringIO(newline="")
    out = csv.writer(text)
    out.writerow(["path"] + [f"{c}_{k}" for k in range(1, top + 1) for c in ("class", "prob")])
    for path, best in results:
        out.writerow([str(path)] + [v for name, p in best for v in (name, f"{p:.6f}")])
    return text.getvalue()


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)

    def body():
        from bot.data.transforms import val_transform

        model_info = trained.read(args.checkpoint, onnx=True)
        files = find_images(args.images)
        if args.out:  # before the work: refused or unwritable costs nothing
            outputs.check_output(args.out, "--out", "predictions CSV", outputs.text_starting(CSV_HEAD),
                                 inputs=[model_info.path, *files])
        model = trained.build(model_info, ema=args.ema)
        names = model_info.classes or [f"class_{k}" for k in range(model_info.num_classes)]
        results, skipped = predict(model, val_transform(model_info.cfg.data), files, args.top, args.batch, names)
        if args.out:
            outputs.write_text(Path(args.out), predictions_csv(results, min(args.top, len(names))))
        for path, best in results:
            print(f"{path}: " + "  ".join(f"{name} {p:.3f}" for name, p in best))
        print(f"{len(results)} image(s) classified" + (f", {skipped} unreadable skipped" if skipped else "")
              + (f"; predictions in {args.out}" if args.out else ""), file=sys.stderr)
        return 0 if results else 2

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
