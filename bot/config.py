"""One typed, strict config: every trick of the paper is one field here.

Defaults are the paper's baseline (section 2, PAPER.md section 1); a recipe is a small
YAML overlay that lists only what it turns on, and may inherit with `base: other.yaml`
(relative to the recipe's folder). `load(path, overrides)` merges base, recipe and
`dotted.key=value` overrides (values parse as YAML), then checks every key, type and
value: an unknown key, a wrong type or an impossible value raises UserError naming it.

A recipe path that exists is read as it is; otherwise a name such as `demo` or
`recipes/demo.yaml` is one of the recipes shipped inside the package (`recipe_path`), so an
installed bot trains them from any folder. A run's config.yaml is a recipe too: its
`provenance` section (what the trainer records about where the run came from) changes nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from bot.config_checks import validate
from bot.errors import UserError


@dataclass
class DataConfig:
    root: Optional[str] = None  # folder holding train/<class>/*.jpg and val/<class>/*.jpg
    backend: Literal["dali", "torch"] = "torch"  # dali: the fast path; torch: the reference
    image_size: int = 224  # training crop and val crop side (section 2)
    val_resize: Optional[int] = None  # val shorter side; null keeps 224/256: 256 at 224
    batch_size: int = 256  # global batch: all processes and accumulation steps (section 2)
    accumulate: int = 1  # micro-batches per optimizer step; per-process batch / accumulate
    # schedule.kind=batch_growth: the most micro-batches a grown step accumulates (null: no limit)
    accumulate_max: Optional[int] = None
    workers: int = 4  # loader workers (torch) or threads (dali) per process
    random_area: list[float] = field(default_factory=lambda: [0.08, 1.0])  # crop area fraction (section 2 step 2)
    random_aspect: list[float] = field(default_factory=lambda: [0.75, 1.3333])  # crop aspect, log-uniform
    # Shrinking the crop (and the val resize): true filters first, as torchvision does; false
    # is plain bilinear, as the authors' code (MXNet's ImageRecordIter: OpenCV INTER_LINEAR).
    # The paper does not say; the ImageNet recipes follow the code.
    antialias: bool = True
    # Section 2 step 4. The text says "hue, saturation and brightness"; gluon-cv, whose code
    # produced the tables, jitters brightness, contrast and saturation and leaves hue alone.
    brightness: float = 0.4  # factor uniform in [1 - b, 1 + b]
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.0  # a hue *shift* in [-h, h] turns; off in the paper recipes
    pca_lighting: float = 0.1  # std of AlexNet PCA lighting alpha (section 2 step 5); 0 disables
    # DALI only: batches decoded ahead of the one training (Pipeline prefetch_queue_depth; DALI's
    # default and NVIDIA's ResNet-50 example's). Raise it if the GPU waits on the loader.
    prefetch: int = 2
    # DALI GPU only: the share of each batch's JPEGs that the hardware decoder (A100, H100)
    # takes; nvJPEG's CUDA decoder and the CPU threads take the rest. DALI's default.
    hw_decoder_load: float = 0.65
    # Beyond the paper (README "Beyond the paper"):
    # Cutout (DeVries and Taylor 2017): a square of side cutout x the training size at a uniform
    # centre, clipped at the border, set to 0 after normalization (the mean pixel); 0 disables
    cutout: float = 0.0
    # Random-shape training (YOLOv3's multi-scale; FFCV's progressive resizing): the training
    # crop side of each epoch; empty keeps data.image_size. Evaluation stays at data.image_size.
    train_sizes: list[int] = field(default_factory=list)
    size_every: int = 1  # epochs between size changes
    # random: every size_every epochs a size drawn uniformly from train_sizes (seeded by run.seed);
    # progressive: linear from the first size to the last over the run, rounded to a multiple of 32 (FFCV)
    size_schedule: Literal["random", "progressive"] = "random"
    # The held-out split: the folder ROOT/<val_split>/ or a shard folder's split of that name
    # (test, validation: as datasets ship it). Shards' "validation" is also found as val.
    val_split: str = "val"
    # Training crop: random_resized is the paper's (section 2 step 2: random_area, random_aspect,
    # resized to image_size); padded is CIFAR's (gluon-cv's CIFAR scripts, He et al. 2016): zero-pad
    # `padding` pixels on each side, crop image_size at a random place, no resize; evaluation then
    # takes each image as it is (its side must be image_size).
    crop: Literal["random_resized", "padded"] = "random_resized"
    padding: int = 4
    # Normalization, RGB in the 0-255 scale (section 2 step 6: ImageNet's); CIFAR recipes set their own
    mean: list[float] = field(default_factory=lambda: [123.68, 116.779, 103.939])
    std: list[float] = field(default_factory=lambda: [58.393, 57.12, 57.375])
    # Shards streamed from an http(s) data.root (torch loader): samples mixed in each worker's
    # buffer (their encoded bytes: about 110 KB each for ImageNet). docs/data.md, "Streaming".
    shuffle_buffer: int = 2000


@dataclass
class ModelConfig:
    # inception_v3 (299 px) and mobilenet_v1: the other columns of Tables 2 and 6 (bot/models/other.py)
    # cifar_*: gluon-cv's CIFAR networks (32 px; cifarresnet.py, cifarwideresnet.py): ResNet-20/56/110 in
    # v1 (post-activation) and v2 (pre-activation), WideResNet depth-width (bot/models/cifar.py)
    arch: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "inception_v3", "mobilenet_v1",
                  "cifar_resnet20_v1", "cifar_resnet56_v1", "cifar_resnet110_v1", "cifar_resnet20_v2",
                  "cifar_resnet56_v2", "cifar_resnet110_v2", "cifar_wrn16_10", "cifar_wrn28_10",
                  "cifar_wrn40_8"] = "resnet50"
    # ResNets only (section 4, figure 2): A is the original ResNet, and null means A for a ResNet;
    # the other networks have no variants and must leave it null
    variant: Optional[Literal["A", "B", "C", "D"]] = None
    zero_gamma: bool = False  # gamma = 0 in the BN ending each residual branch (section 3.1); ResNets only
    # ResNet-C/D only: every stage's and the stem's channels x width (rounded; timm's `channels` and
    # `stem_width`); 1 is the paper's network. Below 1 for quick CPU runs: 0.5 has ~1/4 the MACs.
    width: float = 1.0
    # xavier: the paper's text (section 2, Xavier-uniform); msra: the authors' code (gluon-cv's
    # MXNet MSRAPrelu: Gaussian, std sqrt(1.882 / ((fan_in + fan_out) / 2))); kaiming: timm's own init
    init: Literal["xavier", "msra", "kaiming"] = "xavier"
    sync_bn: bool = False  # BatchNorm statistics over all processes
    # Fine-tuning (section 6): a checkpoint or run folder whose weights start this run; the
    # classifier is re-initialised when the classes differ. A resumed run ignores it (last.pt wins).
    init_from: Optional[str] = None
    # Beyond the paper: the activation of every block and the stem, through timm's act_layer
    # (silu = Swish, Ramachandran et al. 2017; mish: Misra 2019); parameter-free, so parameters
    # and MACs are those of relu. All networks (ResNets, Inception-V3, MobileNet v1).
    act: Literal["relu", "silu", "mish"] = "relu"
    # Exponential moving average of the weights and BN buffers after every optimizer step (timm's
    # ModelEma, bot/train/ema.py): ema = d ema + (1 - d) weights; 0 disables. Evaluated beside the raw weights.
    ema_decay: float = 0.0
    # d_t = min(ema_decay, (1 + t) / (10 + t)) at update t (TensorFlow's ExponentialMovingAverage with
    # num_updates): the average forgets the random init quickly in short runs. false: d_t = ema_decay
    ema_warmup: bool = False
    # Network slimming (Liu et al., ICCV 2017): lambda of an L1 penalty on the BN scales inside
    # the residual blocks (bot/train/slim_penalty.py), so scripts/slim.py can remove the channels whose
    # gamma it drove to ~0. ResNets only; 0 = off. Liu et al. use 1e-5 to 1e-4.
    slim_l1: float = 0.0
    # Quantization-aware training (Jacob et al., CVPR 2018; bot/models/qat.py): fine-tune the run of
    # model.init_from with int8 simulated (weights per channel with BN folded, activations with
    # tracked ranges); scripts/quantize.py then writes the int8 ONNX with the learned ranges.
    qat: bool = False
    qat_bits: int = 8  # weight bits (activations stay 8): below 8 shows where post-training int8 breaks


@dataclass
class OptimConfig:
    lr: float = 0.1  # per 256 images (section 3.1)
    lr_scaling: Literal["linear", "none"] = "linear"  # linear: lr x global batch / 256
    nesterov: bool = True  # NAG (section 2)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    no_bias_decay: bool = False  # decay conv/linear weights only (section 3.1)


@dataclass
class ScheduleConfig:
    epochs: int = 120  # 120 in the paper; 200 with mixup (section 5.4)
    # step: /10 at milestones; cosine: section 5.1; batch_growth: x10 the batch at milestones
    # instead (Smith et al., ICLR 2018), up to data.accumulate_max, then /10 what remains
    kind: Literal["step", "cosine", "batch_growth"] = "step"
    milestones: list[int] = field(default_factory=lambda: [30, 60, 90])  # epochs (section 2)
    warmup_epochs: float = 0.0  # linear from 0 to the lr, per iteration (section 3.1); paper: 5


@dataclass
class LossConfig:
    label_smoothing: float = 0.0  # eps (section 5.2); paper: 0.1
    # paper: 1 - eps on the true class, eps / (K - 1) elsewhere (the text, equation 4);
    # uniform: 1 - eps + eps / K and eps / K (gluon-cv's code, which made the tables; timm, torch)
    smoothing_form: Literal["paper", "uniform"] = "uniform"
    mixup_alpha: float = 0.0  # lambda ~ Beta(a, a) (section 5.4); paper: 0.2
    mixup_off_epochs: int = 0  # no mixup in the last N epochs (gluon-cv)
    distill_teacher: Optional[str] = None  # checkpoint path (a run's best.pt) or a timm name (section 5.3)
    distill_temperature: float = 20.0  # T (section 5.3)
    # weighted: w CE(y, z) + (1 - w) T^2 CE(r/T, z/T), w = distill_hard_weight (gluon-cv's code, which
    # made Table 6; half of eq. 6 at w = 0.5); paper: CE(y, z) + T^2 CE(r/T, z/T) (section 5.3, eq. 6)
    distill_form: Literal["weighted", "paper"] = "weighted"
    distill_hard_weight: float = 0.5  # w of the weighted form
    # CutMix (Yun et al. 2019), beyond the paper: lambda ~ Beta(a, a), a box of area 1 - lambda pasted
    # from the mirrored sample, lambda recomputed from the clipped box; 0 disables. Off in the last
    # loss.mixup_off_epochs too, as timm's mixup_off_epoch stops both.
    cutmix_alpha: float = 0.0
    # the chance a batch uses CutMix (Yun et al.'s cutmix_prob; 1.0 in their ImageNet command). With
    # mixup on too, the other batches use mixup (timm's switch_prob): 1.0 would leave mixup none
    cutmix_prob: float = 1.0


@dataclass
class RunConfig:
    out: Optional[str] = None  # run folder; null: runs/<recipe name>
    name: Optional[str] = None  # run name for logs and wandb; null: the run folder's name
    group: Optional[str] = None  # wandb group (an ablation grid)
    seed: int = 0
    wandb: Literal["off", "offline", "online"] = "off"  # offline writes into the run folder
    max_steps: Optional[int] = None  # cap on optimizer steps, for smoke runs and benchmarks
    log_every: int = 50  # steps between training lines in metrics.jsonl
    # last.pt every so often: a wall time ("10min", "30s", "1h") or a number of steps; each epoch end
    # writes one too. By time by default: a kill -9 then costs at most that much training at any speed.
    checkpoint_every: Union[int, str] = "10min"
    resume: Literal["auto", "force"] = "auto"  # force: resume even though the config changed
    best_of: Literal["raw", "ema"] = "raw"  # which weights best.pt keeps, chosen by their top-1 (ema: model.ema_decay)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # fp16: dynamic loss scaling, fp32 master weights (section 3.2)
    channels_last: bool = False
    # torch.compile of the model for training and evaluation: false, true (torch's default
    # mode) or a mode. Compiled once per input shape; checkpoints are the eager ones (docs/gpu.md).
    compile: Union[bool, Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]] = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- reading recipes

# The top-level recipes/ folder as the package sees it: bot/recipes is a link to it in a
# checkout, and a folder of package data in a wheel (pyproject.toml [tool.setuptools.package-data]).
PACKAGED_RECIPES = Path(__file__).parent / "recipes"

# The section a run's config.yaml adds to the resolved config (bot/train/run_checks.py's provenance)
PROVENANCE = "provenance"


def packaged_recipe(name: str | Path) -> Path | None:
    """The shipped recipe (or grid) that `name` means: `demo`, `demo.yaml`, `recipes/demo.yaml`,
    `ablations/table6`, `recipes/ablations/table6.yaml`; None when there is no such file."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute():
        return None
    if parts[0] == "recipes":
        parts = parts[1:]
    if not parts:
        return None
    path = PACKAGED_RECIPES.joinpath(*parts)
    if path.suffix not in (".yaml", ".yml"):
        path = path.with_name(path.name + ".yaml")
    inside = path.resolve().is_relative_to(PACKAGED_RECIPES.resolve())  # no ../ out of the package
    return path if inside and path.is_file() else None


