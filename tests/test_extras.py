"""Beyond the paper, one function at a time: CutMix, Cutout, model.act, random shapes, weight EMA.

Each against its definition (README "Beyond the paper") or timm's own code where they agree;
tests/test_extras_train.py runs them through the loaders and the trainer.
"""

import math

import numpy as np
import pytest
import torch
from timm.data.mixup import cutmix_bbox_and_lam
from torch import nn

from bot import config
from bot.data.cutout import cutout_box, erase
from bot.data.sizes import size_schedule
from bot.errors import UserError
from bot.grid.table import kept_weights_accuracy
from bot.models import build_model, count_params_macs
from bot.train.ema import WeightEma, ema_decay_at
from bot.train.losses import (
    Objective,
    cutmix,
    cutmix_box,
    cutmix_draw,
    mixup,
    mixup_lambda,
    smooth_targets,
    uses_cutmix,
)


def cfg_of(*overrides):
    return config.load(None, list(overrides))


# ---------------------------------------------------------------- CutMix


@pytest.mark.parametrize("lam", [0.1, 0.37, 0.5, 0.83, 0.99])
def test_cutmix_box_area_follows_lambda_inside_the_image(lam):
    h = w = 224
    y0, y1, x0, x1 = cutmix_box(lam, 112, 112, h, w)
    side = int(h * math.sqrt(1 - lam))
    assert (y1 - y0, x1 - x0) == (side, side)  # the box's area is (1 - lambda) of the image, to a pixel
    assert abs((y1 - y0) * (x1 - x0) / (h * w) - (1 - lam)) < 2 * side / (h * w) + 1e-12


def test_cutmix_lambda_is_recomputed_from_the_box_clipped_at_a_border():
    images = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).view(4, 3, 8, 8)
    targets = smooth_targets(torch.tensor([0, 1, 2, 3]), 5, 0.0, "uniform")  # 5 classes: not symmetric
    box = cutmix_box(0.75, 0, 0, 8, 8)  # a 4 x 4 box centred on the corner: only 2 x 2 inside
    assert box == (0, 2, 0, 2)
    mixed, mixed_targets = cutmix(images, targets, box)
    assert torch.equal(mixed[:, :, :2, :2], images.flip(0)[:, :, :2, :2])  # pasted from the mirrored sample
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[:2, :2] = False
    assert torch.equal(mixed[:, :, outside], images[:, :, outside])
    lam = 1 - 4 / 64  # from the clipped box, not the drawn 0.75
    assert torch.allclose(mixed_targets, lam * targets + (1 - lam) * targets.flip(0))
    assert torch.allclose(mixed_targets.sum(1), torch.ones(4))


def test_cutmix_box_smaller_than_a_pixel_is_empty_at_a_border():
    # sqrt(1 - lambda) = 0.05: 0 rows of 16 and 3 columns of 64 (and the transpose), centred on row (column) 0
    assert cutmix_box(1 - 0.05 ** 2, 0, 10, 16, 64) == (0, 0, 9, 12)
    assert cutmix_box(1 - 0.05 ** 2, 10, 0, 64, 16) == (9, 12, 0, 0)


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_box_and_lambda_equal_timms(seed):
    shape, lam = (3, 40, 56), 0.3 + 0.1 * seed
    np.random.seed(seed)
    timm_box, timm_lam = cutmix_bbox_and_lam(shape, lam)
    np.random.seed(seed)  # timm's draws of the centre, in its order
    cy, cx = np.random.randint(0, 40), np.random.randint(0, 56)
    box = cutmix_box(lam, cy, cx, 40, 56)
    assert box == tuple(int(v) for v in timm_box)
    images = torch.randn(2, *shape)
    _, targets = cutmix(images, torch.eye(2), box)
    assert targets[0, 0].item() == pytest.approx(timm_lam)


def test_cutmix_odd_batch_middle_sample_pairs_with_itself():
    images, labels = torch.randn(5, 3, 16, 16), torch.arange(5)
    targets = smooth_targets(labels, 5, 0.1, "uniform")
    mixed, mixed_targets = cutmix(images, targets, cutmix_box(0.5, 8, 8, 16, 16))
    assert torch.equal(mixed[2], images[2]) and torch.allclose(mixed_targets[2], targets[2])
    assert not torch.equal(mixed[0], images[0])
    assert torch.allclose(mixed_targets.sum(1), torch.ones(5))


def test_cutmix_draws_are_a_pure_function_of_seed_and_step():
    assert cutmix_draw(3, 17, 1.0, 32, 32) == cutmix_draw(3, 17, 1.0, 32, 32)
    draws = [cutmix_draw(0, step, 1.0, 32, 32) for step in range(2000)]
    lams = np.array([d[0] for d in draws])
    assert abs(lams.mean() - 0.5) < 0.03 and abs(lams.var() - 1 / 12) < 0.01  # Beta(1, 1) is uniform
    assert {d[1] for d in draws} == set(range(32))  # centres uniform over every row


