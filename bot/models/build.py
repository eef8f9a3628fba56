"""`build_model(cfg)`: the network `cfg.model` names, initialised as it says."""

from __future__ import annotations

from torch import nn

from bot.models.cifar import CIFAR_ARCHS, build_cifar
from bot.models.other import OTHER_ARCHS, build_other
from bot.models.resnet import ARCHS, build_resnet


def build_model(cfg, num_classes: int = 1000) -> nn.Module:
    """A ResNet of `ARCHS` in variant `cfg.model.variant` (bot/models/resnet.py), or Inception-V3 /
    MobileNet v1 of Tables 2 and 6 (bot/models/other.py), or gluon-cv's CIFAR networks
    (bot/models/cifar.py). No weights are ever downloaded."""
    if cfg.model.arch in ARCHS:
        return build_resnet(cfg, num_classes)
    if cfg.model.arch in OTHER_ARCHS:
        return build_other(cfg, num_classes)
    if cfg.model.arch in CIFAR_ARCHS:
        return build_cifar(cfg, num_classes)
    raise ValueError(f"unknown model.arch {cfg.model.arch!r}")  # config.py rejects it first


def network_name(model_cfg) -> str:
    """The network as logs and messages name it: resnet50-D, inception_v3, cifar_resnet20_v1 (a
    variant is a ResNet's only)."""
    return "-".join(filter(None, (model_cfg.arch, model_cfg.variant)))
