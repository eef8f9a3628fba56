"""Network slimming: remove the channels with the smallest BN scales  (installed as `bot-slim`)

    python train.py recipes/compress-demo.yaml data.root=data/toy      # trained with model.slim_l1
    python scripts/slim.py runs/compress-demo --ratio 0.3 --round-to 8 --out runs/compress-demo-slim
    python train.py recipes/compress-demo-finetune.yaml data.root=data/toy   # fine-tune what is left

The `--ratio` share of the channels inside the residual blocks whose |gamma| is smallest
over the whole network (Liu et al., ICCV 2017; train with model.slim_l1 so that many
gammas are ~0) is removed: the convs, their BNs and the next convs really get narrower.
DIR/best.pt is a checkpoint like the trainer's, with the narrower weights: fine-tune it
with `model.init_from=DIR/best.pt` (same recipe), or evaluate, predict, export and
quantize it. DIR/slim.json lists the channels kept per layer. DIR is a new folder or one this
command wrote before: never a training run's folder. Both files are written aside and renamed
together; a write that fails (a full disk) replaces neither and leaves no folder this command
made. `--round-to 8` keeps a multiple of 8 channels in every layer (removing a little less
than --ratio): convolution kernels run such counts faster than odd ones, on the CPU and on
GPUs' tensor cores.
A network trained without model.slim_l1 has few gammas near 0, so the ranking says little
about which channels matter: slimming it is allowed, with a warning.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import torch

from bot.cli import command_parser, run
from bot.errors import UserError
from bot.artifacts import outputs, trained


def parse(argv) -> argparse.Namespace:
    p = command_parser(__doc__)
    p.add_argument("checkpoint", help="a checkpoint (best.pt, last.pt) or a run folder (its best.pt)")
    p.add_argument("--ratio", type=float, required=True, help="share of the in-block channels to remove, in (0, 1)")
    p.add_argument("--out", required=True, help="folder for the slimmed checkpoint (DIR/best.pt)")
    p.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="every layer keeps a multiple of N channels (or all it had); default 1")
    args = p.parse_args(argv)
    if not 0 < args.ratio < 1:
        p.error(f"--ratio must be in (0, 1), got {args.ratio}")
    if args.round_to < 1:
        p.error(f"--round-to must be at least 1, got {args.round_to}")
    return args


def _slimmed_checkpoint(path: Path) -> bool:
    from bot.artifacts.checkpoint import load

    try:
        return "slim" in load(path)
    except Exception:
        return False


def check_out(out: Path, source: Path) -> Path:
    """The folder to write DIR/best.pt and DIR/slim.json into: new, or this command's own
    earlier output; never a training run's folder (its summary.json would describe other
    weights) nor the checkpoint being slimmed (bot/artifacts/outputs.py's rule)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if not out.exists():
        parent = next(p for p in out.parents if p.exists())
        if not parent.is_dir():
            raise UserError(f"--out {out}: {parent} is a file, not a folder")
        outputs.check_writable(parent, "--out")
        return out
    trainer = [n for n in outputs.RUN_FILES if n != "best.pt" and (out / n).exists()]
    if trainer:
        raise UserError(f"--out {out} is a training run's folder (it has {trainer[0]}): its best.pt is that "
                        f"run's; slim into a new folder")
    outputs.check_output(out / "best.pt", "--out", "slimmed checkpoint", _slimmed_checkpoint, inputs=[source])
    outputs.check_output(out / "slim.json", "--out", "slim.json", outputs.json_of(
        lambda info: isinstance(info, dict) and "channels" in info), inputs=[source])
    return out


def warn_unpenalized(source: trained.Trained, near_zero: int, total: int) -> None:
    """Liu et al.'s ranking works because the L1 penalty drives unneeded gammas to ~0; without it
    the smallest gammas are merely small, and removing them costs accuracy a fine-tune must win back."""
    l1 = source.cfg.model.slim_l1
    if l1 and near_zero:
        return
    if not l1:
        why = f"was trained without model.slim_l1: {near_zero} of its {total} in-block |gamma| are below 1e-3"
    else:
        why = (f"was trained with model.slim_l1={l1:g}, but none of its {total} in-block |gamma| is below 1e-3 "
               f"(a weak penalty or a short run)")
    print(f"warning: {source.path} {why}, so the ranking says little about which channels matter: expect to "
          f"lose accuracy and fine-tune, or train with model.slim_l1 (Liu et al. use 1e-5 to 1e-4)", file=sys.stderr)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)

    def body():
        from bot.export.prune import prune
        from bot.models import count_params_macs
        from bot.models.slimmable import slimmed_pairs

        source = trained.read(args.checkpoint)
        m = source.cfg.model
        if not m.arch.startswith("resnet"):
            raise UserError(f"{source.path} is a {m.arch}: slimming removes channels inside residual blocks")
        out = check_out(Path(args.out), source.path)
        model = trained.build(source)
        size = source.cfg.data.image_size
        params, macs = count_params_macs(model, size)
        names = {id(conv): name for name, conv in model.named_modules()}
        layers = [names[id(conv)] for conv, _ in slimmed_pairs(model)]
        near_zero = sum(int((bn.weight.abs() < 1e-3).sum()) for _, bn in slimmed_pairs(model))
        warn_unpenalized(source, near_zero, sum(bn.weight.numel() for _, bn in slimmed_pairs(model)))
        counts = prune(model, args.ratio, size, args.round_to)
        with torch.no_grad():
            model(torch.zeros(2, 3, size, size))  # the narrower network runs
        new_params, new_macs = count_params_macs(model, size)
        total = sum(b for b, _ in counts)
        info = {"ratio": args.ratio, "round_to": args.round_to, "from": str(source.path), "params": [params, new_params],
                "macs": [macs, new_macs], "channels": {n: list(c) for n, c in zip(layers, counts)}}
        checkpoint = io.BytesIO()  # in memory: torch's file writer fails on a full disk without an errno
        torch.save({"model": model.state_dict(), "config": source.cfg.to_dict(), "num_classes": source.num_classes,
                    "classes": source.classes, "slim": info}, checkpoint)
        with outputs.made_folder(out):
            outputs.write_files({out / "best.pt": checkpoint.getvalue(),
                                 out / "slim.json": (json.dumps(info, indent=2) + "\n").encode()})
        removed = total - sum(a for _, a in counts)
        print(f"slimmed {source.describe()}: {removed} of {total} in-block channels removed ({removed / total:.1%}; "
              f"{near_zero} had |gamma| < 1e-3)" + (f", every layer a multiple of {args.round_to}" if args.round_to > 1 else ""))
        print("| | params | MACs per image |\n|---|---|---|")
        print(f"| before | {params / 1e6:.3f} M | {macs / 1e6:.2f} M |")
        print(f"| after | {new_params / 1e6:.3f} M | {new_macs / 1e6:.2f} M |")
        print(f"wrote {out / 'best.pt'} (fine-tune it with model.init_from={out / 'best.pt'}); "
              f"channels per layer in {out / 'slim.json'}")
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
