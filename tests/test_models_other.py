"""Inception-V3 and MobileNet v1 (bot/models/other.py): published size, the authors' setup,
the tricks that apply, the ones that exit 2, and one training step of each with every trick."""

import math

import pytest
import timm
import torch
from conftest import ROOT, run_here
from torch import nn

from bot import config
from bot.errors import UserError
from bot.models import build_model, count_params_macs
from bot.train.optim import param_groups

# Published sizes: Inception-V3 (Szegedy et al. 2016) 23.8 M parameters and 5.7 G multiply-adds
# at 299 px; MobileNet v1 1.0 (Howard et al. 2017, table 8) 4.2 M and 569 M at 224 px.
PUBLISHED = {"inception_v3": (299, 23.8, 5.7), "mobilenet_v1": (224, 4.2, 0.569)}
TIMM_NAME = {"inception_v3": "inception_v3", "mobilenet_v1": "mobilenetv1_100"}


def model(arch, *overrides, num_classes=1000):
    return build_model(config.load(None, [f"model.arch={arch}", *overrides]), num_classes=num_classes)


@pytest.mark.parametrize("arch", list(PUBLISHED))
def test_params_and_macs_match_the_published_figures(arch):
    size, mparams, gmacs = PUBLISHED[arch]
    m = model(arch)
    params, macs = count_params_macs(m, size)
    print(f"{arch}: {params} params, {macs} MACs at {size} px")
    assert round(params / 1e6, 1) == mparams
    assert abs(macs / 1e9 - gmacs) / gmacs < 0.01
    # the same network as timm's, whose dropout and activation changes hold no weights
    assert params == sum(p.numel() for p in timm.create_model(TIMM_NAME[arch]).parameters())


def test_inception_is_gluon_cvs_no_aux_head_dropout_half():
    m = model("inception_v3")
    names = [n for n, _ in m.named_modules()]
    assert not any("Aux" in n for n in names)
    assert [mod.p for mod in m.modules() if isinstance(mod, nn.Dropout)] == [0.5]
    assert all(bn.eps == 1e-3 for bn in m.modules() if isinstance(bn, nn.BatchNorm2d))
    with torch.no_grad():
        assert m.train()(torch.randn(2, 3, 75, 75)).shape == (2, 1000)  # one output: no aux logits in training


def test_mobilenet_is_v1_with_relu_and_no_residual():
    m = model("mobilenet_v1")
    acts = {type(mod) for mod in m.modules() if isinstance(mod, (nn.ReLU, nn.ReLU6))}
    assert acts == {nn.ReLU}  # gluon-cv's mobilenet1.0 and the paper use ReLU; timm defaults to ReLU6
    blocks = [mod for mod in m.modules() if hasattr(mod, "has_skip")]
    assert len(blocks) == 13 and not any(b.has_skip for b in blocks)
    depthwise = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.groups > 1]
    assert len(depthwise) == 13 and all(c.groups == c.in_channels == c.out_channels for c in depthwise)