def recipe_path(name: str | Path) -> Path:
    """`name` if that file exists (a path that exists always wins), else the packaged recipe of
    that name; UserError when neither is there."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = packaged_recipe(name)
    if packaged is None:
        raise UserError(f"recipe not found: {path} (not a file here, nor one of the recipes shipped in "
                        f"{PACKAGED_RECIPES})")
    return packaged


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The recipe at `path` merged over its `base:` chain, as a plain nested dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe not found: {path}")
    real = path.resolve()
    if real in _seen:
        chain = " -> ".join(p.name for p in (*_seen, real))
        raise UserError(f"recipe base cycle: {chain}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"recipe {path} must be a mapping of keys, not {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    parent = read_recipe(path.parent / base, (*_seen, real))
    return merge(parent, raw)


def merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_override(tree: dict, item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value parses as YAML."""
    if "=" not in item:
        raise UserError(f"override {item!r} must look like key.sub=value")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError:
        value = text
    if isinstance(value, str):  # YAML 1.1 reads 1e30 (no dot) as a string
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    if isinstance(value, dict):  # no field takes a mapping: `optim={}` would silently reset a whole section
        raise UserError(f"override {item!r}: set a section's keys one by one ({key.strip()}.KEY=VALUE), "
                        f"not the section as a whole")
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------- typing


