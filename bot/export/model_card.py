"""The hub folder's model card (README.md) and its plot (curves.png), from the run folder.

What a reader of the hub page needs and the run folder holds: the network and its
classes, the dataset's size, the results (summary.json: top-1/top-5 at the last epoch, the
best top-1, the weight average's), the recipe (the command the run was started with, what
it changed from the paper's baseline) and the command that trains it again, the
preprocessing in words, and the curves of metrics.jsonl (val top-1 and loss per epoch).
A checkpoint without its run folder still gets a card, saying what is missing.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bot import config
from bot.export.hub import CARD, CURVES, signed
from bot.artifacts.outputs import write_bytes
from bot.artifacts.preprocessing import in_words

# keys that say where and how a run ran, not what it trained: left out of the recipe table
NOT_RECIPE = {"data.root", "data.workers", "data.prefetch", "data.hw_decoder_load", "run.out", "run.name",
              "run.group", "run.wandb", "run.log_every", "run.checkpoint_every", "run.resume"}
CITATION = """@inproceedings{he2019bag,
  title={Bag of Tricks for Image Classification with Convolutional Neural Networks},
  author={He, Tong and Zhang, Zhi and Zhang, Hang and Zhang, Zhongyue and Xie, Junyuan and Li, Mu},
  booktitle={CVPR},
  year={2019}
}"""


@dataclass
class RunRecord:
    """What the run folder beside a checkpoint says; empty where a file is missing."""
    folder: Path
    summary: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)


def read_run(checkpoint: Path) -> RunRecord:
    """summary.json, metrics.jsonl and config.yaml's provenance beside `checkpoint`; a file
    that is missing or unreadable (a line cut by a crash) is left out, never an error."""
    folder = checkpoint.parent
    run = RunRecord(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text())
        run.summary = summary if isinstance(summary, dict) else {}
    except (OSError, ValueError):
        pass
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    for text in lines:
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if isinstance(obj, dict) and "epoch" in obj:
            run.metrics.append(obj)
    try:
        run.provenance = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("provenance") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    return run


def per_epoch(metrics: list[dict]) -> dict[int, dict]:
    """{epoch (from 1): {top1, ema_top1, val_loss, loss}}: each epoch's evaluation line (the last,
    where a resumed run repeated one) and the mean of its logged training losses."""
    out: dict[int, dict] = {}
    losses: dict[int, list[float]] = {}
    for m in metrics:
        epoch = int(m["epoch"]) + 1  # the trainer counts epochs from 0
        if "top1" in m:
            out.setdefault(epoch, {}).update({k: m[k] for k in ("top1", "ema_top1", "val_loss") if k in m})
        elif "loss" in m:
            losses.setdefault(epoch, []).append(float(m["loss"]))
    for epoch, values in losses.items():
        out.setdefault(epoch, {})["loss"] = sum(values) / len(values)
    return dict(sorted(out.items()))


def plot_curves(metrics: list[dict], path: Path, title: str) -> bool:
    """Val top-1 (and the weight average's) and the loss per epoch, two panels, as a PNG at
    `path`; False (nothing written) when metrics.jsonl has no evaluation line."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = per_epoch(metrics)
    if not any("top1" in e for e in epochs.values()):
        return False
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    top1, loss = fig.subplots(1, 2)
    series = [(top1, "top1", "val top-1"), (top1, "ema_top1", "val top-1, weight average"),
              (loss, "loss", "training loss (mean of logged steps)"), (loss, "val_loss", "val loss")]
    for ax, key, label in series:
        points = [(e, v[key]) for e, v in epochs.items() if key in v]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=label)
    loss.set_yscale("log")  # the first epochs' losses would flatten the rest
    for ax, ylabel in ((top1, "top-1 (%)"), (loss, "loss (log scale)")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    png = io.BytesIO()  # written by bot/artifacts/outputs.py, as every file of the folder
    fig.savefig(png, format="png", dpi=100)
    write_bytes(path, png.getvalue())
    return True


def network(cfg) -> str:
    """The network in the paper's words: ResNet-50-D, ResNet-18-D at width 0.25, Inception-V3."""
    m = cfg.model
    names = {"inception_v3": "Inception-V3", "mobilenet_v1": "MobileNet v1"}
    if m.arch in names:
        return names[m.arch]
    width = f" at width {m.width:g}" if m.width != 1 else ""
    return f"ResNet-{m.arch.removeprefix('resnet')}-{m.variant}{width}"


def _eval_line(run: RunRecord, step) -> dict:
    lines = [m for m in run.metrics if "top1" in m and m.get("step") == step]
    return lines[-1] if lines else {}


def _pct(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def results(run: RunRecord, info: dict, ema: bool) -> str:
    """The results table: summary.json's figures and those of the exported weights."""
    s = run.summary
    if not s:
        return f"No summary.json in {run.folder}: the run's results are not known here."
    rows = [("last epoch", s.get("top1"), s.get("top5")), ("best epoch", s.get("best_top1"), None)]
    if "ema_top1" in s:
        rows.append(("weight average (EMA), last epoch", s.get("ema_top1"), s.get("ema_top5")))
    line, prefix = _eval_line(run, info.get("step")), "ema_" if ema else ""
    if line:
        rows.append((f"**these weights** (step {info['step']})", line.get(prefix + "top1"), line.get(prefix + "top5")))
    table = ["| validation | top-1 (%) | top-5 (%) |", "|---|---|---|"]
    table += [f"| {name} | {_pct(top1)} | {_pct(top5)} |" for name, top1, top5 in rows]
    epochs = f"{s['epochs']:g}" if isinstance(s.get("epochs"), (int, float)) else "?"
    return "\n".join(table) + f"\n\nFrom the run's summary.json and metrics.jsonl ({epochs} epochs, " \
                              f"{s.get('steps', '?')} steps)."


def recipe_changes(cfg) -> list[tuple[str, object, object]]:
    """(key, this run's value, the paper's baseline value) of every recipe key the run changed
    (bot's defaults are the baseline of section 2)."""
    ours, baseline = config.flat(cfg.to_dict()), config.flat(config.load(None, []).to_dict())
    return [(k, v, baseline.get(k)) for k, v in ours.items() if k not in NOT_RECIPE and v != baseline.get(k)]


def recipe(cfg, run: RunRecord) -> str:
    prov = run.provenance
    lines = []
    if prov.get("command"):
        lines += ["The run was started with", "", "```bash", f"python {prov['command']}", "```", ""]
    packages = ", ".join(f"{k} {v}" for k, v in (prov.get("packages") or {}).items() if k in ("torch", "timm"))
    if prov.get("git_commit"):
        lines += [f"at git commit `{prov['git_commit']}`{f' ({packages})' if packages else ''}.", ""]
    lines += [("What it changed from the paper's baseline (section 2; each key's comment in bot's "
               "`bot/config.py` names its trick and section):"), "", "| key | this run | baseline |", "|---|---|---|"]
    lines += [f"| `{k}` | `{json.dumps(v)}` | `{json.dumps(b)}` |" for k, v, b in recipe_changes(cfg)]
    if not (run.folder / "config.yaml").is_file():
        return "\n".join(lines + ["", f"No config.yaml beside the checkpoint in {run.folder}: the table above is "
                                       f"the checkpoint's own config against bot's defaults."])
    lines += ["", ("Train it again with bot (the run folder's config.yaml is the fully resolved recipe; "
                   "add `data.root=...` where the data lives elsewhere):"), "", "```bash",
              f"python train.py {run.folder}/config.yaml run.out={run.folder}-again", "```"]
    return "\n".join(lines)


def preprocessing(cfg) -> str:
    d = cfg.data
    filtered = ("both antialiased" if d.antialias else
                "timm's always antialiased, the run's not (data.antialias=false, as the authors' code)")
    return (f"{in_words(d)}.\n\nconfig.json's `pretrained_cfg` carries it (input_size, crop_pct, interpolation, "
            f"mean, std): `timm.data.resolve_data_config(model=model)` reads it and "
            f"`timm.data.create_transform(**data_config)` builds it. timm resizes PIL images, the run resized "
            f"tensors with torchvision ({filtered}), so a pixel can differ by a grey level and an image whose "
            f"two best classes nearly tie can change its prediction: top-1 through timm may differ from the "
            f"table by such images.")


def usage(name: str) -> str:
    return f"""```python
import timm
import torch
from PIL import Image

model = timm.create_model("hf-hub:USER/{name}", pretrained=True).eval()  # or "local-dir:PATH"
data_config = timm.data.resolve_data_config(model=model)  # the run's own eval preprocessing
transform = timm.data.create_transform(**data_config)
with torch.no_grad():
    probs = model(transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)).softmax(-1)[0]
names = model.pretrained_cfg["label_names"]
print([(names[i], round(p.item(), 3)) for p, i in zip(*probs.topk(min(5, len(names))))])
```"""


def dataset(cfg, classes: list[str], run: RunRecord, counts: tuple[int, int] | None) -> str:
    """The dataset's size in words: its classes and images (as the run recorded them)."""
    if counts:
        return f"{len(classes)} classes, {counts[0]} training and {counts[1]} validation images (`{cfg.data.root}`)"
    val = next((m["val_images"] for m in reversed(run.metrics) if "val_images" in m), None)
    seen = f", {val} validation images (metrics.jsonl)" if val else ""
    return (f"{len(classes)} classes{seen}; the image counts of `{cfg.data.root}` are not recorded (the checkpoint "
            f"is older than that record)")


def card(model_info, run: RunRecord, ema: bool, architecture: str, counts, curves: bool) -> str:
    """README.md of the hub folder (front matter for the hub, then the card)."""
    cfg, info = model_info.cfg, model_info.info
    classes = model_info.classes or [f"class_{k}" for k in range(model_info.num_classes)]
    weights = f"`{model_info.path.name}`" + (", step " + str(info["step"]) if "step" in info else "")
    if ema:
        weights = f"the moving average (model.ema_decay={cfg.model.ema_decay:g}) of the weights of {weights}"
    shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
    parts = [  # the Hub's front matter: fixed keys, so plain text (docs/libraries.md)
        "---\ntags:\n- image-classification\n- timm\nlibrary_name: timm\npipeline_tag: image-classification\n---",
        f"# {cfg.run.name}: {network(cfg)}",
        (f"{network(cfg)} (timm's `{architecture}`) trained with bot, the reference implementation of *Bag of "
         f"Tricks for Image Classification with Convolutional Neural Networks* (He et al., CVPR 2019, "
         f"arXiv:1812.01187). Weights: {weights} of the run `{run.folder}`."),
        f"Data: {dataset(cfg, classes, run, counts)}. Classes (label order): {shown}.",
        "## Results", results(run, info, ema),
    ]
    if curves:
        parts.append(f"![Val top-1 and loss per epoch (metrics.jsonl)]({CURVES})")
    parts += ["## Preprocessing", preprocessing(cfg), "## Recipe", recipe(cfg, run),
              "## Use", usage(cfg.run.name), "## Citation", f"```bibtex\n{CITATION}\n```"]
    return "\n\n".join(parts) + "\n"


def write_card(folder: Path, model_info, run: RunRecord, ema: bool, architecture: str, counts) -> None:
    """README.md (signed: bot/export/hub.py) and, where metrics.jsonl has evaluation lines,
    curves.png into `folder`."""
    curves = plot_curves(run.metrics, folder / CURVES, f"{model_info.cfg.run.name}: {network(model_info.cfg)}")
    write_bytes(folder / CARD, signed(card(model_info, run, ema, architecture, counts, curves)).encode())
