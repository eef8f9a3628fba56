"""Each trick against its closed form from the paper (PAPER.md sections 2-4)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bot import config
from bot.errors import UserError
from bot.models import build_model
from bot.train.losses import Objective, distillation_term, mixup, mixup_lambda, smooth_targets, soft_cross_entropy
from bot.train.optim import build_optimizer, load_optimizer_state, param_groups, use_fused
from bot.train.schedule import build_schedule, lr_at, peak_lr

# ---------------------------------------------------------------- learning rate

def test_linear_scaling_uses_the_global_batch():
    assert peak_lr(config.load(None, ["data.batch_size=1024"])) == pytest.approx(0.4)
    assert peak_lr(config.load(None, ["data.batch_size=1024", "data.accumulate=4"])) == pytest.approx(0.4)
    assert peak_lr(config.load(None, ["data.batch_size=1024", "optim.lr_scaling=none"])) == 0.1


def test_step_schedule_divides_by_10_at_milestones():
    """Section 2's baseline at batch 512: 0.1 x 512 / 256 = 0.2 for epochs 0-29, 0.02 for 30-59,
    0.002 for 60-89, 0.0002 for 90-119 (typed from the paper's schedule, 100 steps an epoch)."""
    lr = build_schedule(config.load(None, ["data.batch_size=512"]), steps_per_epoch=100)
    typed = {0: 0.2, 1500: 0.2, 2999: 0.2, 3000: 0.02, 4500: 0.02, 5999: 0.02, 6000: 0.002, 7777: 0.002,
             8999: 0.002, 9000: 0.0002, 10500: 0.0002, 11999: 0.0002}
    assert {step: lr(step) for step in typed} == pytest.approx(typed)


def test_warmup_is_linear_per_iteration_then_cosine():
    cfg = config.load(None, ["data.batch_size=1024", "schedule.warmup_epochs=5", "schedule.kind=cosine"])
    n, m, T = 50, 250, 120 * 50 - 250
    lr = build_schedule(cfg, steps_per_epoch=n)
    for i in range(1, m + 1):  # section 3.1: batch i of m gets i * lr / m
        assert lr(i - 1) == pytest.approx(0.4 * i / m)
    for t in range(0, T, 13):  # section 5.1
        assert lr(m + t) == pytest.approx(0.5 * (1 + math.cos(t * math.pi / T)) * 0.4)
    assert lr(m) == pytest.approx(0.4) and lr(m + T // 2) == pytest.approx(0.2)


def test_an_unknown_schedule_kind_is_named():
    with pytest.raises(ValueError, match="unknown schedule kind 'linear'"):
        lr_at(0, peak=0.1, warmup_steps=0, total_steps=10, kind="linear")


def test_warmup_then_step_decay():
    cfg = config.load(None, ["schedule.warmup_epochs=2", "schedule.milestones=[5]", "schedule.epochs=10"])
    lr = build_schedule(cfg, steps_per_epoch=10)
    assert [lr(s) for s in (0, 9, 19, 20, 49, 50)] == pytest.approx([0.005, 0.05, 0.1, 0.1, 0.1, 0.01])


# ---------------------------------------------------------------- NAG and no bias decay

def test_nag_and_decay_on_conv_and_linear_weights_only():
    cfg = config.load(None, ["model.arch=resnet50", "model.variant=D", "optim.no_bias_decay=true"])
    model = build_model(cfg, num_classes=10)
    opt = build_optimizer(model, cfg)
    decayed = [g for g in opt.param_groups if g["weight_decay"] > 0]
    assert len(decayed) == 1 and decayed[0]["weight_decay"] == 1e-4
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    names = {id(p): n for n, p in model.named_parameters()}
    got = {names[id(p)] for p in decayed[0]["params"]}
    want = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert got == want
    assert "layer1.0.downsample.2.weight" not in got  # the shortcut BN of ResNet-D is not decayed
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_without_the_trick_everything_is_decayed():
    model = build_model(config.load(None, ["model.arch=resnet18"]), num_classes=10)
    (group,) = param_groups(model, 1e-4, no_bias_decay=False)
    assert len(group["params"]) == len(list(model.parameters())) and group["weight_decay"] == 1e-4
    assert [g["weight_decay"] for g in param_groups(model, 1e-4, no_bias_decay=True)] == [1e-4, 0.0]


def test_resumed_optimizer_keeps_its_own_step_implementation():
    """load_optimizer_state: the momentum buffers come from the checkpoint, the fused/foreach
    choice stays this run's (a CPU checkpoint would otherwise take a GPU run off the fused step)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    saved = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)
    model(torch.randn(4, 3)).sum().backward()
    saved.step()
    here = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, foreach=False)
    assert not use_fused(model)  # a CPU model takes torch's default step
    state = saved.state_dict()
    state["param_groups"][0]["fused"] = True  # as a GPU run writes it
    load_optimizer_state(here, state)
    assert here.param_groups[0]["foreach"] is False and here.param_groups[0].get("fused") is None
    assert here.param_groups[0]["lr"] == 0.1  # the rest of the group is the checkpoint's
    for p in model.parameters():
        assert torch.equal(here.state[p]["momentum_buffer"], saved.state[p]["momentum_buffer"])


# ---------------------------------------------------------------- label smoothing

def test_smoothing_forms_match_the_text_and_the_code():
    labels = torch.tensor([2, 0])
    paper = smooth_targets(labels, 5, 0.1, "paper")
    assert paper[0].tolist() == pytest.approx([0.025, 0.025, 0.9, 0.025, 0.025])  # eps / (K - 1)
    uniform = smooth_targets(labels, 5, 0.1, "uniform")
    assert uniform[1].tolist() == pytest.approx([0.92, 0.02, 0.02, 0.02, 0.02])  # 1 - eps + eps / K
    assert paper.sum(1).tolist() == pytest.approx([1, 1]) and uniform.sum(1).tolist() == pytest.approx([1, 1])
    with pytest.raises(ValueError, match="unknown smoothing form 'text'"):
        smooth_targets(labels, 5, 0.1, "text")


def test_uniform_smoothing_equals_torch_label_smoothing():
    logits, labels = torch.randn(8, 7), torch.randint(0, 7, (8,))
    ours = soft_cross_entropy(logits, smooth_targets(labels, 7, 0.1, "uniform"))
    assert ours.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item(), rel=1e-6)


def test_soft_cross_entropy_hand_computed():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    target = torch.tensor([[0.1, 0.2, 0.7]])
    log_z = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    want = -(0.1 * (1 - log_z) + 0.2 * (2 - log_z) + 0.7 * (3 - log_z))
    assert soft_cross_entropy(logits, target).item() == pytest.approx(want)


# ---------------------------------------------------------------- mixup

def test_mixup_mixes_with_the_reversed_batch_for_odd_sizes():
    x = torch.arange(3.0).view(3, 1, 1, 1)
    t = torch.eye(4)[:3]  # 4 classes: flipping the classes instead of the batch would not match
    mx, mt = mixup(x, t, 0.7)
    assert mx.flatten().tolist() == pytest.approx([0.7 * 0 + 0.3 * 2, 1.0, 0.7 * 2 + 0.3 * 0])
    assert mt[0].tolist() == pytest.approx([0.7, 0, 0.3, 0]) and mt[1].tolist() == pytest.approx([0, 1, 0, 0])


def test_mixup_lambda_is_beta_and_repeatable():
    lams = np.array([mixup_lambda(0, s, 0.2) for s in range(4000)])
    assert mixup_lambda(0, 5, 0.2) == mixup_lambda(0, 5, 0.2) != mixup_lambda(1, 5, 0.2)
    # Beta(0.2, 0.2): mean 1/2, variance a^2 / ((2a)^2 (2a + 1)) = 1 / (4 * 1.4)
    assert lams.mean() == pytest.approx(0.5, abs=0.03) and lams.var() == pytest.approx(1 / 5.6, abs=0.02)


def test_objective_mixes_smoothed_targets_and_stops_in_the_last_epochs():
    cfg = config.load(None, ["loss.mixup_alpha=0.2", "loss.label_smoothing=0.1", "loss.smoothing_form=paper",
                             "schedule.epochs=10", "loss.mixup_off_epochs=2"])
    obj = Objective(cfg, num_classes=4, micro_batch=4)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    lam = mixup_lambda(0, 11, 0.2)
    mx, mt = obj.prepare(x, y, step=11, epoch=7)
    smooth = smooth_targets(y, 4, 0.1, "paper")
    assert torch.allclose(mt, lam * smooth + (1 - lam) * smooth.flip(0))
    assert torch.allclose(mx, lam * x + (1 - lam) * x.flip(0))
    px, pt = obj.prepare(x, y, step=11, epoch=8)  # mixup_off_epochs = 2 of 10
    assert torch.equal(px, x) and torch.allclose(pt, smooth)


def test_mixup_needs_two_images_per_micro_batch():
    cfg = config.load(None, ["loss.mixup_alpha=0.2"])
    with pytest.raises(Exception, match="mixup_alpha needs at least 2 images"):
        Objective(cfg, num_classes=4, micro_batch=1)


# ---------------------------------------------------------------- distillation

def test_distillation_loss_hand_computed():
    z = torch.tensor([[1.0, 0.0, -1.0]])  # student
    r = torch.tensor([[0.0, 2.0, 0.5]])  # teacher: not symmetric about the student's, which would hide r's scale
    T, w = 3.0, 0.5  # T = 2 would not tell T^2 from 2T
    p_r = torch.softmax(r / T, -1)
    log_q = torch.log_softmax(z / T, -1)
    want_soft = T * T * -(p_r * log_q).sum()
    assert distillation_term(z, r, T).item() == pytest.approx(want_soft.item())

    class Teacher(torch.nn.Module):
        def forward(self, x):
            return r.expand(len(x), -1)

    cfg = config.load(None, [f"loss.distill_temperature={T}", f"loss.distill_hard_weight={w}"])
    obj = Objective(cfg, num_classes=3, micro_batch=1, teacher=Teacher())
    targets = smooth_targets(torch.tensor([0]), 3, 0.0, "uniform")
    hard = -torch.log_softmax(z, -1)[0, 0]
    assert obj.loss(z, targets, torch.zeros(1, 3, 4, 4)).item() == pytest.approx((w * hard + (1 - w) * want_soft).item())


def test_distillation_in_the_papers_form_is_equation_6():
    """loss = CE(p, softmax(z)) + T^2 CE(softmax(r / T), softmax(z / T)) (section 5.3, eq. 6), each
    cross-entropy written out as -sum(target * log(prediction)) over the classes."""
    import math

    z, r, T = [1.0, 0.0, -1.0], [0.0, 2.0, 0.5], 3.0  # student and teacher logits; T = 2 would hide T^2 vs 2T
    p = [1.0, 0.0, 0.0]  # the true label, class 0, no smoothing

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    def ce(target, prediction):
        return -sum(t * math.log(q) for t, q in zip(target, prediction))

    eq6 = ce(p, softmax(z)) + T ** 2 * ce(softmax([x / T for x in r]), softmax([x / T for x in z]))

    class Teacher(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([r]).expand(len(x), -1)

    cfg = config.load(None, [f"loss.distill_temperature={T}", "loss.distill_form=paper"])
    obj = Objective(cfg, num_classes=3, micro_batch=1, teacher=Teacher())
    targets = smooth_targets(torch.tensor([0]), 3, 0.0, "uniform")
    assert obj.loss(torch.tensor([z]), targets, torch.zeros(1, 3, 4, 4)).item() == pytest.approx(eq6, rel=1e-6)
    with pytest.raises(UserError, match="loss.distill_hard_weight: weighs the weighted form"):
        config.load(None, ["loss.distill_form=paper", "loss.distill_hard_weight=0.3"])