@pytest.mark.parametrize("arch", list(PUBLISHED))
def test_xavier_counts_fans_per_group(arch):
    torch.manual_seed(0)
    m = model(arch, "model.init=xavier")
    checked = 0
    for name, mod in m.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            w, groups = mod.weight, getattr(mod, "groups", 1)
            field = w[0, 0].numel()
            bound = math.sqrt(6 / (w.shape[1] * field + w.shape[0] // groups * field))
            if groups > 1:  # depthwise 3 x 3: 9 connections in, 9 out
                assert bound == pytest.approx(math.sqrt(6 / 18))
            assert w.abs().max() <= bound, name
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15), name
            assert mod.bias is None or not mod.bias.any(), name
            checked += 1
        elif isinstance(mod, nn.BatchNorm2d):
            assert (mod.weight == 1).all() and not mod.bias.any(), name
    assert checked == {"inception_v3": 95, "mobilenet_v1": 28}[arch]
    # kaiming keeps timm's own init: a different draw of the same shapes
    other = model(arch, "model.init=kaiming")
    assert any(not torch.equal(a, b) for a, b in zip(m.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("arch", list(PUBLISHED))
def test_no_bias_decay_by_module_type_includes_depthwise_convs(arch):
    m = model(arch)
    decay, rest = param_groups(m, 1e-4, no_bias_decay=True)
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    convs = {f"{n}.weight" for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))}
    assert decayed == convs and rest["weight_decay"] == 0
    assert any(mod.groups > 1 and f"{n}.weight" in decayed for n, mod in m.named_modules()
               if isinstance(mod, nn.Conv2d)) == (arch == "mobilenet_v1")
    norms = {f"{n}.{k}" for n, mod in m.named_modules() if isinstance(mod, nn.BatchNorm2d) for k in ("weight", "bias")}
    assert norms and norms <= {names[id(p)] for p in rest["params"]}
    assert len(decay["params"]) + len(rest["params"]) == len(list(m.parameters()))


@pytest.mark.parametrize("arch", list(PUBLISHED))
def test_tricks_that_do_not_apply_are_refused(arch):
    with pytest.raises(UserError, match=f"model.zero_gamma: .*{arch} has no residual blocks"):
        config.load(None, [f"model.arch={arch}", "model.zero_gamma=true"])
    with pytest.raises(UserError, match=f"model.variant: .*{arch} has none"):
        config.load(None, [f"model.arch={arch}", "model.variant=D"])
    assert config.load(None, [f"model.arch={arch}"]).model.variant is None
    assert config.load(None, ["model.arch=resnet50"]).model.variant == "A"  # null is A for a ResNet


def test_inception_size_and_val_resize():
    with pytest.raises(UserError, match="inception_v3 needs at least 75 px"):
        config.load(None, ["model.arch=inception_v3", "data.image_size=64"])
    # 299 / 0.875 rounded up: gluon-cv's resize = ceil(input_size / crop_ratio)
    assert config.load(None, ["model.arch=inception_v3", "data.image_size=299"]).data.val_resize == 342


def test_zero_gamma_on_mobilenet_exits_2_from_the_cli(toy, tmp_path):
    r = run_here(ROOT / "train.py", ROOT / "recipes" / "efficient.yaml", "model.arch=mobilenet_v1",
                f"data.root={toy}", f"run.out={tmp_path / 'run'}")
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: model.zero_gamma: zeroes the last BN of each residual block (section 3.1); "
                                "mobilenet_v1 has no residual blocks: set model.zero_gamma=false")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- one step, every trick


@pytest.fixture(scope="module")
def teacher(toy, tmp_path_factory):
    """A one-step ResNet-18-D best.pt, standing in for the ResNet-152-D teacher."""
    from bot.train.trainer import train

    out = tmp_path_factory.mktemp("teacher")
    train(config.load(ROOT / "recipes" / "demo.yaml", [f"data.root={toy}", f"run.out={out}", "data.workers=0",
                                                        "data.batch_size=8", "run.max_steps=1"]))
    return out / "best.pt"


@pytest.mark.parametrize("arch,size,precision", [("inception_v3", 75, "fp32"), ("mobilenet_v1", 32, "fp16")])
def test_one_step_with_every_trick_and_the_teacher_at_the_students_size(arch, size, precision, toy, teacher,
                                                                         tmp_path, monkeypatch):
    from bot.train import trainer

    seen = {"student": [], "teacher": []}

    def spy(build, who):
        def wrapped(*args, **kwargs):
            m = build(*args, **kwargs)
            m.register_forward_pre_hook(lambda mod, inputs: seen[who].append(tuple(inputs[0].shape)))
            return m
        return wrapped

    monkeypatch.setattr(trainer, "build_model", spy(trainer.build_model, "student"))
    monkeypatch.setattr(trainer, "load_teacher", spy(trainer.load_teacher, "teacher"))
    cfg = config.load(ROOT / "recipes" / "efficient.yaml", [
        f"model.arch={arch}", "model.zero_gamma=false", f"data.root={toy}", f"run.out={tmp_path / 'run'}",
        "data.backend=torch", f"data.image_size={size}", "data.batch_size=4", "data.workers=0",
        f"precision={precision}", "schedule.kind=cosine", "loss.label_smoothing=0.1", "loss.smoothing_form=uniform",
        "loss.mixup_alpha=0.2", f"loss.distill_teacher={teacher}", "run.max_steps=1"])
    assert (cfg.optim.no_bias_decay, cfg.schedule.warmup_epochs, cfg.model.init) == (True, 5, "msra")
    summary = trainer.train(cfg)
    assert summary["steps"] == 1 and 0 <= summary["top1"] <= 100
    assert summary["params"] == sum(p.numel() for p in model(arch, num_classes=4).parameters())
    train_shape = (4, 3, size, size)
    # the student's first forward is count_params_macs' (1 image); then the training batch, which
    # the teacher sees too: the student's mixed batch at the student's resolution
    assert seen["student"][1] == train_shape and seen["teacher"] == [train_shape]