@pytest.mark.parametrize("draw", [lambda step: cutmix_draw(0, step, 0.2, 32, 32)[0],
                                  lambda step: mixup_lambda(0, step, 0.2)], ids=["cutmix", "mixup"])
def test_lambda_is_beta_at_alpha_0_2(draw):
    """At alpha = 0.2 (the paper's mixup), Beta(a, a) piles lambda near 0 and 1: variance
    1 / (4 (2a + 1)) = 0.179 against the uniform's 0.083, and ~58% of draws within 0.05 of an end."""
    lams = np.array([draw(step) for step in range(4000)])
    # 4000 draws: the sample mean's std is 0.007, the variance's below 0.003
    assert abs(lams.mean() - 0.5) < 0.03 and abs(lams.var() - 1 / (4 * 1.4)) < 0.015
    assert 0.5 < np.mean((lams < 0.05) | (lams > 0.95)) < 0.65


@pytest.mark.parametrize("prob", [0.0, 0.5, 1.0])
def test_cutmix_prob_is_the_chance_a_batch_is_cut_without_mixup(prob):
    """Yun et al.'s cutmix_prob: each batch is CutMix-ed with probability prob, else left clean."""
    cfg = cfg_of("loss.cutmix_alpha=1.0", f"loss.cutmix_prob={prob}", "schedule.epochs=10")
    objective = Objective(cfg, 4, 8)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    n, cut = 0, 0
    for step in range(400):
        mixed, _ = objective.prepare(images, labels, step, 0)
        lam, cy, cx = cutmix_draw(cfg.run.seed, step, 1.0, 32, 32)
        pasted = cutmix(images, images, cutmix_box(lam, cy, cx, 32, 32))[0]
        assert torch.equal(mixed, images) or torch.equal(mixed, pasted)
        if not torch.equal(pasted, images):  # lambda > 1 - 1/32^2 draws an empty box: cut or not alike
            n, cut = n + 1, cut + (not torch.equal(mixed, images))
    assert abs(cut - n * prob) <= 4 * math.sqrt(n * prob * (1 - prob))  # binomial(n, prob), 4 std


@pytest.mark.parametrize("prob", [0.0, 0.3, 1.0])
def test_switch_between_mixup_and_cutmix(prob):
    cfg = cfg_of("loss.mixup_alpha=0.2", "loss.cutmix_alpha=1.0", f"loss.cutmix_prob={prob}", "schedule.epochs=10")
    objective = Objective(cfg, 4, 8)
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    kinds = []
    for step in range(300):
        mixed, _ = objective.prepare(images, labels, step, 0)
        blended = mixup(images, images, mixup_lambda(cfg.run.seed, step, 0.2))[0]
        kinds.append(not torch.equal(mixed, blended))  # not mixup's blend: CutMix's paste
        assert kinds[-1] == uses_cutmix(cfg.run.seed, step, prob)
    assert abs(np.mean(kinds) - prob) < 0.1


def test_cutmix_alone_and_off_in_the_last_epochs():
    cfg = cfg_of("loss.cutmix_alpha=1.0", "loss.mixup_off_epochs=2", "schedule.epochs=10")
    objective = Objective(cfg, 4, 8)
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    mixed, targets = objective.prepare(images, labels, 5, 7)
    lam, cy, cx = cutmix_draw(cfg.run.seed, 5, 1.0, 16, 16)
    expected = cutmix(images, smooth_targets(labels, 4, 0.0, "uniform"), cutmix_box(lam, cy, cx, 16, 16))
    assert torch.equal(mixed, expected[0]) and torch.equal(targets, expected[1])
    same, _ = objective.prepare(images, labels, 5, 8)  # epoch 8 of 10: the last 2 are clean
    assert torch.equal(same, images)
    with pytest.raises(UserError, match="loss.cutmix_alpha needs at least 2 images"):
        Objective(cfg, 4, 1)
    Objective(cfg, 4, 2)  # 2 images are a pair


def test_distillation_teacher_sees_the_cutmixed_images():
    seen = []
    teacher = lambda x: seen.append(x.clone()) or torch.zeros(len(x), 4)  # noqa: E731
    cfg = cfg_of("loss.cutmix_alpha=1.0", "loss.distill_hard_weight=0.5")
    objective = Objective(cfg, 4, 8, teacher)
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    mixed, targets = objective.prepare(images, labels, 3, 0)
    objective.loss(torch.zeros(8, 4), targets, mixed)
    assert torch.equal(seen[0], mixed) and not torch.equal(mixed, images)


