"""The networks: the paper's ResNet-A/B/C/D (resnet.py, on timm's ResNet), Inception-V3 and
MobileNet v1 (other.py), gluon-cv's CIFAR ResNets and WideResNets (cifar.py), their activations and initialisation, how to count their parameters
and multiply-adds, and which channels network slimming may remove (slimmable.py).

Built from the config alone; nothing here trains, reads files or downloads weights.
"""

from bot.models.activations import ACTIVATIONS
from bot.models.build import build_model, network_name
from bot.models.measure import count_params_macs
from bot.models.resnet import ARCHS, VARIANTS, widths

__all__ = ["ACTIVATIONS", "ARCHS", "VARIANTS", "build_model", "count_params_macs", "network_name", "widths"]
