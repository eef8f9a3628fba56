"""Export a trained model for deployment  (installed as `bot-export`)

    python scripts/export.py CHECKPOINT_OR_RUN --format onnx|torchscript|timm|hub [--out PATH] [--ema]

    python scripts/export.py runs/demo --format hub              # runs/demo/best-hub/
    python scripts/export.py runs/demo --format onnx --out demo.onnx

The output (default: beside the checkpoint) may be new or this command's own earlier
export of the same format; it never replaces a checkpoint or a file of a run folder.
onnx: a dynamic batch axis, input `images` (N, 3, S, S) normalized as in training,
output `logits`; checked with onnxruntime. Its metadata carries the run's config and class
names (scripts/evaluate.py and scripts/predict.py read the file alone) and plain keys for
any runtime: class_names, input_size, resize_size, interpolation, mean, std, preprocessing.
torchscript: torch.jit.script, loaded back and checked. timm: the weights as
NAME.safetensors (class names in its metadata) and NAME.pth (--out names either), checked
by `timm.create_model(..., checkpoint_path=...)`, whose exact call is printed.
hub: a folder (default NAME-hub beside the checkpoint) that
`timm.create_model("local-dir:DIR", pretrained=True)` and the Hugging Face Hub take as it
is: model.safetensors, config.json (timm's name and kwargs, the class names, the run's
eval preprocessing), README.md (the model card) and curves.png; upload it with
`hf upload USER/NAME DIR .` (docs/hub.md). It replaces only an earlier hub folder; a
README.md edited since is kept, and the new card written beside it as README.new.md.
Each check runs random input through both models and prints the largest absolute
difference of the logits; a difference above the tolerance exits 1 and writes nothing.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bot.cli import command_parser, run
from bot.errors import UserError
from bot.artifacts import outputs, trained
from bot.artifacts.output_folder import check_output_folder

SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "timm": ".timm.safetensors", "hub": "-hub"}
# an earlier export of each format, which a new one may replace
OWN = {"onnx": outputs.onnx_file, "torchscript": outputs.torchscript_file, "timm": outputs.safetensors_file}


def default_out(model_info: trained.Trained, fmt: str) -> Path:
    path = model_info.path
    return path.with_name(path.stem + SUFFIX[fmt]) if fmt == "hub" else path.with_suffix(SUFFIX[fmt])


def output_paths(args, model_info: trained.Trained) -> list[Path]:
    """The files (or the hub folder) this export writes, checked before any work
    (bot/artifacts/outputs.py's rule)."""
    out = Path(args.out) if args.out else default_out(model_info, args.format)
    if args.format == "hub":
        from bot.export.hub import is_hub_folder

        return [check_output_folder(out, "--out", "hub export", is_hub_folder, inputs=[model_info.path])]
    if args.format != "timm":
        return [outputs.check_output(out, "--out", f"{args.format} export", OWN[args.format],
                                     inputs=[model_info.path])]
    if out.suffix not in (".safetensors", ".pth"):
        raise UserError(f"--out {out}: a timm export is NAME.safetensors with NAME.pth beside it; "
                        f"name one of them, e.g. {out.with_suffix('.safetensors')}")
    files = [out.with_suffix(".safetensors"), out.with_suffix(".pth")]
    return [outputs.check_output(f, "--out", "timm export", own, inputs=[model_info.path])
            for f, own in zip(files, (outputs.safetensors_file, outputs.bare_state_dict))]


def check_timm_can_build(model_info: trained.Trained, fmt: str, model=None) -> None:
    """UserError, naming the formats that work, for a network timm has no name or kwargs for:
    from the config alone (QAT, ResNet-A), and with `model` built, a slimmed one."""
    from bot.export import export

    m, works = model_info.cfg.model, "--format onnx or --format torchscript"
    if fmt not in ("timm", "hub"):
        return
    if m.qat:
        why = "was trained with model.qat: its fake-quant modules are in no timm network"
    elif m.arch.startswith("cifar_"):
        why = f"is gluon-cv's {m.arch}, which timm has no network for"
    elif fmt == "hub" and export.timm_recipe(m.arch, m.variant, model_info.num_classes)[2]:
        why = (f"is {m.arch}-A, which timm has no name or kwargs for (timm puts the stride on the 3x3 conv), "
               f"so `local-dir:` cannot rebuild it")
        works += ", or --format timm (its printed call moves the stride by hand)"
    elif model is not None and export.slimmed(model, model_info.cfg, model_info.num_classes):
        why = "is slimmed (scripts/slim.py): its layers are narrower than any network timm builds"
    else:
        return
    raise UserError(f"{model_info.path} {why}; export it with {works}")


def parse(argv) -> argparse.Namespace:
    p = command_parser(__doc__)
    p.add_argument("checkpoint", help="a checkpoint (best.pt, last.pt) or a run folder (its best.pt)")
    p.add_argument("--format", required=True, choices=sorted(SUFFIX))
    p.add_argument("--out", default=None, help="output file, or folder for hub (default: beside the checkpoint, "
                                               "e.g. best.onnx, best-hub/)")
    p.add_argument("--ema", action="store_true", help="the moving average of the weights")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)

    def body():
        from bot.export import export

        model_info = trained.read(args.checkpoint)
        out = output_paths(args, model_info)[0]
        check_timm_can_build(model_info, args.format)
        model = trained.build(model_info, ema=args.ema)
        check_timm_can_build(model_info, args.format, model)
        size, m = model_info.cfg.data.image_size, model_info.cfg.model
        classes = model_info.classes or [f"class_{k}" for k in range(model_info.num_classes)]
        try:
            if args.format == "onnx":
                diff = export.to_onnx(model, size, out, onnx_metadata(model_info, classes))
            elif args.format == "torchscript":
                diff = export.to_torchscript(model, size, out)
            elif args.format == "timm":
                diff, call = export.to_timm(model, m.arch, m.variant, classes, size, out, m.width, m.act)
            else:
                diff, kept = write_hub(model, model_info, classes, out, args.ema)
        except export.ExportMismatch as e:
            print(f"error: export check failed, nothing written: {e}", file=sys.stderr)
            return 1
        print(f"wrote {out} from {model_info.describe()}; max abs logit difference {diff:.2e} "
              f"on random {size}x{size} input")
        if args.format == "timm":
            print(f"also {out.with_suffix('.pth')}; in timm:\nimport timm\n{call}")
        if args.format == "hub":
            print(hub_summary(out, model_info.cfg, kept))
        return 0

    return run(body)


