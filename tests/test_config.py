"""The typed config: strict keys and types, impossible values, recipes, overrides, CLI errors."""

import pytest
import yaml

from bot import config
from bot.errors import UserError
from conftest import ROOT, run_here


def test_defaults_are_the_paper_baseline():
    cfg = config.load(None)
    assert (cfg.model.arch, cfg.model.variant, cfg.model.init) == ("resnet50", "A", "xavier")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay) == (0.1, 0.9, True, 1e-4)
    assert (cfg.schedule.epochs, cfg.schedule.milestones, cfg.schedule.kind) == (120, [30, 60, 90], "step")
    assert cfg.data.random_area == [0.08, 1.0] and cfg.data.pca_lighting == 0.1
    assert (cfg.data.brightness, cfg.data.contrast, cfg.data.saturation, cfg.data.hue) == (0.4, 0.4, 0.4, 0.0)
    assert cfg.data.val_resize == 256 and cfg.data.batch_size == 256 and cfg.precision == "fp32"
    assert not (cfg.model.zero_gamma or cfg.optim.no_bias_decay) and cfg.loss.label_smoothing == 0


def test_val_resize_keeps_the_crop_ratio():
    assert config.load(None, ["data.image_size=112"]).data.val_resize == 128
    assert config.load(None, ["data.image_size=112", "data.val_resize=160"]).data.val_resize == 160


def test_overrides_parse_as_yaml():
    cfg = config.load(None, ["optim.lr=0.4", "schedule.milestones=[2, 4]", "model.zero_gamma=true",
                             "loss.distill_teacher=runs/t/best.pt", "run.max_steps=null", "schedule.warmup_epochs=5"])
    assert cfg.optim.lr == 0.4 and cfg.schedule.milestones == [2, 4] and cfg.model.zero_gamma is True
    assert cfg.loss.distill_teacher == "runs/t/best.pt" and cfg.run.max_steps is None
    assert cfg.schedule.warmup_epochs == 5.0 and isinstance(cfg.schedule.warmup_epochs, float)


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=0.1", "unknown config key: optim.lrr (did you mean optim.lr?)"),
    ("model.zero_gama=true", "did you mean model.zero_gamma?"),
    ("optimizer.lr=0.1", "unknown config key: optimizer"),
    ("optim.lr=fast", "optim.lr: expected float"),
    ("model.zero_gamma=1", "model.zero_gamma: expected bool"),
    ("schedule.epochs=1.5", "schedule.epochs: expected int"),
    ("model.variant=E", "model.variant: expected A | B | C | D"),
    ("data.random_area=0.5", "data.random_area: expected list of float"),
    ("optim.lr=-0.1", "optim.lr: must be positive"),
    ("schedule.epochs=0", "schedule.epochs: must be at least 1"),
    ("data.batch_size=0", "data.batch_size: must be at least 1"),
    ("data.random_area=[0.5, 0.1]", "data.random_area: must be [low, high]"),
    ("loss.label_smoothing=1.0", "loss.label_smoothing: must be in [0, 1)"),
    ("schedule.milestones=[60, 30]", "schedule.milestones: must be increasing"),
    ("optim", "must look like key.sub=value"),
    ("optim.lr=.inf", "optim.lr: expected a finite number, got inf"),  # above every lower bound
    ("loss.label_smoothing=.nan", "loss.label_smoothing: expected a finite number, got nan"),  # in no range at all
    ("optim={}", "override 'optim={}': set a section's keys one by one (optim.KEY=VALUE)"),  # reset the section
    ("optim={lr: 0.2}", "set a section's keys one by one"),
    ("run.checkpoint_every=0", "run.checkpoint_every: must be at least 1 step, got 0"),
    ("run.checkpoint_every=10m", "must be a number of steps or a positive wall time such as 10min, 30s or 1h"),
    ("run.checkpoint_every=0s", "must be a number of steps or a positive wall time"),
])
def test_bad_keys_types_and_values_name_the_key(override, message):
    with pytest.raises(UserError) as e:
        config.load(None, [override])
    assert message in str(e.value)


@pytest.mark.parametrize("overrides, message", [
    # the warmup a recipe sets (2.0) against the epochs a user shortened to 1: both values shown
    (["schedule.epochs=1", "schedule.warmup_epochs=2"],
     "schedule.warmup_epochs: must be in [0, schedule.epochs) = [0, 1), got 2.0"),
    (["schedule.epochs=3", "loss.mixup_off_epochs=5"], "must be in [0, schedule.epochs] = [0, 3], got 5"),
    (["data.image_size=64", "data.val_resize=48"], "data.val_resize: must be at least data.image_size (64), got 48"),
    (["optim.momentum=1.0"], "optim.momentum: must be in [0, 1), got 1.0"),
    (["optim.momentum=0", "optim.nesterov=true"], "optim.nesterov: needs optim.momentum > 0, got 0.0"),
    (["optim.weight_decay=-1e-4"], "must be 0 or more, got -0.0001"),
    (["data.hue=0.7"], "data.hue: must be in [0, 0.5], got 0.7"),
    (["data.brightness=1.5"], "data.brightness: must be in [0, 1] (factor in [1 - x, 1 + x]), got 1.5"),
    (["loss.cutmix_prob=2"], "loss.cutmix_prob: must be in [0, 1], got 2.0"),
    (["loss.distill_temperature=0"], "must be positive, got 0.0"),
    (["run.log_every=0"], "run.log_every: must be at least 1, got 0"),
    (["data.workers=-1"], "data.workers: must be 0 or more, got -1"),
])
def test_range_errors_show_the_values_they_compared(overrides, message):
    with pytest.raises(UserError) as e:
        config.load(None, overrides)
    assert message in str(e.value)


def test_base_inheritance_and_override_order(tmp_path):
    (tmp_path / "a.yaml").write_text("optim: {lr: 0.2, momentum: 0.8}\nmodel: {variant: B}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/b.yaml").write_text("base: ../a.yaml\noptim: {lr: 0.3}\n")
    cfg = config.load(tmp_path / "sub/b.yaml", ["optim.momentum=0.7"])
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.model.variant) == (0.3, 0.7, "B")
    assert cfg.run.out.endswith("b") and cfg.run.name == "b"


def test_base_cycle_and_missing_recipe(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(UserError, match="recipe base cycle: a.yaml -> b.yaml -> a.yaml"):
        config.load(tmp_path / "a.yaml")
    with pytest.raises(UserError, match="recipe not found"):
        config.load(tmp_path / "nope.yaml")


def test_resolved_config_round_trips():
    cfg = config.load(ROOT / "recipes/demo.yaml", ["optim.lr=0.3"])
    again = config.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_cli_prints_config_and_exits_2_with_one_line():
    ok = run_here("train.py", "recipes/demo.yaml", "optim.lr=0.3", "--print-config")
    assert ok.returncode == 0 and yaml.safe_load(ok.stdout)["optim"]["lr"] == 0.3
    bad = run_here("train.py", "recipes/demo.yaml", "optim.lrr=0.3")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: unknown config key: optim.lrr (did you mean optim.lr?)"
    missing = run_here("train.py", "recipes/nope.yaml")
    assert missing.returncode == 2 and "recipe not found: recipes/nope.yaml" in missing.stderr
