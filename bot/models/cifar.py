"""gluon-cv's CIFAR networks (32 x 32 images), as gluon-cv:gluoncv/model_zoo/cifarresnet.py and
cifarwideresnet.py define them, so that parameters and outputs are those of its CIFAR model zoo.

  cifar_resnet{20,56,110}_v1  He et al. 2016: a 3x3 conv of 16 channels and its BN (gluon-cv puts
                              no ReLU after them), three stages of n = (depth - 2) / 6 post-activation
                              basic blocks of 16, 32 and 64 channels (stride 2 into stages 2 and 3,
                              whose first block has a 1x1 conv + BN projection shortcut), global
                              average pooling, the classifier.
  cifar_resnet{20,56,110}_v2  He et al. 2016b, pre-activation: a BN without scale or shift on the
                              input image, the 3x3 conv, blocks BN-ReLU-conv-BN-ReLU-conv whose 1x1
                              projection shortcut (no BN) takes the block's raw input, then BN-ReLU,
                              pooling, the classifier.
  cifar_wrn{16_10,28_10,40_8} Zagoruyko and Komodakis 2016, gluon-cv's CIFARWideResNet: v2's stem
                              plus a BN after its conv, n = (depth - 4) / 6 pre-activation blocks of
                              16k, 32k, 64k channels whose projection takes the block's pre-activated
                              input (the first stage's too: 16 -> 16k channels), then BN-ReLU, pooling,
                              the classifier. gluon-cv's dropout rate defaults to 0, as every run of
                              its model zoo trained, so no dropout is built.
BN momentum and epsilon are MXNet's defaults, torch's too (MXNet's momentum 0.9 is torch's 0.1;
1e-5). `model.act` replaces every ReLU, as for the other networks. Parameters and multiply-adds of
each, derived from gluon-cv's definitions: tests/test_cifar.py, TABLE.

The tricks: `model.init=xavier` is also gluon-cv's CIFAR scripts' init (mx.init.Xavier(): uniform,
bound sqrt(6 / (fan_in + fan_out)), no grouped convs here); `kaiming` is the networks' own, set
below as timm's ResNet sets it. No bias decay picks weights by module type (bot/train/optim.py).
Zero gamma: see `branch_ends`.
"""

from __future__ import annotations

from torch import nn

from bot.models.activations import ACTIVATIONS
from bot.models.init import init_weights


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


class BlockV1(nn.Module):
    """gluon-cv's CIFARBasicBlockV1: act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module]):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.act = act()
        self.downsample = None
        if cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(out + shortcut)


class BlockV2(nn.Module):
    """gluon-cv's pre-activation CIFARBasicBlockV2: conv2(act(bn2(conv1(act(bn1(x)))))) + shortcut.
    Its 1x1 projection takes the raw x in cifarresnet.py, the pre-activated act(bn1(x)) in
    cifarwideresnet.py (`project_preactivated`): the two files differ there."""

    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module], project_preactivated: bool = False):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), conv3x3(cout, cout)
        self.act = act()
        self.downsample = nn.Conv2d(cin, cout, 1, stride, bias=False) if cin != cout else None
        self.project_preactivated = project_preactivated

    def forward(self, x):
        pre = self.act(self.bn1(x))
        out = self.conv2(self.act(self.bn2(self.conv1(pre))))
        if self.downsample is None:
            return out + x
        return out + self.downsample(pre if self.project_preactivated else x)


class CifarNet(nn.Module):
    """stem, three stages of blocks, head (`tail`: the pre-activation networks' last BN-act), pooling, fc."""

    def __init__(self, stem: list[nn.Module], stages: list[nn.Sequential], tail: list[nn.Module], width: int,
                 num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(*stem)
        self.layer1, self.layer2, self.layer3 = stages
        self.tail = nn.Sequential(*tail)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        for m in self.modules():  # `model.init=kaiming`: timm's ResNet init (convs; BN 1, 0; fc torch's)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.tail(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.pool(x).flatten(1))


def stages(block, widths: list[int], blocks: int, cin: int, **kwargs) -> list[nn.Sequential]:
    """Three stages of `blocks` blocks; stride 2 into the second and third (32, 16, 8 px)."""
    out = []
    for i, width in enumerate(widths):
        out.append(nn.Sequential(*(block(cin if j == 0 else width, width, 2 if i and j == 0 else 1, **kwargs)
                                   for j in range(blocks))))
        cin = width
    return out


def cifar_resnet(depth: int, version: int, num_classes: int, act: type[nn.Module] = nn.ReLU) -> CifarNet:
    """gluon-cv's get_cifar_resnet(version, depth): depth = 6n + 2."""
    n, widths = (depth - 2) // 6, [16, 32, 64]
    if version == 1:
        return CifarNet([conv3x3(3, 16), nn.BatchNorm2d(16)], stages(BlockV1, widths, n, 16, act=act), [], 64,
                        num_classes)
    return CifarNet([nn.BatchNorm2d(3, affine=False), conv3x3(3, 16)], stages(BlockV2, widths, n, 16, act=act),
                    [nn.BatchNorm2d(64), act()], 64, num_classes)


def cifar_wrn(depth: int, k: int, num_classes: int, act: type[nn.Module] = nn.ReLU) -> CifarNet:
    """gluon-cv's get_cifar_wide_resnet(depth, k): depth = 6n + 4."""
    n, widths = (depth - 4) // 6, [16 * k, 32 * k, 64 * k]
    return CifarNet([nn.BatchNorm2d(3, affine=False), conv3x3(3, 16), nn.BatchNorm2d(16)],
                    stages(BlockV2, widths, n, 16, act=act, project_preactivated=True),
                    [nn.BatchNorm2d(64 * k), act()], 64 * k, num_classes)


# arch -> (builder, depth, version or widening factor)
CIFAR_ARCHS = {
    "cifar_resnet20_v1": (cifar_resnet, 20, 1), "cifar_resnet56_v1": (cifar_resnet, 56, 1),
    "cifar_resnet110_v1": (cifar_resnet, 110, 1), "cifar_resnet20_v2": (cifar_resnet, 20, 2),
    "cifar_resnet56_v2": (cifar_resnet, 56, 2), "cifar_resnet110_v2": (cifar_resnet, 110, 2),
    "cifar_wrn16_10": (cifar_wrn, 16, 10), "cifar_wrn28_10": (cifar_wrn, 28, 10), "cifar_wrn40_8": (cifar_wrn, 40, 8),
}


def branch_ends(model: nn.Module) -> list[nn.Module]:
    """What zero gamma (section 3.1) zeroes so that every residual block starts as its shortcut:
    bn2's gamma in a v1 block, conv2's weights in a pre-activation block (v2, WRN), whose branch
    ends in that conv. Zeroing bn2 there instead (gluon-cv's ImageNet BasicBlockV2 `last_gamma`)
    feeds the ReLU exact zeros, whose gradient is 0: the branch would never leave 0."""
    return [m.bn2 if isinstance(m, BlockV1) else m.conv2 for m in model.modules() if isinstance(m, (BlockV1, BlockV2))]


def build_cifar(cfg, num_classes: int) -> nn.Module:
    """`cfg.model.arch` of CIFAR_ARCHS, initialised as `cfg.model` says."""
    builder, depth, arg = CIFAR_ARCHS[cfg.model.arch]
    model = builder(depth, arg, num_classes, ACTIVATIONS[cfg.model.act])
    init_weights(model, cfg.model.init)
    if cfg.model.zero_gamma:
        for m in branch_ends(model):
            nn.init.zeros_(m.weight)
    return model
