"""The hub folder: what `timm.create_model("local-dir:DIR", pretrained=True)` and
`huggingface_hub.upload_folder` take as they are (docs/hub.md).

  model.safetensors  the weights, timm's state_dict keys (bot builds timm's networks)
  config.json        timm's layout: `architecture` (a registered timm name), `num_classes`,
                     `label_names`, `model_args` (the constructor kwargs the name does not
                     imply: widths, deep stem, activation) and `pretrained_cfg`, which holds
                     the run's own evaluation preprocessing (bot/artifacts/preprocessing.py) and
                     nothing of timm's pretrained weights (no tag, hub id or origin URL)
  README.md          the model card, curves.png its plot (bot/export/model_card.py)

The folder is written aside and checked before it replaces anything: timm loads it through
`local-dir:` and must compute our logits on random input and resolve our preprocessing.

docs/hub.md invites users to edit the card before uploading, so a later export keeps an
edited card as README.md and writes its own beside it as README.new.md. The card's last line
is a hidden comment holding the hash of the text above it: a card whose hash still matches is
one an export wrote, and is replaced; any other (edited, or without the line) is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from bot.export.export import ExportMismatch, check, timm_recipe
from bot.artifacts.output_folder import folder_written_aside
from bot.artifacts.outputs import write_bytes
from bot.artifacts.preprocessing import timm_data_config

WEIGHTS, CONFIG, CARD, CURVES = "model.safetensors", "config.json", "README.md", "curves.png"
NEW_CARD = "README.new.md"  # this export's card, where the folder's README.md is one the user edited
FILES = (WEIGHTS, CONFIG, CARD, CURVES, NEW_CARD)
SIGNATURE = "<!-- written by bot's export; sha256 of the card above: {} -->\n"  # hidden on the hub
PAPER = {"paper_ids": "arXiv:1812.01187",
         "paper_name": "Bag of Tricks for Image Classification with Convolutional Neural Networks"}
OWN_KEY = "bot"  # config.json's block that says which run and weights the folder holds


def is_hub_folder(path: Path) -> bool:
    """An earlier export of this kind: only the files above, and a config.json with bot's block."""
    try:
        names = {p.name for p in path.iterdir()}
        return names <= set(FILES) and OWN_KEY in json.loads((path / CONFIG).read_text())
    except (OSError, ValueError, TypeError):
        return False


def signed(card: str) -> str:
    """The card's text with its last line: the hash that tells it unedited (`edited`)."""
    return card + SIGNATURE.format(hashlib.sha256(card.encode()).hexdigest())


def edited(path: Path) -> bool:
    """Whether the card at `path` is not, byte for byte, one an export signed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return True
    last = text.rfind("\n<!-- ")
    return last < 0 or text != signed(text[:last + 1])


def _first(model: torch.nn.Module, kind: type, last: bool = False) -> str:
    names = [name for name, m in model.named_modules() if isinstance(m, kind)]
    return names[-1] if last else names[0]


def hub_config(model: torch.nn.Module, cfg, classes: list[str], about: dict) -> dict:
    """config.json: timm's name and kwargs for `cfg.model`, and the val transform of `cfg.data`.
    `about`: what the card's reader should find in the file too (checkpoint, step, EMA)."""
    m = cfg.model
    name, kwargs, _ = timm_recipe(m.arch, m.variant, len(classes), m.width, m.act)
    model_args = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items() if k != "num_classes"}
    pretrained_cfg = {
        **timm_data_config(cfg.data),
        "fixed_input_size": False,
        "num_classes": len(classes),
        # what timm adapts when asked for other input channels or classes
        "first_conv": _first(model, torch.nn.Conv2d),
        "classifier": _first(model, torch.nn.Linear, last=True),
        **PAPER,
    }
    return {"architecture": name, "num_classes": len(classes), "num_features": model.num_features,
            "label_names": list(classes), "model_args": model_args, "pretrained_cfg": pretrained_cfg,
            OWN_KEY: {"arch": m.arch, "variant": m.variant, "width": m.width, "act": m.act, **about}}


def _timm_check(model: torch.nn.Module, folder: Path, cfg) -> float:
    """Load `folder` as a timm user does; our logits and our val transform must come back."""
    import timm

    try:
        theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    except Exception as e:  # a wrong name, kwarg or weight shape in what was just written
        first = (str(e).strip().splitlines() or [""])[0]
        raise ExportMismatch(f"timm cannot load the folder: {type(e).__name__}: {first}") from None
    want = timm_data_config(cfg.data)
    got = timm.data.resolve_data_config(model=theirs)
    for key, value in want.items():
        if json.loads(json.dumps(got.get(key))) != value:  # timm gives tuples where JSON has lists
            raise ExportMismatch(f"timm resolves {key}={got[key]!r} from the folder, not the run's {value!r}")
    x = torch.randn(3, 3, cfg.data.image_size, cfg.data.image_size)
    with torch.no_grad():
        return check(model(x), theirs(x), "timm from local-dir")


def write_hub(model: torch.nn.Module, cfg, classes: list[str], out: Path, about: dict,
              card: Callable[[Path], None]) -> tuple[float, bool]:
    """The hub folder of `model` (trained with `cfg` on `classes`) at `out`, replacing an earlier
    one only once checked; `card(folder)` writes the model card and its plot into it.
    Returns the largest logit difference between timm's model and ours, and whether the earlier
    folder's README.md was kept (edited by the user: the new card is then NEW_CARD)."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    config = json.dumps(hub_config(model, cfg, classes, about), indent=2) + "\n"
    with folder_written_aside(out) as tmp:
        write_bytes(tmp / WEIGHTS, save(state, metadata={"format": "pt"}))
        write_bytes(tmp / CONFIG, config.encode())
        card(tmp)
        kept = (out / CARD).is_file() and edited(out / CARD)
        if kept:
            os.replace(tmp / CARD, tmp / NEW_CARD)
            shutil.copy2(out / CARD, tmp / CARD)
        return _timm_check(model, tmp, cfg), kept
