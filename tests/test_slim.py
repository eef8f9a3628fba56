"""Network slimming: model.slim_l1's penalty, scripts/slim.py's pruning, and the slimmed
checkpoint read back by fine-tuning, evaluate and export."""

import json

import pytest
import torch
from conftest import ROOT, run_here

from bot import config
from bot.export.prune import choose_channels, prune
from bot.errors import UserError
from bot.models import build_model, count_params_macs
from bot.models.slimmable import fit_shapes, slimmed_pairs
from bot.train.losses import Objective
from bot.train.slim_penalty import with_slim_l1


def resnet(arch="resnet18", variant="D", **extra):
    cfg = config.load(ROOT / "recipes/demo.yaml", [f"model.arch={arch}", f"model.variant={variant}"]
                      + [f"{k}={v}" for k, v in extra.items()])
    torch.manual_seed(0)
    return cfg, build_model(cfg, num_classes=5)


def trained_like(model):
    """BN statistics, gammas and betas as after training (not the init's 1 and 0)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.2, 1.0), m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def test_penalty_adds_lambda_sign_gamma_to_the_gradient():
    cfg, model = resnet(**{"model.slim_l1": 0.01})
    trained_like(model).train()
    gammas = [bn.weight for _, bn in slimmed_pairs(model)]
    gammas[0].data[:5] = 0.0  # sign(0) = 0: no push at exactly zero
    gammas[1].data[:5] *= -1
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    def grads(lam):
        model.zero_grad()
        objective = with_slim_l1(Objective(cfg, 5, 4), model, lam)
        inputs, targets = objective.prepare(x, y, 0, 0)
        torch.manual_seed(1)
        objective.loss(model(inputs), targets, inputs).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, slim = grads(0.0), grads(0.01)
    slimmed = {id(g) for g in gammas}
    for name, p in model.named_parameters():
        expected = plain[name] + (0.01 * torch.sign(p.detach()) if id(p) in slimmed else 0)
        torch.testing.assert_close(slim[name], expected, rtol=1e-5, atol=1e-7)
    assert (0.01 * torch.sign(gammas[0].detach()))[:5].eq(0).all()


def test_slim_l1_is_for_resnets_and_not_negative():
    with pytest.raises(UserError, match="model.slim_l1"):
        config.load(ROOT / "recipes/demo.yaml", ["model.arch=mobilenet_v1", "model.variant=null",
                                                  "model.zero_gamma=false", "model.slim_l1=1e-4"])
    with pytest.raises(UserError, match="model.slim_l1"):
        config.load(ROOT / "recipes/demo.yaml", ["model.slim_l1=-1"])


def test_pruning_removes_the_smallest_gammas_globally():
    """A quarter of every in-block layer's gammas are tiny: ratio 0.25 removes exactly those."""
    cfg, model = resnet()
    trained_like(model)
    tiny = {}
    for conv, bn in slimmed_pairs(model):
        n = bn.num_features
        idx = torch.randperm(n)[: n // 4]
        bn.weight.data[idx] = 1e-4 * torch.rand(len(idx))
        tiny[conv] = n - len(idx)
    params, macs = count_params_macs(model, 32)
    counts = prune(model, 0.25, 32)
    assert [after for _, after in counts] == [tiny[conv] for conv, _ in slimmed_pairs(model)]
    assert all(bn.weight.abs().min() >= 0.2 for _, bn in slimmed_pairs(model))  # only the tiny ones went
    new_params, new_macs = count_params_macs(model, 32)
    assert new_params < params and new_macs < macs
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("variant", ["A", "B", "C", "D"])
def test_pruned_network_computes_the_same_when_its_pruned_channels_were_zero(variant):
    """Bottleneck ResNet-50 in each variant: channels whose gamma is 0 and beta <= 0 output 0
    after the ReLU, so removing them changes nothing. (A channel with beta > 0 would pass a
    constant that pruning drops, as in Liu et al.; fine-tuning recovers it.)"""
    cfg, model = resnet("resnet50", variant)
    trained_like(model)
    pairs = slimmed_pairs(model)
    for _, bn in pairs:
        idx = torch.randperm(bn.num_features)[: int(0.3 * bn.num_features)]
        bn.weight.data[idx], bn.bias.data[idx] = 0.0, -0.05
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    counts = prune(model, sum(int(0.3 * bn.num_features) for _, bn in pairs) / sum(b.num_features for _, b in pairs), 32)
    assert all(after == before_n - int(0.3 * before_n) for before_n, after in counts)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)


def test_fit_shapes_rebuilds_a_slimmed_state_dict():
    cfg, model = resnet()
    trained_like(model)
    prune(model, 0.3, 32)
    state = model.state_dict()
    _, fresh = resnet()
    fit_shapes(fresh, state)
    fresh.load_state_dict(state)  # strict: every shape fits
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x))


TRAIN = ["data.backend=torch", "data.image_size=32", "data.batch_size=16", "data.workers=0",
         "schedule.epochs=2", "schedule.warmup_epochs=0", "run.log_every=1"]


def test_slim_cli_writes_a_checkpoint_that_fine_tunes_evaluates_and_exports(toy, tmp_path):
    run = tmp_path / "run"
    done = run_here("train.py", "recipes/demo.yaml", f"data.root={toy}", f"run.out={run}", "model.slim_l1=1e-4", *TRAIN,
                    "run.max_steps=3")
    assert done.returncode == 0, done.stderr[-2000:]
    slim = run_here("scripts/slim.py", run, "--ratio", "0.3", "--out", tmp_path / "slim")
    assert slim.returncode == 0, slim.stderr[-2000:]
    info = json.loads((tmp_path / "slim" / "slim.json").read_text())
    kept = sum(after for _, after in info["channels"].values())
    total = sum(before for before, _ in info["channels"].values())
    assert kept == total - round(0.3 * total)
    assert info["params"][1] < info["params"][0] and info["macs"][1] < info["macs"][0]
    tuned = tmp_path / "tuned"
    done = run_here("train.py", "recipes/demo.yaml", f"data.root={toy}", f"run.out={tuned}",
                    f"model.init_from={tmp_path / 'slim' / 'best.pt'}", *TRAIN[:-3], "schedule.epochs=1",
                    "schedule.warmup_epochs=0", "run.log_every=1", "run.max_steps=2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tuned / "summary.json").read_text())["params"] == info["params"][1]
    evaluated = run_here("scripts/evaluate.py", tuned)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    exported = run_here("scripts/export.py", tuned, "--format", "torchscript")
    assert exported.returncode == 0, exported.stderr[-2000:]


def test_round_to_keeps_a_multiple_of_it_in_every_layer_and_the_largest_gammas():
    cfg, model = resnet()
    trained_like(model)
    gammas = [bn.weight.detach().abs().clone() for _, bn in slimmed_pairs(model)]
    exact = choose_channels(model, 0.3)
    rounded = choose_channels(model, 0.3, round_to=8)
    for g, a, b in zip(gammas, exact, rounded):
        kept = len(g) - len(b)
        assert kept % 8 == 0 and kept >= len(g) - len(a)  # rounded up: never more removed
        assert set(b) <= set(a)  # a subset of the exact choice: its smallest gammas
        if b:
            assert g[b].max() <= g[sorted(set(range(len(g))) - set(b))].min()
    counts = prune(model, 0.3, 32, round_to=8)
    assert all(after % 8 == 0 for _, after in counts) and any(after < before for before, after in counts)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
