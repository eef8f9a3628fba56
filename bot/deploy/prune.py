"""Network slimming (Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017): an L1 penalty on BatchNorm scales during training, then the channels
with the smallest |gamma| are removed for real (narrower convs, not masks).

Which channels: the inner channels of every residual block (BasicBlock: conv1/bn1;
Bottleneck: conv1/bn1 and conv2/bn2), the penalty's BNs and the pruner's alike. Not the
channels of a residual sum: one such channel runs through every block of a stage and its
shortcut, so the gammas of the BNs ending the branches do not measure it (a channel whose
branch gammas are all 0 still carries the stage's input through the identity), and with
zero gamma (section 3.1) those BNs start at 0 anyway. Liu et al. likewise prune ResNets
inside the blocks only (their section 4, channel selection before each block's convs).
torch-pruning would couple a residual channel with the whole stage into one group; here its
dependency graph does the surgery of the inner channels (the conv, its BN, the next conv's
input), and the selection is Liu et al.'s: one global threshold on |gamma| over all of them.
"""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn


def slimmed_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, the BN after it) for every inner channel set of the ResNet's blocks, in order."""
    pairs = []
    for block in model.modules():
        if isinstance(block, Bottleneck):
            pairs += [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        elif isinstance(block, BasicBlock):
            pairs.append((block.conv1, block.bn1))
    return pairs


class SlimL1:
    """The training objective plus lambda * sum |gamma| over the slimmed BNs. Its gradient on
    each gamma is lambda * sign(gamma) (0 at 0) on top of the loss's: Liu et al.'s subgradient,
    separate from weight decay (which no_bias_decay keeps off BN). Resolved before the loop:
    the training step calls `prepare` and `loss` as for any objective."""

    def __init__(self, objective, model: nn.Module, lam: float):
        self.objective, self.lam = objective, lam
        self.gammas = [bn.weight for _, bn in slimmed_pairs(model)]

    def prepare(self, *args, **kwargs):
        return self.objective.prepare(*args, **kwargs)

    def penalty(self) -> torch.Tensor:
        return self.lam * sum(g.abs().sum() for g in self.gammas)

    def loss(self, *args, **kwargs) -> torch.Tensor:
        return self.objective.loss(*args, **kwargs) + self.penalty()


def with_slim_l1(objective, model: nn.Module, lam: float):
    """`objective` with the slimming penalty when `lam` > 0 (model.slim_l1)."""
    return SlimL1(objective, model, lam) if lam > 0 else objective


def choose_channels(model: nn.Module, ratio: float, round_to: int = 1) -> list[list[int]]:
    """For each slimmed pair, the channel indices to remove: the `ratio` share of all their
    channels with the smallest |gamma| (one global ranking; ties go to the earlier layer),
    but every layer keeps at least its largest channel, and, with `round_to`, a multiple of
    it (or all it had): CPU and GPU kernels run channel counts like 37 slower than 40, so a
    layer then keeps its round_to-rounded count's largest gammas and fewer are removed."""
    pairs = slimmed_pairs(model)
    gammas = [bn.weight.detach().abs().float() for _, bn in pairs]
    flat = torch.cat(gammas)
    owner = torch.cat([torch.full((len(g),), i) for i, g in enumerate(gammas)])
    order = torch.argsort(flat, stable=True)[: int(round(ratio * len(flat)))]
    starts = torch.tensor([0] + [len(g) for g in gammas]).cumsum(0)
    chosen = [[] for _ in pairs]
    for index in order.tolist():
        layer = int(owner[index])
        chosen[layer].append(index - int(starts[layer]))
    for layer, g in enumerate(gammas):
        kept = max(1, len(g) - len(chosen[layer]))
        kept = min(len(g), -(-kept // round_to) * round_to)
        by_gamma = sorted(chosen[layer], key=lambda i: (g[i].item(), i))  # the smallest stay chosen
        chosen[layer] = by_gamma[: len(g) - kept]
    return [sorted(c) for c in chosen]


def prune(model: nn.Module, ratio: float, image_size: int, round_to: int = 1) -> list[tuple[int, int]]:
    """Remove the channels `choose_channels` picks from `model` in place (eval mode);
    returns (channels before, after) per slimmed pair."""
    import torch_pruning as tp

    model.eval()
    pairs = slimmed_pairs(model)
    before = [conv.out_channels for conv, _ in pairs]
    chosen = choose_channels(model, ratio, round_to)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 3, image_size, image_size))
    for (conv, _), idxs in zip(pairs, chosen):
        if idxs:
            graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=idxs).prune()
    return [(b, conv.out_channels) for b, (conv, _) in zip(before, pairs)]


def _resized(param: torch.Tensor, shape) -> torch.Tensor:
    """`param` cut (or zero-padded) to `shape`: cutting keeps the model's own initialisation."""
    out = torch.zeros(shape, dtype=param.dtype, device=param.device)
    common = tuple(slice(0, min(a, b)) for a, b in zip(param.shape, shape))
    out[common] = param.detach()[common]
    return out


def fit_shapes(model: nn.Module, weights: dict) -> None:
    """Give `model`'s convs, BNs and classifier input the channel counts of state_dict
    `weights` (a slimmed checkpoint), in place; kernels, strides and the classes are not
    changed, so any other difference still fails in load_state_dict. A no-op for a
    checkpoint of the full network."""
    for name, m in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if key not in weights or not isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            continue
        shape = tuple(weights[key].shape)
        if isinstance(m, nn.Linear):
            shape = (m.out_features, shape[1])  # the classes are this model's (fine-tuning may change them)
        if shape == tuple(m.weight.shape) or len(shape) != m.weight.dim():
            continue
        if isinstance(m, nn.Conv2d):
            if shape[2:] != tuple(m.weight.shape[2:]):
                continue
            m.out_channels, m.in_channels = shape[0], shape[1] * m.groups
        elif isinstance(m, nn.BatchNorm2d):
            m.num_features = shape[0]
            for buf in ("running_mean", "running_var"):
                setattr(m, buf, _resized(getattr(m, buf), shape))
        else:
            m.in_features = shape[1]
        m.weight = nn.Parameter(_resized(m.weight, shape))
        if getattr(m, "bias", None) is not None and m.bias.shape[0] != shape[0]:
            m.bias = nn.Parameter(_resized(m.bias, shape[:1]))