def onnx_metadata(model_info: trained.Trained, classes: list[str]) -> dict[str, str]:
    from bot.artifacts import onnx_model

    precision = "int8" if model_info.cfg.model.qat else "fp32"  # a QAT model exports its int8 (QDQ) graph
    return onnx_model.metadata(model_info.cfg, classes, str(model_info.path), precision)


def write_hub(model, model_info: trained.Trained, classes: list[str], out: Path, ema: bool) -> tuple[float, bool]:
    from bot.export import hub, model_card
    from bot.export.export import timm_recipe

    m = model_info.cfg.model
    record = model_card.read_run(model_info.path)
    counts = dataset_counts(model_info, record)
    architecture = timm_recipe(m.arch, m.variant, len(classes), m.width, m.act)[0]
    about = {"weights": model_info.path.name + (" (moving average)" if ema else ""),
             **{k: model_info.info[k] for k in ("step",) if k in model_info.info}}
    return hub.write_hub(model, model_info.cfg, classes, out, about,
                         lambda folder: model_card.write_card(folder, model_info, record, ema, architecture, counts))


def dataset_counts(model_info: trained.Trained, run) -> tuple[int, int] | None:
    """(training, validation) samples, as the run recorded them in its checkpoint or config.yaml
    (bot/data/fingerprint.py); for a checkpoint from before that record, from a local shard
    folder's _info.json. Never by listing an image folder: ImageNet's holds 1.28 M files."""
    from bot.data import is_url
    from bot.data.shards import is_shard_folder, open_shards

    record = model_info.info.get("data") or run.provenance.get("data") or {}
    try:
        return int(record["train"]["samples"]), int(record["val"]["samples"])
    except (KeyError, TypeError, ValueError):
        pass
    data = model_info.cfg.data
    if not data.root or is_url(data.root) or not is_shard_folder(Path(data.root).expanduser()):
        return None
    try:
        train, val = open_shards(Path(data.root).expanduser(), data.val_split)
    except UserError:
        return None
    return len(train), len(val)


def hub_summary(out: Path, cfg, kept_card: bool) -> str:
    """What the folder holds, how timm reads it, and the upload command, every path shell-quoted."""
    from bot.export.hub import CARD, FILES, NEW_CARD

    files = ", ".join(name for name in FILES if (out / name).exists())
    lines = [f"{out}: {files}; timm.create_model({f'local-dir:{out}'!r}, pretrained=True) resolves "
             f"{cfg.data.val_resize} px bilinear resize, {cfg.data.image_size} px centre crop"]
    upload = f"hf upload {shlex.quote(f'USER/{cfg.run.name}')} {shlex.quote(str(out))} ."
    if kept_card:
        lines.append(f"kept {out / CARD}, edited since the last export; this export's card is {out / NEW_CARD} "
                     f"(merge what you want of it into {CARD}; the upload below leaves it out)")
        upload += f" --exclude {NEW_CARD}"
    return "\n".join(lines + [f"upload: {upload} (docs/hub.md)"])


if __name__ == "__main__":
    sys.exit(main())
