"""Network slimming (Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017), its after-training half: after an L1 penalty on BatchNorm scales during
training (bot/train/slim_penalty.py), the channels with the smallest |gamma| are removed for
real (narrower convs, not masks).

The channels are bot/models/slimmable.py's, chosen by one global threshold on |gamma| (Liu
et al.'s); torch-pruning's dependency graph does the surgery (docs/compress.md, "Network slimming").
"""

from __future__ import annotations

import torch
from torch import nn

from bot.models.slimmable import slimmed_pairs


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