def test_cutmix_keys_are_checked():
    with pytest.raises(UserError, match="loss.cutmix_prob"):
        cfg_of("loss.cutmix_prob=1.5")
    with pytest.raises(UserError, match="loss.cutmix_alpha"):
        cfg_of("loss.cutmix_alpha=-1")


# ---------------------------------------------------------------- Cutout


def test_cutout_erases_a_square_of_the_fraction_set_to_zero():
    image = torch.randn(3, 40, 40) + 5  # nowhere 0 before
    boxes = [cutout_box(seed, 40, 0.25) for seed in range(400)]
    inside = [b for b in boxes if b[0] > 0 and b[2] > 0 and b[1] < 40 and b[3] < 40]
    assert inside and all((y1 - y0, x1 - x0) == (10, 10) for y0, y1, x0, x1 in inside)
    assert len(inside) < len(boxes)  # the centre is uniform: some squares reach past a border and are clipped
    y0, y1, x0, x1 = box = cutout_box(7, 40, 0.25)
    erased = erase(image.clone(), box)
    assert (erased[:, y0:y1, x0:x1] == 0).all()
    assert (erased != 0).sum() == image.numel() - 3 * (y1 - y0) * (x1 - x0)
    centres = np.array([((b[0] + b[1]) / 2, (b[2] + b[3]) / 2) for b in inside])
    assert abs(centres.mean() - 20) < 2  # not biased to a side
    with pytest.raises(UserError, match="data.cutout"):
        cfg_of("data.cutout=1.5")


# ---------------------------------------------------------------- model.act


@pytest.mark.parametrize("arch,variant", [("resnet18", "D"), ("resnet50", "A"), ("mobilenet_v1", None),
                                          ("inception_v3", None)])
def test_act_replaces_every_relu_with_the_same_params_and_macs(arch, variant):
    size = 96 if arch == "inception_v3" else 64
    base = [f"model.arch={arch}", f"data.image_size={size}", "model.zero_gamma=false"]
    base += [f"model.variant={variant}"] if variant else []
    counts = {}
    for act, kind in (("relu", nn.ReLU), ("silu", nn.SiLU), ("mish", nn.Mish)):
        model = build_model(cfg_of(*base, f"model.act={act}"), 10)
        activations = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Mish, nn.GELU))]
        assert activations and all(type(m) is kind for m in activations), {type(m).__name__ for m in activations}
        counts[act] = count_params_macs(model, size)
    assert counts["silu"] == counts["relu"] == counts["mish"]


def test_act_keeps_zero_gamma():
    model = build_model(cfg_of("model.arch=resnet18", "model.variant=D", "model.act=mish", "model.zero_gamma=true"), 10)
    assert all((b.bn2.weight == 0).all() for stage in (model.layer1, model.layer4) for b in stage)


# ---------------------------------------------------------------- random shapes


def sizes_over(epochs, *overrides):
    size_of = size_schedule(cfg_of(f"schedule.epochs={epochs}", *overrides))
    return [size_of(e) for e in range(epochs)]


def test_random_sizes_are_drawn_from_the_list_every_n_epochs():
    sizes = sizes_over(24, "data.train_sizes=[160, 192, 224, 256, 288]", "data.size_every=2")
    assert set(sizes) <= {160, 192, 224, 256, 288} and len(set(sizes)) >= 3
    assert all(sizes[2 * i] == sizes[2 * i + 1] for i in range(12))  # one size per 2-epoch block
    assert sizes == sizes_over(24, "data.train_sizes=[160, 192, 224, 256, 288]", "data.size_every=2")
    assert sizes != sizes_over(24, "data.train_sizes=[160, 192, 224, 256, 288]", "data.size_every=2", "run.seed=1")
    assert sizes_over(3) == [224, 224, 224]  # empty list: always data.image_size


def test_progressive_sizes_are_linear_and_multiples_of_32():
    assert sizes_over(5, "data.train_sizes=[128, 256]", "data.size_schedule=progressive") == [128, 160, 192, 224, 256]
    assert sizes_over(6, "data.train_sizes=[160, 224]", "data.size_schedule=progressive", "data.size_every=2") == \
        [160, 160, 192, 192, 224, 224]
    # linear 160 -> 192 over 5 epochs (168, 176, 184) rounds to a multiple of 32
    assert sizes_over(5, "data.train_sizes=[160, 192]", "data.size_schedule=progressive") == [160, 160, 192, 192, 192]
    with pytest.raises(UserError, match="data.train_sizes: progressive"):
        cfg_of("data.train_sizes=[100, 200]", "data.size_schedule=progressive")


