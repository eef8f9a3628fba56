"""Compare compressed models side by side: top-1, params, MACs, file size, CPU ms per image  (installed as `bot-compress-report`)

    python scripts/compress_report.py data.root=data/toy NAME=MODEL [NAME=MODEL ...] [--out table.md]
    python scripts/compress_report.py data.root=data/toy --out runs/compress-demo/table.md \
        fp32=runs/compress-demo int8=runs/compress-demo/best.int8.onnx slim-30%=runs/compress-demo-slim/best.pt

MODEL is a checkpoint or run folder (measured as its fp32 ONNX export) or an int8 model of
scripts/quantize.py (.onnx). Every model runs in onnxruntime with the same threads, in this
one process, one after the other: top-1 on the val folder through the checkpoint's val
transform, the ONNX file's size, and the median milliseconds per image at batch 1 and 32.
Params and MACs are the torch network's (an int8 model's are its source checkpoint's).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from bot.cli import command_parser, run
from bot.artifacts import outputs, trained


def parse(argv) -> argparse.Namespace:
    p = command_parser(__doc__)
    p.add_argument("items", nargs="+", help="data.root=... then NAME=MODEL pairs")
    p.add_argument("--out", default=None, help="also write the table (markdown) here")
    p.add_argument("--repeats", type=int, default=20, help="timed passes per latency (median shown)")
    args = p.parse_intermixed_args(argv)
    args.overrides = [i for i in args.items if i.split("=", 1)[0].startswith("data.")]
    args.models = [i.split("=", 1) for i in args.items if i not in args.overrides]
    if not args.models or any(len(m) != 2 for m in args.models):
        p.error("give NAME=MODEL pairs, e.g. fp32=runs/compress-demo int8=runs/compress-demo/best.int8.onnx")
    return args


def row(name: str, spec: str, overrides: list[str], tmp: Path, repeats: int) -> dict:
    from bot.cli.evaluate import eval_config
    from bot.data import build_val_loader
    from bot.export import export
    from bot.export.quantize import latency_ms
    from bot.artifacts.onnx_model import OnnxModule
    from bot.models import count_params_macs
    from bot.train.engine import evaluate, make_accelerator

    info = trained.read(spec, name, onnx=True)
    cfg = eval_config(info, overrides, None)
    size = cfg.data.image_size
    if info.onnx:
        file = info.path
        source = trained.read(info.info["from"], f"{name}'s source checkpoint")
        params, macs = count_params_macs(trained.build(source), size)
    else:
        model = trained.build(info)
        params, macs = count_params_macs(model, size)
        file = tmp / f"{name}.onnx"
        export.to_onnx(model, size, file)
    net = OnnxModule(file, torch.get_num_threads())
    loader = build_val_loader(cfg, 0, 1, torch.device("cpu"))
    trained.check_classes(info, loader.classes, name, f"{cfg.data.root}/val")
    metrics = evaluate(net, loader, make_accelerator(), nullcontext, False)
    return {"model": name, "top1": metrics["top1"], "params": params, "macs": macs,
            "mb": file.stat().st_size / 2 ** 20, "ms_b1": latency_ms(net, size, 1, repeats),
            "ms_b32": latency_ms(net, size, 32, repeats), "val_images": metrics["val_images"], "size": size}


def table(rows: list[dict]) -> str:
    sizes = sorted({r["size"] for r in rows})
    px = len(sizes) > 1  # models at different sizes: a column says each one's

    def cells(*first):
        return "| " + " | ".join(first[:1] + (first[1:2] if px else ()) + first[2:]) + " |"

    lines = [cells("model", "px", "top-1", "params", "MACs", "ONNX file", "ms/img batch 1", "ms/img batch 32"),
             cells(*["---"] * 8).replace(" ", "")]
    lines += [cells(r["model"], str(r["size"]), f"{r['top1']:.2f}", f"{r['params'] / 1e6:.2f} M",
                    f"{r['macs'] / 1e6:.1f} M", f"{r['mb']:.1f} MB", f"{r['ms_b1']:.2f}", f"{r['ms_b32']:.2f}")
              for r in rows]
    lines.append(f"\n{rows[0]['val_images']} val images at {' or '.join(map(str, sizes))} px; onnxruntime on "
                 f"{torch.get_num_threads()} CPU thread(s); ms: median per image, measured in this run")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)

    def body():
        if args.out:  # before the work: refused or unwritable costs nothing (bot/artifacts/outputs.py)
            outputs.check_output(args.out, "--out", "comparison table", outputs.text_starting("| model | top-1 |"),
                                 inputs=[trained.checkpoint_path(spec, name) for name, spec in args.models])
        with tempfile.TemporaryDirectory() as tmp:
            rows = [row(name, spec, args.overrides, Path(tmp), args.repeats)
                    for name, spec in tqdm(args.models, desc="models", disable=None, leave=False)]
        text = table(rows)
        print(text)
        if args.out:
            outputs.write_text(Path(args.out), text + "\n")
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
