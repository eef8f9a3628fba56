"""Quantization-aware training (Jacob et al., CVPR 2018, section 3): simulated int8 in fp32.

`prepare_qat(model, bits)` replaces every conv that a BatchNorm follows with `QatConvBn`,
and every Linear with `QatLinear`, each fake-quantizing what the int8 model will compute:

- weights per output channel, symmetric (zero point 0, [-q, q] with q = 2^(bits-1) - 1),
  BatchNorm folded in first (section 3.2, equations 7-8): w_fold = gamma w / sigma,
  b_fold = beta - gamma mu / sigma. The BN's running statistics fold, not the batch's: a
  QAT run fine-tunes a converged network, which is the frozen phase of Jacob et al.'s
  folding (appendix, figure C.8, "switch from batch statistics to long-term moving
  averages"); training and evaluation then compute the same function, that of the int8 model.
- activations, uint8 (affine), at the input of every conv and linear, with ranges tracked
  as exponential moving averages of the batch min/max during training (section 3.1), and
  always containing 0 so that 0 (padding, ReLU's floor) is exact.

Gradients pass the rounding straight through (torch's fake_quantize ops). While the model is
exported (`torch.compiler.is_exporting()`), the same arithmetic is written as
quantize/dequantize pairs (torch's quantized_decomposed ops), which torch.onnx turns into
ONNX QuantizeLinear/DequantizeLinear: the QDQ file onnxruntime runs in int8
(`qat_onnx` in bot/deploy/quantize.py).
"""

from __future__ import annotations

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  registers torch.ops.quantized_decomposed
import torch.nn.functional as F
from torch import nn

RANGE_DECAY = 0.99  # EMA of the activation min/max per step (Jacob et al. section 3.1: "close to 1")
ARCHS = ("resnet", "mobilenet_v1")  # arch prefixes the pairing below was checked on


QD = torch.ops.quantized_decomposed  # the ops torch.onnx writes as QuantizeLinear / DequantizeLinear


class ActivationQuant(nn.Module):
    """uint8 fake-quant of an activation, its range an EMA of the batch min/max in training."""

    def __init__(self):
        super().__init__()
        self.frozen = None  # (scale, zero point) as numbers while exporting (freeze)
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def track(self, x: torch.Tensor) -> None:
        lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)  # the range holds 0
        if not self.seen:
            self.lo.copy_(lo), self.hi.copy_(hi), self.seen.fill_(True)
        else:
            self.lo.lerp_(lo, 1 - RANGE_DECAY), self.hi.lerp_(hi, 1 - RANGE_DECAY)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) of uint8 over [lo, hi] (Jacob et al. equation 1)."""
        scale = ((self.hi - self.lo) / 255).clamp(min=1e-8)
        zero_point = (-self.lo / scale).round().clamp(0, 255).to(torch.int32)
        return scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.track(x)
        if torch.compiler.is_exporting():
            scale, zero_point = self.frozen
            q = QD.quantize_per_tensor(x, scale, zero_point, 0, 255, torch.uint8)
            return QD.dequantize_per_tensor(q, scale, zero_point, 0, 255, torch.uint8)
        scale, zero_point = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)


    def freeze(self) -> None:
        scale, zero_point = self.qparams()
        self.frozen = float(scale), int(zero_point)


def weight_scale(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """Symmetric per output channel: each channel's largest |w| maps to +-q (zero point 0)."""
    q = 2 ** (bits - 1) - 1
    return (w.detach().abs().amax(dim=tuple(range(1, w.ndim))) / q).clamp(min=1e-12), q