# ---------------------------------------------------------------- weight EMA


def test_ema_closed_form_after_k_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema, d, history = WeightEma(model, 0.9, warmup=False), 0.9, []
    for t in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(4, 3))  # BN buffers move too
        history.append({k: v.clone() for k, v in model.state_dict().items()})
        ema.update(t)
    k = len(history)
    for key, value in ema.state_dict().items():
        if not value.is_floating_point():
            assert torch.equal(value, history[-1][key])  # num_batches_tracked is copied
            continue
        closed = d ** k * start[key] + sum((1 - d) * d ** (k - i) * history[i - 1][key] for i in range(1, k + 1))
        assert torch.allclose(value, closed, atol=1e-6), key


def test_train_step_folds_every_optimizer_step_into_the_ema():
    """The step itself updates the average, update t after step t (1-based): its closed form
    ema_k = prod_t d_t x_0 + sum_i (1 - d_i) prod_{t > i} d_t x_i, d_t = min(0.9, (1 + t) / (10 + t))."""
    from bot.train.engine import make_accelerator
    from bot.train.trainer import build_step

    torch.manual_seed(0)
    cfg = cfg_of("model.ema_decay=0.9", "model.ema_warmup=true", "data.batch_size=8", "optim.lr=25.6")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    step = build_step(cfg, model, make_accelerator(), num_classes=4, batch=8, steps_per_epoch=10)
    states = [{k: v.clone() for k, v in model.state_dict().items()}]
    for s in range(4):
        step(torch.randn(8, 3, 8, 8), torch.arange(8) % 4, s, 0)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    k, decays = len(states) - 1, [None] + [ema_decay_at(0.9, t, True) for t in range(1, len(states))]
    assert not torch.equal(states[-1]["4.weight"], states[0]["4.weight"])  # the weights did move
    for key, value in step.ema.state_dict().items():
        if not value.is_floating_point():
            assert torch.equal(value, states[-1][key])
            continue
        closed = math.prod(decays[1:]) * states[0][key] + sum(
            (1 - decays[i]) * math.prod(decays[i + 1:]) * states[i][key] for i in range(1, k + 1))
        assert torch.allclose(value, closed, atol=1e-6), key


def test_ema_state_round_trips_and_tables_report_the_average_only_under_best_of_ema():
    torch.manual_seed(0)
    a, b = WeightEma(nn.Linear(3, 2), 0.9, False), WeightEma(nn.Linear(3, 2), 0.9, False)
    b.load_state_dict(a.state_dict())
    assert not any(p.requires_grad for p in a.module.parameters())  # the average is never trained
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    summary = {"top1": 70.0, "ema_top1": 71.0, "top5": 90.0, "ema_top5": 92.0, "best_of": "ema"}
    assert (kept_weights_accuracy(summary, "top1"), kept_weights_accuracy(summary, "top5")) == (71.0, 92.0)
    assert kept_weights_accuracy(summary | {"best_of": "raw"}, "top1") == 70.0
    assert kept_weights_accuracy({"top1": 70.0}, "top1") == 70.0


def test_ema_warmup_decay_is_tensorflows_num_updates_form():
    assert [ema_decay_at(0.999, t, True) for t in (1, 10, 100)] == [2 / 11, 11 / 20, 101 / 110]
    assert ema_decay_at(0.9, 10_000, True) == 0.9 and ema_decay_at(0.9, 1, False) == 0.9


def test_ema_keys_are_checked():
    with pytest.raises(UserError, match="run.best_of: ema needs model.ema_decay"):
        cfg_of("run.best_of=ema")
    with pytest.raises(UserError, match="model.ema_decay"):
        cfg_of("model.ema_decay=1")


# ---------------------------------------------------------------- recipes


def test_each_extras_recipe_is_the_all_tricks_recipe_plus_its_extra():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    base = config.load(root / "resnet50-all-tricks.yaml").to_dict()
    changed = {}
    for path in sorted((root / "extras").glob("*.yaml")):
        assert f"python train.py recipes/extras/{path.name}" in path.read_text(), path.name
        cfg = config.load(path).to_dict()
        changed[path.stem] = sorted(f"{s}.{k}" for s in cfg if isinstance(cfg[s], dict) and s != "run"
                                    for k in cfg[s] if cfg[s][k] != base[s][k])
    assert changed == {
        "cutmix": ["loss.cutmix_alpha", "loss.cutmix_prob"], "cutout": ["data.cutout"],
        "ema": ["model.ema_decay", "model.ema_warmup"],
        "mish": ["model.act"], "progressive": ["data.size_schedule", "data.train_sizes"],
        "random-shapes": ["data.train_sizes"], "swish": ["model.act"]}
