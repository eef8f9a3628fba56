"""The other networks of Tables 2 and 6: Inception-V3 and MobileNet v1 (width 1.0), from timm.

The paper evaluates its baseline (Table 2) and its refinements (Table 6) on ResNet-50(-D),
Inception-V3 and MobileNet. Both are timm's networks, set up as the authors' own (gluon-cv's
`inception_v3` and `mobilenet1.0`, which produced the tables):

  inception_v3  timm's `inception_v3`, 23.8 M parameters, 5.7 G multiply-adds at 299 px.
                No auxiliary head: gluon-cv's Inception3 builds none (its `make_aux` is never
                called), so the paper's figures come from the main classifier alone, and the
                published 23.8 M counts no head (torchvision's with the head: 27.2 M). Dropout
                0.5 before the classifier and BN epsilon 1e-3, as gluon-cv (timm: no dropout).
  mobilenet_v1  timm's `mobilenetv1_100`, 4.2 M parameters, 0.57 G multiply-adds at 224 px,
                with ReLU as gluon-cv's `mobilenet1.0` and the MobileNet paper (timm: ReLU6).
Both take `model.act` (relu | silu | mish) through timm's act_layer, as the ResNets do.

The tricks on these networks (the config rejects the ones that do not apply):
  zero gamma     does not apply: neither network has a residual block (timm builds MobileNet
                 v1's depthwise-separable blocks with no skip), so model.zero_gamma=true exits 2.
  no bias decay  by module type in bot/train/optim.py: every conv (depthwise ones included, as
                 gluon-cv decays them) and the classifier are decayed; BN and biases are not.
  Xavier init    bot/models/init.py's, whose fans count per group, so a depthwise filter gets the
                 bound of its own 3 x 3 x 1 connections.
  distillation   unchanged: the ResNet-152-D teacher sees the student's (mixed) batch, at the
                 student's resolution (299 px for Inception-V3), as in gluon-cv.
`model.init=msra` (the authors' code) counts fans as MXNet does, ungrouped (bot/models/init.py).
`model.init=kaiming` keeps timm's own init for the network (Inception-V3: truncated normal,
std 0.1; MobileNet: normal with std sqrt(2 / fan_out), fans per group).
No weights are ever downloaded.
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
    # model.act through timm's act_layer, as for the ResNets: every conv block of both networks
    # (relu by default: gluon-cv's and the MobileNet paper's, where timm's MobileNet has ReLU6)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, act_layer=ACTIVATIONS[cfg.model.act],
                              **kwargs)
    init_weights(model, cfg.model.init)
    return model
