"""Evaluate a trained model on a val folder:  top-1, top-5 and loss  (installed as `bot-evaluate`)

    python scripts/evaluate.py runs/demo                              # the run's own val set, as trained
    python scripts/evaluate.py runs/demo --sizes 32,40,48 --per-class per-class.csv
    python scripts/evaluate.py runs/demo/last.pt data.root=data/toy-new data.backend=dali --ema
    torchrun --nproc_per_node 8 scripts/evaluate.py runs/x data.root=/data/imagenet

A run folder means its best.pt. The checkpoint's own config is the starting point
(data.root, the backend, the val resize and crop, precision), so with no overrides
the run's val set is measured again exactly as the trainer measured it. Overrides are
dotted.key=value with the training keys: data.root (a folder with val/<class>/ is
enough), data.val_split (that folder's name, or the shard split's: test, validation),
data.backend, data.batch_size (global), data.workers, data.image_size, data.val_resize.
`--sizes` tests several resolutions (the val resize keeps the 256/224 ratio unless
data.val_resize is given) and takes the place of data.image_size: a network trained at one
resolution is often best tested at a slightly larger one. Under torchrun
or accelerate every image is counted once. A bar shows the batches on a terminal; off
one (a pipe, a log file) a line is printed at every tenth of them. SIGTERM or SIGUSR1
stops it with one line and exit status 128 + the signal's number; no partial file is left.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import torch

from bot import config
from bot.cli import command_parser, overrides
from bot.cli.progress import Progress
from bot.cli.stop import run_stoppable
from bot.errors import UserError
from bot.artifacts import outputs, trained

CSV_HEAD = "class,images,top1_"  # the first columns of the per-class CSV


def parse(argv) -> argparse.Namespace:
    p = command_parser(__doc__)
    p.add_argument("checkpoint", help="a checkpoint (best.pt, last.pt), a run folder (its best.pt) "
                                       "or an ONNX model of scripts/export.py or scripts/quantize.py (.onnx)")
    p.add_argument("overrides", nargs="*", help="e.g. data.root=/data/imagenet data.backend=dali")
    p.add_argument("--sizes", default=None, help="test resolutions, e.g. 224,256,288 (default: data.image_size)")
    p.add_argument("--ema", action="store_true", help=f"the moving average of the weights (checkpoint key "
                                                       f"{trained.EMA_KEY!r})")
    p.add_argument("--per-class", metavar="CSV", default=None, help="write each class's images and top-1 here")
    args = p.parse_intermixed_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [None]
    except ValueError:
        p.error(f"--sizes must be integers separated by commas, got {args.sizes!r}")
    return args


def eval_config(model: trained.Trained, given: list[str], size: int | None) -> config.Config:
    """The checkpoint's config with the overrides `given`, at test resolution `size` (None: as it
    is), whose data.root must exist here."""
    cfg = overrides.checkpoint_config(model, given, size)
    root = cfg.data.root
    if "data.root" not in overrides.keys(given) and root and not Path(root).expanduser().is_dir():
        where = f" (relative to {Path.cwd()})" if not Path(root).expanduser().is_absolute() else ""
        raise UserError(f"data.root {root}, from the config in {model.path}, does not exist here{where}: "
                        f"give data.root=/path/to/the/data")
    return cfg


def note_sizes(args) -> None:
    """--sizes sets the test sizes: a data.image_size given as well is not tested; say so."""
    given = [o.partition("=")[2].strip() for o in args.overrides if o.partition("=")[0].strip() == "data.image_size"]
    if given and args.sizes != [None]:
        listed = ",".join(map(str, args.sizes))
        print(f"note: --sizes {listed} sets the test sizes, so data.image_size={given[-1]} is not tested "
              f"(add it to --sizes to test it too)", file=sys.stderr)


class Counted:
    """`loader`, moving `progress` on by one batch as each is done."""

    def __init__(self, loader, progress: Progress):
        self.loader, self.progress = loader, progress

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield batch
            self.progress.update()


def evaluate_sizes(model_info: trained.Trained, args) -> list[dict]:
    from bot.data import build_val_loader
    from bot.train.engine import evaluate, make_accelerator
    from bot.train.trainer import make_autocast

    accelerator = make_accelerator()
    net = trained.build(model_info, ema=args.ema).to(accelerator.device)
    rows = []
    for size in args.sizes:
        cfg = eval_config(model_info, args.overrides, size)
        loader = build_val_loader(cfg, accelerator.process_index, accelerator.num_processes, accelerator.device)
        trained.check_classes(model_info, loader.classes, "checkpoint", f"{cfg.data.root}/{cfg.data.val_split}")
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        with Progress(len(loader), f"evaluate {cfg.data.image_size} px", "batch",
                      enabled=accelerator.is_main_process) as progress:
            metrics = evaluate(net, Counted(loader, progress), accelerator,
                               make_autocast(cfg.precision, accelerator.device), cfg.channels_last,
                               per_class=len(loader.classes))
        rows.append({"size": cfg.data.image_size, "resize": cfg.data.val_resize,
                     "root": f"{cfg.data.root}/{cfg.data.val_split}",
                     "classes": loader.classes, **metrics})
    return rows if accelerator.is_main_process else []


def print_table(model_info: trained.Trained, rows: list[dict], ema: bool) -> None:
    first = rows[0]
    print(f"{model_info.describe()}{' EMA weights' if ema else ''} on {first['root']}: "
          f"{first['val_images']} images")
    print("| test size | resize | top-1 | top-5 | loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['resize']} | {r['top1']:.2f} | {r['top5']:.2f} | {r['val_loss']:.4f} |")


def write_per_class(path: str, rows: list[dict], written: list) -> None:
    text = io.StringIO(newline="")
    out = csv.writer(text, lineterminator="\n")
    out.writerow(["class", "images"] + [f"top1_{r['size']}" for r in rows])
    first = rows[0]
    for k, name in enumerate(first["classes"]):
        n = first["class_images"][k]
        out.writerow([name, n] + [f"{100 * r['class_top1_hits'][k] / n:.2f}" if n else "" for r in rows])
    outputs.write_text(Path(path), text.getvalue())
    written.append(path)
    print(f"per-class top-1 in {path}")


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    written = []

    def body():
        model_info = trained.read(args.checkpoint, onnx=True)
        if args.per_class:  # before the work: refused or unwritable costs nothing
            outputs.check_output(args.per_class, "--per-class", "per-class CSV", outputs.text_starting(CSV_HEAD),
                                 inputs=[model_info.path])
        overrides.check_onnx_size(model_info, args.sizes, args.overrides)
        note_sizes(args)
        rows = evaluate_sizes(model_info, args)
        if rows:  # the main process reports
            print_table(model_info, rows, args.ema)
            if args.per_class:
                write_per_class(args.per_class, rows, written)

    return run_stoppable("evaluate", body, written)


if __name__ == "__main__":
    sys.exit(main())