def flat(tree: dict, prefix: str = "") -> dict:
    """A nested dict (a recipe, `Config.to_dict()`) as {dotted.key: value}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += all_keys(hint, name + ".")
        else:
            keys.append(name)
    return keys


def _unknown(key: str) -> UserError:
    near = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return UserError(f"unknown config key: {key}{hint}")


def _typename(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(hint))
    if origin is typing.Union:
        return " or ".join(_typename(a) for a in typing.get_args(hint))
    if origin is list:
        return f"list of {_typename(typing.get_args(hint)[0])}"
    return "null" if hint is type(None) else hint.__name__


def _coerce(key: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    bad = UserError(f"{key}: expected {_typename(hint)}, got {value!r}")
    if origin is typing.Union:
        for arg in typing.get_args(hint):
            try:
                return _coerce(key, arg, value)
            except UserError:
                pass
        raise bad
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise bad
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(hint)
        return [_coerce(key, item, v) for v in value]
    if hint is type(None):
        if value is None:
            return None
        raise bad
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if hint is float:  # no inf or nan: no field means "unbounded" by them, and they pass every range check
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise UserError(f"{key}: expected a finite number, got {value!r}") if isinstance(value, float) else bad
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported config type {hint}")


def build(cls: type, tree: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in tree:
        if key not in names:
            raise _unknown(prefix + str(key))
    kwargs = {}
    for name in names & tree.keys():
        value, hint = tree[name], hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"{prefix}{name}: expected a section of keys, got {value!r}")
            kwargs[name] = build(hint, value, prefix + name + ".")
        else:
            kwargs[name] = _coerce(prefix + name, hint, value)
    return cls(**kwargs)


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Recipe (with its base chain) + overrides -> a checked Config."""
    tree = read_recipe(recipe_path(path)) if path is not None else {}
    tree.pop(PROVENANCE, None)
    for item in overrides:
        apply_override(tree, item)
    cfg = validate(build(Config, tree))
    if cfg.run.out is None:
        cfg.run.out = str(Path("runs") / (Path(path).stem if path else "default"))
    if cfg.run.name is None:
        cfg.run.name = Path(cfg.run.out).name
    return cfg


def from_dict(tree: dict) -> Config:
    """A Config from a resolved dict (a run folder's config.yaml or a checkpoint's)."""
    tree = {k: v for k, v in tree.items() if k in {f.name for f in dataclasses.fields(Config)}}
    return validate(build(Config, tree))
