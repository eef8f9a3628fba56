"""Where the int8 network quantizes, read from the float network's forward graph (torch.fx).

Jacob et al. (CVPR 2018, section 3.1) quantize activations "at points where they would be
during inference", and onnxruntime runs a layer in int8 only between quantized tensors
(docs/compress.md), so every tensor that a conv, the classifier, an addition or a pooling
layer reads is quantized once, where it is made:

- a conv, its BatchNorm and the activation right after them form one unit (`QatConvBn`), whose
  output is quantized after the activation (a ReLU then costs nothing: the uint8 range starts at 0);
- another module making such a tensor (the ReLU after a residual addition, a pooling layer) is
  followed by a quantizer;
- a tensor that no module makes (the image; a function's result, such as timm's mean pooling) is
  quantized where a conv or the classifier reads it.

Two quantizers in a row (Q -> DQ -> Q -> DQ) never occur: onnxruntime would merge them only
approximately, and each would round again.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass

import torch
import torch.fx
from timm.layers import DropBlock2d, DropPath
from torch import nn

from bot.models.activations import ACTIVATIONS

NO_OPS = (nn.Identity, nn.Dropout, DropPath, DropBlock2d)  # the identity at inference
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
ADDS = (operator.add, operator.iadd, torch.add)


@dataclass
class Unit:
    """conv -> BatchNorm (-> activation): module names, and which ends are quantized."""
    conv: str
    bn: str
    act: str | None = None  # a separate activation module after the BN (timm's ResNets)
    input_from: str | None = None  # the quantizer that made its input (None: the unit quantizes it)
    quantize_output: bool = False


@dataclass
class Plan:
    units: list[Unit]
    linears: dict[str, str | None]  # Linear -> the quantizer that made its input (None: its own)
    quantize_after: list[str]  # other modules whose output is quantized


def output_quantizer(unit: Unit) -> str:
    """The name of a unit's output quantizer in the prepared network (QatConvBn.output_quant)."""
    return f"{unit.conv}.output_quant"


def quantizer_after(module: str) -> str:
    """The name of the quantizer after `module` in the prepared network (nn.Sequential(module, quantizer))."""
    return f"{module}.1"


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        # a BN is one node, timm's BatchNormAct2d with its activation inside it
        return isinstance(m, nn.BatchNorm2d) or super().is_leaf_module(m, name)


def plan(model: nn.Module) -> Plan:
    """Which conv, BN and activation fold into one unit, and where activations are quantized."""
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")

    def module(node):
        return modules[node.target] if node.op == "call_module" else None

    units = {}  # the unit's last node -> Unit
    for node in graph.nodes:
        if isinstance(module(node), nn.Conv2d):
            end, unit = _unit(node, module)
            units[end] = unit
    for name, count in calls.items():
        if count > 1 and isinstance(modules[name], (nn.Conv2d, nn.BatchNorm2d, nn.Linear, *POOLS,
                                                    *ACTIVATIONS.values())):
            raise ValueError(f"module {name} is called {count} times; each must be called once")
    folded = {u.bn for u in units.values()}
    lone = [n.target for n in graph.nodes if isinstance(module(n), nn.BatchNorm2d) and n.target not in folded]
    if lone:
        raise ValueError(f"BatchNorm {lone[0]} follows no conv")

    by_conv = {u.conv: u for u in units.values()}
    linears, after = {}, []
    for node in graph.nodes:
        m = module(node)
        if not (isinstance(m, (nn.Conv2d, nn.Linear, *POOLS)) or (node.op == "call_function" and node.target in ADDS)):
            continue
        for arg in node.all_input_nodes:
            source, quantizer = _past_no_ops(arg, module), None
            if source in units:
                units[source].quantize_output = True
                quantizer = output_quantizer(units[source])
            elif module(source) is not None:  # a pooling layer, the ReLU after an addition
                if source.target not in after:
                    after.append(source.target)
                quantizer = quantizer_after(source.target)
            if isinstance(m, nn.Conv2d):
                by_conv[node.target].input_from = quantizer
            elif isinstance(m, nn.Linear):
                linears[node.target] = quantizer
    return Plan(list(units.values()), linears, after)


def _unit(conv, module) -> tuple[torch.fx.Node, Unit]:
    """The conv's unit (its BN, and a ReLU-like module right after the BN) and its last node."""
    users = list(conv.users)
    bn = users[0] if len(users) == 1 else None
    if bn is None or not isinstance(module(bn), nn.BatchNorm2d) or module(bn).num_features != module(conv).out_channels:
        raise ValueError(f"conv {conv.target} is not followed by its BatchNorm")
    unit = Unit(conv.target, bn.target)
    if hasattr(module(bn), "act"):  # timm's BatchNormAct2d: the activation is inside it
        return bn, unit
    node = bn
    while len(node.users) == 1:
        node = next(iter(node.users))
        if isinstance(module(node), tuple(ACTIVATIONS.values())):
            unit.act = node.target
            return node, unit
        if not isinstance(module(node), NO_OPS):
            break
    return bn, unit


def _past_no_ops(node, module):
    """The node that made `node`'s tensor, past identities (dropout, drop path at inference)."""
    while isinstance(module(node), NO_OPS):
        node = node.all_input_nodes[0]
    return node