class QuantizedWeights(nn.Module):
    """The fake-quant of a layer's (folded) weights, and their int8 form for export."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits, self.frozen = bits, None  # frozen: (int8 weights, scales) while exporting

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            w8, scale = self.frozen
            zero = torch.zeros_like(scale, dtype=torch.int64)
            return QD.dequantize_per_channel(w8, scale, zero, 0, -127, 127, torch.int8)
        scale, q = weight_scale(w, self.bits)
        return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32), 0, -q, q)

    @torch.no_grad()
    def freeze(self, w: torch.Tensor) -> None:
        scale, q = weight_scale(w, self.bits)
        w8 = torch.round(w / scale.view(-1, *[1] * (w.ndim - 1))).clamp(-q, q).to(torch.int8)
        self.frozen = w8, scale.clone()


class QatConvBn(nn.Module):
    """conv -> BN, folded (running statistics) and fake-quantized; input fake-quantized."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, bits: int):
        super().__init__()
        self.conv, self.bn, self.act_quant, self.weight_quant = conv, bn, ActivationQuant(), QuantizedWeights(bits)
        self.frozen_bias = None

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        conv, bn = self.conv, self.bn
        gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * gain
        if conv.bias is not None:
            bias = bias + conv.bias * gain
        return conv.weight * gain.view(-1, 1, 1, 1), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded()
        if torch.compiler.is_exporting():
            bias = self.frozen_bias
        c = self.conv
        return F.conv2d(self.act_quant(x), self.weight_quant(weight), bias, c.stride, c.padding, c.dilation, c.groups)

    @torch.no_grad()
    def freeze(self) -> None:
        weight, bias = self.folded()
        self.weight_quant.freeze(weight)
        self.act_quant.freeze()
        self.frozen_bias = bias.clone()


class QatLinear(nn.Module):
    """Linear with its weights and input fake-quantized (the classifier)."""

    def __init__(self, linear: nn.Linear, bits: int):
        super().__init__()
        self.linear, self.act_quant, self.weight_quant = linear, ActivationQuant(), QuantizedWeights(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act_quant(x), self.weight_quant(self.linear.weight), self.linear.bias)

    def freeze(self) -> None:
        self.weight_quant.freeze(self.linear.weight)
        self.act_quant.freeze()


def after_bn(bn: nn.Module) -> nn.Module:
    """What stays where a folded BN was: timm's BatchNormAct2d (MobileNet v1) carries its
    dropout and activation inside; a plain BN leaves nothing."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
    return nn.Sequential(*rest) if rest else nn.Identity()


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def prepare_qat(model: nn.Module, bits: int = 8) -> nn.Module:
    """`model` with its conv+BN pairs and linears replaced in place (and returned).

    A conv is paired with the module registered right after it when that is a BatchNorm2d of
    its width: the order in which timm's ResNets (conv1/bn1, downsample conv/bn) and
    ConvNormAct blocks (MobileNet v1) define them. A conv without a BN there is an error:
    it would stay unquantized."""
    named = list(model.named_modules())
    pairs = []
    for i, (name, module) in enumerate(named):
        if isinstance(module, nn.Conv2d):
            nxt = named[i + 1] if i + 1 < len(named) else (None, None)
            if not (isinstance(nxt[1], nn.BatchNorm2d) and nxt[1].num_features == module.out_channels):
                raise ValueError(f"conv {name} is not followed by its BatchNorm")
            pairs.append((name, module, *nxt))
    linears = [(n, m) for n, m in named if isinstance(m, nn.Linear)]
    for conv_name, conv, bn_name, bn in pairs:
        _set(model, conv_name, QatConvBn(conv, bn, bits))
        _set(model, bn_name, after_bn(bn))
    for name, linear in linears:
        _set(model, name, QatLinear(linear, bits))
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Fix every quantizer's parameters as constants, for export (the model in eval mode)."""
    for module in model.modules():
        if isinstance(module, (QatConvBn, QatLinear)):
            module.freeze()
    return model.eval()


@torch.no_grad()
def calibrate(model: nn.Module, batches) -> nn.Module:
    """Post-training ranges with the tracking QAT uses (the EMA of min/max), the rest of the
    network in eval mode: quantization without training, to compare QAT against."""
    model.eval()
    quants = [m for m in model.modules() if isinstance(m, ActivationQuant)]
    for m in quants:
        m.seen.fill_(False)
        m.train()
    for images in batches:
        model(images)
    return model.eval()
