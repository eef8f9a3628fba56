"""Export a trained model for deployment  (installed as `bot-export`)

    python scripts/export.py CHECKPOINT_OR_RUN --format onnx|torchscript|timm [--out PATH] [--ema]

The output (default: beside the checkpoint) may be a new file or this command's own earlier
export of the same format; it never replaces a checkpoint or a file of a run folder.
onnx: a dynamic batch axis, input `images` (N, 3, S, S) normalized as in training,
output `logits`; checked with onnxruntime. torchscript: torch.jit.script, loaded back and
checked. timm: the weights as NAME.safetensors (class names in its metadata) and NAME.pth
(--out names either),
checked by `timm.create_model(..., checkpoint_path=...)`, whose exact call is printed.
Each check runs random input through both models and prints the largest absolute
difference of the logits; a difference above the tolerance exits 1 and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bot.cli import run
from bot.errors import UserError
from bot.files import outputs, trained

SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "timm": ".timm.safetensors"}
# an earlier export of each format, which a new one may replace
OWN = {"onnx": outputs.onnx_file, "torchscript": outputs.torchscript_file, "timm": outputs.safetensors_file}


def output_paths(args, model_info: trained.Trained) -> list[Path]:
    """The files this export writes, checked before any work (bot/files/outputs.py's rule)."""
    out = Path(args.out) if args.out else model_info.path.with_suffix(SUFFIX[args.format])
    if args.format != "timm":
        return [outputs.check_output(out, "--out", f"{args.format} export", OWN[args.format],
                                     inputs=[model_info.path])]
    if out.suffix not in (".safetensors", ".pth"):
        raise UserError(f"--out {out}: a timm export is NAME.safetensors with NAME.pth beside it; "
                        f"name one of them, e.g. {out.with_suffix('.safetensors')}")
    files = [out.with_suffix(".safetensors"), out.with_suffix(".pth")]
    return [outputs.check_output(f, "--out", "timm export", own, inputs=[model_info.path])
            for f, own in zip(files, (outputs.safetensors_file, outputs.bare_state_dict))]


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint (best.pt, last.pt) or a run folder (its best.pt)")
    p.add_argument("--format", required=True, choices=sorted(SUFFIX))
    p.add_argument("--out", default=None, help="output file (default: beside the checkpoint, e.g. best.onnx)")
    p.add_argument("--ema", action="store_true", help="the moving average of the weights")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)

    def body():
        from bot.deploy import export

        model_info = trained.read(args.checkpoint)
        out = output_paths(args, model_info)[0]
        model = trained.build(model_info, ema=args.ema)
        if args.format == "timm" and export.slimmed(model, model_info.cfg, model_info.num_classes):
            raise UserError(f"{model_info.path} is slimmed (scripts/slim.py): its layers are narrower than any "
                            f"network timm builds; export it with --format onnx or --format torchscript")
        size, m = model_info.cfg.data.image_size, model_info.cfg.model
        classes = model_info.classes or [f"class_{k}" for k in range(model_info.num_classes)]
        try:
            if args.format == "onnx":
                diff = export.to_onnx(model, size, out)
            elif args.format == "torchscript":
                diff = export.to_torchscript(model, size, out)
            else:
                diff, call = export.to_timm(model, m.arch, m.variant, classes, size, out, m.width)
        except export.ExportMismatch as e:
            print(f"error: export check failed, nothing written: {e}", file=sys.stderr)
            return 1
        print(f"wrote {out} from {model_info.describe()}; max abs logit difference {diff:.2e} "
              f"on random {size}x{size} input")
        if args.format == "timm":
            print(f"also {out.with_suffix('.pth')}; in timm:\nimport timm\n{call}")
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
