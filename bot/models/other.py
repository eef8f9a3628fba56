"""The other networks of Tables 2 and 6: Inception-V3 and MobileNet v1 (width 1.0), from timm.

Both set up as the authors' gluon-cv networks, which produced the tables (README, "Three
networks"), and both take `model.act` through timm's act_layer, as the ResNets do:
  inception_v3  no auxiliary head (gluon-cv's Inception3 never builds one, so the paper's
                23.8 M parameters count none; torchvision's with the head: 27.2 M), dropout
                0.5 before the classifier and BN epsilon 1e-3, as gluon-cv (timm: no dropout).
  mobilenet_v1  `mobilenetv1_100` with ReLU, as gluon-cv's `mobilenet1.0` and the MobileNet
                paper (timm: ReLU6).
Zero gamma does not apply (no residual block: config.py rejects it). `model.init=kaiming`
keeps timm's own init. No weights are ever downloaded.
"""

from __future__ import annotations

import timm
from torch import nn

from bot.models.activations import ACTIVATIONS
from bot.models.init import init_weights

# arch -> (timm name, constructor kwargs that make it the authors' network)
OTHER_ARCHS = {
    "inception_v3": ("inception_v3", dict(aux_logits=False, drop_rate=0.5)),
    "mobilenet_v1": ("mobilenetv1_100", dict()),
}


def build_other(cfg, num_classes: int) -> nn.Module:
    """Inception-V3 or MobileNet v1 as `cfg.model` says (no zero gamma: config.py rejects it)."""
    name, kwargs = OTHER_ARCHS[cfg.model.arch]
    # every conv block of both networks; relu by default, where timm's MobileNet has ReLU6
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, act_layer=ACTIVATIONS[cfg.model.act],
                              **kwargs)
    init_weights(model, cfg.model.init)
    return model
