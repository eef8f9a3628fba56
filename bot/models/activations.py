"""`model.act`: the activation of every block and the stem (beyond the paper: ReLU, Swish/SiLU
or Mish), passed to timm's `act_layer`. Parameter-free modules, so parameters and MACs are
those of ReLU."""

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "mish": nn.Mish}
