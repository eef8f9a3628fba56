"""schedule.kind=batch_growth (Smith et al., ICLR 2018): the batch grows where step decay would
divide the lr. Closed forms of the plan and the lr, the grown step against one large batch,
bad input, and an end-to-end run resumed across a milestone."""

import json

import pytest
import torch
from conftest import OneProcess

from bot import config
from bot.errors import UserError
from bot.models import build_model
from bot.train.schedule import build_plan, build_schedule, growth_after
from bot.train.trainer import build_step, train


def load(*extra):
    return config.load(None, ["schedule.kind=batch_growth", *extra])


# ---------------------------------------------------------------- closed forms


def test_growth_is_x10_per_milestone_up_to_the_limit_then_the_lr_takes_the_rest():
    assert [growth_after(n, 1, None) for n in range(4)] == [(1, 1.0), (10, 1.0), (100, 1.0), (1000, 1.0)]
    assert [growth_after(n, 2, 200) for n in range(4)] == [(1, 1.0), (10, 1.0), (100, 1.0), (100, 0.1)]
    # a limit between powers of 10: x4, and the lr takes 10 / 4 at the same milestone
    assert [growth_after(n, 2, 8) for n in range(3)] == [(1, 1.0), (4, 0.4), (4, 0.04)]


def test_steps_per_epoch_and_lr_at_every_step_in_closed_form():
    # 1000 batches of 512 per epoch; milestones 30/60/90; accumulation 2, at most 200 micro-batches
    cfg = load("data.batch_size=512", "data.accumulate=2", "data.accumulate_max=200")
    plan, lr = build_plan(cfg, 1000), build_schedule(cfg, 1000)
    assert [plan.steps_in(e) for e in (0, 29, 30, 59, 60, 89, 90, 119)] == [1000] * 2 + [100] * 2 + [10] * 4
    ends = [30 * 1000, 30 * 1000 + 30 * 100, 30 * 1000 + 30 * 100 + 30 * 10]
    assert plan.total_steps == ends[2] + 30 * 10
    assert [plan.first_step(e) for e in (30, 60, 90, 120)] == [*ends, plan.total_steps]
    peak = 0.1 * 512 / 256  # linear scaling by the batch before it grows
    for step in range(0, plan.total_steps, 7):
        assert lr(step) == pytest.approx(peak * (0.1 if step >= ends[2] else 1.0)), step
    assert lr(ends[2] - 1) == pytest.approx(peak) and lr(ends[2]) == pytest.approx(peak / 10)
    # images: the batch x the growth of each step, the same 1000 x 512 in every epoch but the dropped tails
    assert plan.images(plan.total_steps, 512) == plan.images(plan.total_steps + 5, 512) == 120 * 1000 * 512
    assert plan.epoch_of(ends[0] + 50) == pytest.approx(30.5) and plan.epoch_of(plan.total_steps) == 120
    assert plan.epoch_of(ends[0] - 500) == pytest.approx(29.5)  # the last epoch before a milestone


