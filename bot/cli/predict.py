"""Classify images with a trained model  (installed as `bot-predict`)

    python scripts/predict.py runs/demo photos/                       # the best class per image
    python scripts/predict.py runs/demo photos/ cat.png --topk 3 --out preds.csv
    python scripts/predict.py runs/demo photos/ --topk 5 --results-separate-col --out preds.parquet
    python scripts/predict.py runs/demo/best.int8.onnx photos/ --out preds.jsonl --include-index
    python scripts/predict.py runs/demo photos/ data.image_size=40   # another test size

Each image gets its --topk classes and probabilities, named from the checkpoint's class
list, after the val transform of the checkpoint's config (resize the shorter side, centre
crop); data.* overrides change that transform as they do for evaluate (data.image_size,
data.val_resize, data.antialias). A folder is searched recursively for files with an image
suffix (.jpg .jpeg .png .bmp .webp .tif .tiff); the other files there are counted and named
by suffix on stderr, and a file named explicitly is tried whatever its suffix (a .gif is
read as its first frame). An unreadable file is reported by name on stderr and skipped;
the others are still classified.

--out writes the predictions in the layout of timm's inference.py: columns filename, label
and prob (index with --include-index); with --topk K > 1 each holds a list of K, best first,
or with --results-separate-col one column per rank (label_0, prob_0, label_1 ...). The format
comes from the suffix (.csv, .json: an object keyed by filename, .jsonl: one JSON object per
line, .parquet) unless --results-format says; parquet needs pyarrow. --out may replace this
command's own earlier predictions, never a checkpoint, an input or a run's files.
SIGTERM or SIGUSR1 stops it with one line and exit status 128 + the signal's number; no
partial --out file is left.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch

from bot.cli import command_parser, overrides
from bot.cli.progress import Progress
from bot.cli.stop import run_stoppable
from bot.data.folder import IMAGE_SUFFIXES
from bot.errors import UserError, one_line
from bot.artifacts import outputs, predictions, trained


def parse(argv):
    p = command_parser(__doc__)
    p.add_argument("checkpoint", help="a checkpoint (best.pt, last.pt), a run folder (its best.pt) "
                                       "or an ONNX model of scripts/export.py or scripts/quantize.py (.onnx)")
    p.add_argument("images", nargs="+", metavar="IMAGES_OR_FOLDERS",
                   help="image files and/or folders, and any data.KEY=VALUE overrides")
    p.add_argument("--topk", "--top", type=int, default=1, help="classes per image, best first (default 1)")
    p.add_argument("--out", "--results-file", default=None,
                   help="also write the predictions here (a new file, or one this command wrote before)")
    p.add_argument("--results-format", choices=list(predictions.FORMATS), default=None,
                   help="the --out format (default: from its suffix)")
    p.add_argument("--results-separate-col", action="store_true",
                   help="with --topk > 1: a column per rank (label_0, prob_0 ...) instead of lists")
    p.add_argument("--include-index", action="store_true", help="also the class index (column index)")
    p.add_argument("--batch", type=int, default=64, help="images per forward pass")
    p.add_argument("--ema", action="store_true", help="the moving average of the weights")
    args = p.parse_intermixed_args(argv)
    if args.topk < 1 or args.batch < 1:
        p.error("--topk and --batch must be at least 1")
    args.overrides = [item for item in args.images if overrides.is_override(item)]
    args.images = [item for item in args.images if item not in args.overrides]
    other = sorted(k for k in overrides.keys(args.overrides) if not k.startswith("data."))
    if other:
        p.error(f"predict takes data.* overrides only (the val transform), got {other[0]}")
    if not args.images:
        p.error("no images or folders given")
    if args.results_format and not args.out:
        p.error("--results-format needs --out")
    return args


def find_images(inputs: list[str]) -> list[Path]:
    """The files to classify, each once; a folder's non-image files are reported by suffix."""
    files, passed = [], Counter()
    named = {Path(item).resolve() for item in inputs if Path(item).is_file()}
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file())
            files += [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
            passed.update(p.suffix.lower() or "(none)" for p in found
                          if p.suffix.lower() not in IMAGE_SUFFIXES and p.resolve() not in named)
        elif item.exists():
            files.append(item)  # named explicitly: tried whatever its suffix
        else:
            raise UserError(f"{item} does not exist")
    if passed:
        kinds = ", ".join(f"{n} {suffix}" for suffix, n in sorted(passed.items()))
        print(f"not read from the folders: {sum(passed.values())} file(s) without an image suffix ({kinds}); "
              f"name a file to try it anyway", file=sys.stderr)
    files = list(dict.fromkeys(files))
    if not files:
        raise UserError(f"no images found in {', '.join(inputs)}")
    return files


def predict(model, transform, files: list[Path], top: int, batch: int, class_names: list[str]):
    """(path, [{"index", "label", "prob"}] best first) per readable file; unreadable ones are reported."""
    from bot.data.torch_loader import decode

    results, skipped = [], 0
    with Progress(len(files), "predict", "img") as progress:
        for start in range(0, len(files), batch):
            chunk, images = [], []
            for path in files[start:start + batch]:
                try:
                    images.append(transform(decode(str(path), hint="")))  # a file given, not a dataset's
                    chunk.append(path)
                except (UserError, OSError, ValueError) as e:
                    progress.write(f"skipped {path}: {one_line(e)}")
                    skipped += 1
            progress.update(len(files[start:start + batch]))
            if not images:
                continue
            with torch.no_grad():
                probs = model(torch.stack(images)).float().softmax(dim=1)
            p, idx = probs.topk(min(top, probs.shape[1]), dim=1)
            for path, ps, ks in zip(chunk, p.tolist(), idx.tolist()):
                results.append((str(path), [{"index": k, "label": class_names[k], "prob": round(q, 6)}
                                            for k, q in zip(ks, ps)]))
    return results, skipped


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    written = []

    def body():
        from bot.data.transforms import val_transform

        model_info = trained.read(args.checkpoint, onnx=True)
        overrides.check_onnx_size(model_info, [], args.overrides)
        cfg = overrides.checkpoint_config(model_info, args.overrides)
        files = find_images(args.images)
        fmt = None
        if args.out:  # before the work: refused or unwritable costs nothing
            outputs.check_output(args.out, "--out", "predictions file", predictions.is_predictions,
                                 inputs=[model_info.path, *files])
            fmt = predictions.format_of(Path(args.out), args.results_format)
            predictions.check_writer(fmt)
        model = trained.build(model_info, ema=args.ema)
        names = model_info.classes or [f"class_{k}" for k in range(model_info.num_classes)]
        results, skipped = predict(model, val_transform(cfg.data), files, args.topk, args.batch, names)
        if args.out and results:
            topk = min(args.topk, len(names))
            predictions.write(Path(args.out), predictions.columns(results, topk, args.include_index,
                                                                  args.results_separate_col), fmt)
            written.append(args.out)
        for path, best in results:
            print(f"{path}: " + "  ".join(f"{e['label']} {e['prob']:.3f}" for e in best))
        print(f"{len(results)} image(s) classified" + (f", {skipped} unreadable skipped" if skipped else "")
              + (f"; predictions in {args.out} ({fmt})" if args.out and results else ""), file=sys.stderr)
        return 0 if results else 2

    return run_stoppable("predict", body, written)


if __name__ == "__main__":
    sys.exit(main())
