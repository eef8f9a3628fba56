"""int8 post-training quantization of a trained model for CPU inference  (installed as `bot-quantize`)

    python scripts/quantize.py runs/demo data.root=data/toy                 # runs/demo/best.int8.onnx
    python scripts/quantize.py runs/demo data.root=data/toy --calib 256 --out demo.int8.onnx
    python scripts/quantize.py runs/demo data.root=data/toy --bits 4       # post-training 4-bit weights
    python scripts/quantize.py runs/demo data.root=data/toy --reduce-range # 7-bit weights (x86 without VNNI)
    python scripts/evaluate.py runs/demo/best.int8.onnx                    # then read like a checkpoint

The checkpoint is exported to ONNX, its BatchNorms folded into the convs, and quantized
statically by onnxruntime: int8 weights per channel, uint8 activations whose ranges are
calibrated on `--calib` training images (spread over all classes) through the val
transform. The int8 model (default: beside the checkpoint, best.int8.onnx) carries the
checkpoint's config and class names, so scripts/evaluate.py and scripts/predict.py read
it like a checkpoint. `--reduce-range` stores 7-bit weights, onnxruntime's remedy for its int8
kernel's saturation on x86 CPUs without VNNI. A run trained with model.qat (quantization-aware)
is written with the ranges and weights it learned instead (no calibration); `--bits N` below 8
quantizes a plain run's weights to N bits after training, with QAT's modules and range tracking,
as the baseline QAT at model.qat_bits=N is compared with. Then fp32 and int8 are measured side
by side, in this run, with the same threads: top-1/top-5 on the val folder, file size, and CPU milliseconds per image at
batch 1 and 32 (median of --repeats), and the table is also written beside the model as
NAME.md and NAME.json. Overrides are evaluate's (data.root, data.workers ...). These three
files may replace this command's own earlier ones, never a checkpoint or a run's files.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch

from bot.cli import command_parser, run
from bot.errors import UserError
from bot.artifacts import outputs, trained

TABLE_HEAD = "| model | top-1 |"  # the first line of NAME.md


def parse(argv) -> argparse.Namespace:
    p = command_parser(__doc__)
    p.add_argument("checkpoint", help="a checkpoint (best.pt, last.pt) or a run folder (its best.pt)")
    p.add_argument("overrides", nargs="*", help="e.g. data.root=/data/imagenet")
    p.add_argument("--calib", type=int, default=512, help="training images to calibrate on (default 512)")
    p.add_argument("--out", default=None, help="the int8 model (default: beside the checkpoint, NAME.int8.onnx); "
                                                "its table goes beside it as NAME.int8.md and NAME.int8.json")
    p.add_argument("--bits", type=int, default=8, help="weight bits (default 8; 2-7: post-training, "
                   "calibrated as QAT tracks ranges, to compare with model.qat_bits)")
    p.add_argument("--reduce-range", action="store_true", help="7-bit weights (onnxruntime's reduce_range): its "
                   "int8 kernel saturates on x86 CPUs without VNNI, which costs accuracy there")
    p.add_argument("--repeats", type=int, default=20, help="timed passes per latency (their median is shown)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every model (default: torch's)")
    args = p.parse_intermixed_args(argv)
    if args.calib < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        p.error("--calib, --repeats and --threads must be at least 1")
    if not 2 <= args.bits <= 8:
        p.error("--bits must be in [2, 8]")
    if args.reduce_range and args.bits < 8:
        p.error("--reduce-range narrows onnxruntime's 8-bit weights; --bits below 8 never saturate: leave one out")
    return args


def measure(name: str, model: torch.nn.Module, file: Path, cfg, threads: int, repeats: int) -> dict:
    """One row of the table: top-1/top-5 on the val folder, file size, ms per image."""
    from bot.data import build_val_loader
    from bot.export.quantize import latency_ms
    from bot.train.engine import evaluate, make_accelerator

    torch.set_num_threads(threads)
    accelerator = make_accelerator()
    loader = build_val_loader(cfg, 0, 1, torch.device("cpu"))
    metrics = evaluate(model, loader, accelerator, nullcontext, False)
    size = cfg.data.image_size
    return {"model": name, "top1": metrics["top1"], "top5": metrics["top5"], "val_images": metrics["val_images"],
            "mb": file.stat().st_size / 2 ** 20, "ms_b1": latency_ms(model, size, 1, repeats),
            "ms_b32": latency_ms(model, size, 32, repeats)}


def print_table(rows: list[dict], threads: int, size: int) -> str:
    lines = ["| model | top-1 | top-5 | file MB | ms/img batch 1 | ms/img batch 32 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['top1']:.2f} | {r['top5']:.2f} | {r['mb']:.2f} | {r['ms_b1']:.2f} "
              f"| {r['ms_b32']:.2f} |" for r in rows]
    lines.append(f"\n{rows[0]['val_images']} val images at {size} px; onnxruntime, {threads} CPU thread(s); "
                 "ms: median per image")
    text = "\n".join(lines)
    print(text)
    return text


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)

    def body():
        from bot.cli.evaluate import eval_config
        from bot.export import export, quantize
        from bot.artifacts import onnx_model

        source = trained.read(args.checkpoint)
        cfg = eval_config(source, args.overrides, None)
        trained.check_classes(source, _val_classes(cfg), "checkpoint", f"{cfg.data.root}/{cfg.data.val_split}")
        out = Path(args.out) if args.out else source.path.with_suffix(".int8.onnx")
        if out.suffix != ".onnx":
            raise UserError(f"--out {out}: the int8 model is an ONNX file, name it *.onnx")
        own = {out: outputs.onnx_file, out.with_suffix(".md"): outputs.text_starting(TABLE_HEAD),
               out.with_suffix(".json"): outputs.json_of(lambda rows: isinstance(rows, list)
                                                         and all("ms_b1" in r for r in rows))}
        for path, is_own in own.items():  # before the work: refused or unwritable costs nothing
            outputs.check_output(path, "--out" if path == out else f"--out {out}: its table", "int8 model or its table",
                                 is_own, inputs=[source.path])
        threads = args.threads or torch.get_num_threads()
        model = trained.build(source)
        meta = onnx_model.metadata(source.cfg, source.classes or [f"class_{k}" for k in range(source.num_classes)],
                                   str(source.path))
        qat = source.cfg.model.qat
        if qat and (args.bits != 8 or args.reduce_range):
            raise UserError(f"{source.path} was trained with model.qat_bits={source.cfg.model.qat_bits}: "
                            f"leave out --bits and --reduce-range")
        batches = [] if qat else quantize.calibration_images(cfg, args.calib)
        with tempfile.TemporaryDirectory() as tmp:
            rows = []
            if not qat:
                fp32 = Path(tmp) / "fp32.onnx"
                export.to_onnx(model, cfg.data.image_size, fp32)
                rows.append(measure("fp32 (onnxruntime)", onnx_model.OnnxModule(fp32, threads), fp32, cfg, threads,
                                    args.repeats))
            if qat or args.bits < 8:
                _simulated(model, source, batches, args.bits, cfg, out, meta)
            else:
                with outputs.written_aside(out) as (tmp_out,):
                    quantize.quantize_onnx(fp32, tmp_out, batches, meta, args.reduce_range)
                n = sum(len(b) for b in batches)
                print(f"wrote {out}: int8 of {source.describe()}, calibrated on {n} training images")
            bits = source.cfg.model.qat_bits if qat else args.bits
            bits = 7 if args.reduce_range else bits
            name = ("QAT " if qat else "") + f"int8 (onnxruntime){'' if bits == 8 else f', {bits}-bit weights'}"
            rows.append(measure(name, onnx_model.OnnxModule(out, threads), out, cfg, threads, args.repeats))
        text = print_table(rows, threads, cfg.data.image_size)
        outputs.write_text(out.with_suffix(".md"), text + "\n")
        outputs.write_text(out.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
        return 0

    return run(body)


def _simulated(model, source, batches, bits: int, cfg, out: Path, meta: dict) -> None:
    """The int8 ONNX of bot's QAT modules (bot/models/qat.py): a QAT run's learned ranges, or
    a plain run's weights at `bits` with ranges calibrated on `batches` (post-training)."""
    from bot.export import quantize
    from bot.models.qat import calibrate, prepare_qat

    if batches:
        calibrate(prepare_qat(model, bits), batches)
    diff = quantize.qat_onnx(model, cfg.data.image_size, out, meta)
    how = ("with the ranges QAT learned" if not batches
           else f"{bits}-bit weights, ranges calibrated on {sum(len(b) for b in batches)} training images")
    print(f"wrote {out}: int8 of {source.describe()}, {how} (onnxruntime vs fake-quant logits: {diff:.3g})")


def _val_classes(cfg) -> list[str]:
    """The classes of the held-out split the calibration and the table read (a folder's or shards')."""
    from bot.data import open_val_shards
    from bot.data.folder import dataset_root, scan_val
    from bot.data.shards import is_shard_folder

    root = dataset_root(cfg.data.root)
    if is_shard_folder(root):
        return open_val_shards(root, cfg.data.val_split).classes
    return scan_val(root, cfg.data.val_split).classes


if __name__ == "__main__":
    sys.exit(main())