def test_warmup_stays_per_step_and_a_tail_that_does_not_fill_a_grown_step_is_dropped():
    cfg = load("schedule.warmup_epochs=2", "schedule.milestones=[5]", "schedule.epochs=10")
    plan, lr = build_plan(cfg, 25), build_schedule(cfg, 25)
    assert [plan.steps_in(e) for e in (4, 5)] == [25, 2] and plan.total_steps == 5 * 25 + 5 * 2
    assert [lr(s) for s in (0, 49, 50, 124, 125, 134)] == pytest.approx([0.1 / 50, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert plan.images(126, 256) == 125 * 256 + 10 * 256


def test_step_and_cosine_plans_are_one_batch_per_step():
    plan = build_plan(config.load(None, ["schedule.epochs=3"]), 7)
    assert plan.growth == (1, 1, 1) and plan.total_steps == 21 and plan.first_step(2) == 14


@pytest.mark.parametrize("extra, message", [
    (["data.accumulate=4", "data.accumulate_max=2"], "data.accumulate_max: must be at least data.accumulate (4)"),
    (["schedule.kind=step", "data.accumulate_max=8"], "data.accumulate_max: limits schedule.kind=batch_growth"),
    (["schedule.warmup_epochs=40"], "schedule.warmup_epochs: must end by the first milestone ([30])"),
])
def test_bad_growth_settings_are_one_line(extra, message):
    with pytest.raises(UserError) as e:
        load(*extra)
    assert str(e.value).startswith(message), e.value


# ---------------------------------------------------------------- the step


def test_a_grown_step_is_one_step_on_the_batches_joined():
    """Two loader batches of 8 with accumulate 2 == one batch of 16 with accumulate 4: the same
    micro-batches, the same loss scale, so the same weights bit for bit."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 4, (16,))
    after = []
    for accumulate, batches in ((2, [(x[:8], y[:8]), (x[8:], y[8:])]), (4, [(x, y)])):
        cfg = config.load(None, ["model.arch=resnet18", "model.variant=D", "model.width=0.25", "data.batch_size=16",
                                 f"data.accumulate={accumulate}",
                                 "data.pca_lighting=0", "loss.label_smoothing=0.1"])
        torch.manual_seed(1)
        model = build_model(cfg, 4)
        step = build_step(cfg, model, OneProcess(), 4, len(batches[0][0]), steps_per_epoch=10)
        (images, labels), *more = batches
        loss = step(images, labels, 0, 0, more)
        after.append((loss, model.state_dict()))
    (la, a), (lb, b) = after
    assert torch.equal(la, lb)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- end to end

SMALL = ["data.backend=torch", "data.image_size=16", "data.batch_size=16", "data.workers=0", "model.arch=resnet18",
         "model.variant=D", "model.width=0.25", "schedule.epochs=2", "schedule.milestones=[1]",
         "schedule.kind=batch_growth", "data.accumulate_max=2", "run.log_every=1", "run.checkpoint_every=1000"]


def small(toy, out, *extra):
    return config.load(None, [f"data.root={toy}", f"run.out={out}", *SMALL, *extra])


def train_lines(folder):
    return [r for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_resume_across_a_milestone_matches_an_uninterrupted_run(toy, tmp_path):
    """96 images, batches of 16: 6 steps in epoch 0, then 3 steps of 2 batches (lr x 0.2)."""
    whole = train(small(toy, tmp_path / "whole"))
    assert whole["steps"] == 9 and whole["epochs"] == 2
    lines = train_lines(tmp_path / "whole")
    assert [(r["step"], r["epoch"]) for r in lines] == [(s, 0) for s in range(1, 7)] + [(s, 1) for s in (7, 8, 9)]
    assert [r["lr"] for r in lines] == pytest.approx([0.1 * 16 / 256] * 6 + [0.2 * 0.1 * 16 / 256] * 3)
    assert train(small(toy, tmp_path / "part", "run.max_steps=7"))["steps"] == 7  # one grown step past the milestone
    again = train(small(toy, tmp_path / "part"))
    assert again["steps"] == 9 and [r["step"] for r in train_lines(tmp_path / "part")] == list(range(1, 10))
    a = torch.load(tmp_path / "whole/last.pt", weights_only=False)
    b = torch.load(tmp_path / "part/last.pt", weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert again["top1"] == whole["top1"]


def test_a_batch_grown_past_an_epoch_is_one_line(toy, tmp_path):
    with pytest.raises(UserError, match="grows the batch past the 6 batches of an epoch"):
        train(small(toy, tmp_path / "run", "data.accumulate_max=null"))
    assert not (tmp_path / "run").exists()
    # a run capped before those epochs (a smoke run of the recipe) is not refused
    assert train(small(toy, tmp_path / "capped", "data.accumulate_max=null", "run.max_steps=1"))["steps"] == 1
