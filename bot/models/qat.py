"""Quantization-aware training (Jacob et al., CVPR 2018, section 3): simulated int8 in fp32.

`prepare_qat(model, bits)` replaces every conv+BN(+activation) with `QatConvBn` and every
Linear with `QatLinear`, and quantizes each tensor the int8 network holds in uint8 once
(bot/models/qat_plan.py): weights per output channel, symmetric, BN folded with its running
statistics (section 3.2); activation ranges an EMA of the batch min/max, holding 0 (section
3.1). While exporting, the same arithmetic is written as quantize/dequantize ops, which
torch.onnx writes as the QDQ file onnxruntime runs in int8 (bot/export/quantize.py). Why
each choice: docs/compress.md, "Quantization-aware training".
"""

from __future__ import annotations

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  registers torch.ops.quantized_decomposed
import torch.nn.functional as F
from torch import nn

from bot.models import qat_plan

RANGE_DECAY = 0.99  # EMA of the activation min/max per step (Jacob et al. section 3.1: "close to 1")


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
        # the first batch sets the range, later ones move it: a where, since an `if` on `seen`
        # would wait for the GPU at every quantizer of every step
        self.lo.copy_(torch.where(self.seen, self.lo.lerp(lo, 1 - RANGE_DECAY), lo))
        self.hi.copy_(torch.where(self.seen, self.hi.lerp(hi, 1 - RANGE_DECAY), hi))
        self.seen.fill_(True)

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


class QuantizedWeights(nn.Module):
    """The fake-quant of a layer's (folded) weights, symmetric per output channel, and their integer
    form for export: 8-bit weights as uint8 around zero point 128, the same grid, since
    onnxruntime's u8s8 kernel saturates on x86 without VNNI; 7 bits and fewer, which cannot
    saturate it, as int8 (docs/compress.md)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits, self.q = bits, 2 ** (bits - 1) - 1
        self.frozen = None  # (integer weights, scales, zero points) while exporting

    def scale(self, w: torch.Tensor, floor: torch.Tensor | None = None) -> torch.Tensor:
        """Each channel's largest |w| maps to +-q (zero point 0); at least `floor` where given."""
        scale = w.detach().abs().amax(dim=tuple(range(1, w.ndim))) / self.q
        return (scale if floor is None else torch.maximum(scale, floor)).clamp(min=1e-12)

    def forward(self, w: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        if torch.compiler.is_exporting():
            ints, scale, zero = self.frozen
            low, high = (0, 255) if ints.dtype == torch.uint8 else (-127, 127)
            return QD.dequantize_per_channel(ints, scale, zero, 0, low, high, ints.dtype)
        scale = self.scale(w) if scale is None else scale
        return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32), 0,
                                                      -self.q, self.q)

    @torch.no_grad()
    def freeze(self, w: torch.Tensor, scale: torch.Tensor) -> None:
        ints = torch.round(w / scale.view(-1, *[1] * (w.ndim - 1))).clamp(-self.q, self.q)
        zero = torch.full_like(scale, 128 if self.bits == 8 else 0, dtype=torch.int64)
        ints = (ints + 128).to(torch.uint8) if self.bits == 8 else ints.to(torch.int8)
        self.frozen = ints, scale.clone(), zero


BIAS_LIMIT = 2 ** 30  # |int32 bias| stays below this many steps (int32 holds 2^31)


def bias_on_grid(bias: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The bias as the integer kernel holds it: int32 on the grid of input scale x weight scale, zero
    point 0 (Jacob et al. section 2.4; onnxruntime rounds a float bias so); gradients straight through.
    Simulated, since its small moves compound over layers: the int8 file computes what training saw."""
    return bias + (torch.round(bias / step) * step - bias).detach()


class Int8Layer(nn.Module):
    """A layer the integer kernel runs: int8 weights per output channel, int32 bias, its input on a
    uint8 grid: its own quantizer's (`input_quant`), or that of the layer that made the input (`link`)."""

    def __init__(self, bits: int, quantize_input: bool):
        super().__init__()
        self.weight_quant = QuantizedWeights(bits)
        self.input_quant = ActivationQuant() if quantize_input else None
        self.frozen_bias = None

    def link(self, quantizer: ActivationQuant) -> None:
        # held outside the module tree (a tuple): it is saved, moved and frozen with the layer that owns it
        self._input_from = (quantizer,)

    def input_scale(self) -> torch.Tensor:
        quantizer = self.input_quant if self.input_quant is not None else self._input_from[0]
        return quantizer.qparams()[0]

    def float_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def quantized(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weights, bias) fake-quantized; their frozen form while exporting."""
        if torch.compiler.is_exporting():
            return self.weight_quant(None), self.frozen_bias
        weight, bias, scale = self._scaled()
        bias = None if bias is None else bias_on_grid(bias, self.input_scale() * scale)
        return self.weight_quant(weight, scale), bias

    def _scaled(self):
        """The float weights and bias, and the weight scales: each channel's range, widened where a
        channel's weights are so small (a gamma near 0) that its bias would not fit in int32."""
        weight, bias = self.float_weights()
        floor = None if bias is None else bias.detach().abs() / (self.input_scale() * BIAS_LIMIT)
        return weight, bias, self.weight_quant.scale(weight, floor)

    @torch.no_grad()
    def freeze(self) -> None:
        weight, bias, scale = self._scaled()
        self.weight_quant.freeze(weight, scale)
        self.frozen_bias = None if bias is None else bias_on_grid(bias, self.input_scale() * scale)


class QatConvBn(Int8Layer):
    """conv -> BN (folded, running statistics) -> activation, fake-quantized as the int8 conv runs it:
    the input quantized where no layer before did it (the image), the output after the activation
    (bot/models/qat_plan.py says which)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, bits: int, act: nn.Module | None = None,
                 quantize_input: bool = False, quantize_output: bool = True):
        super().__init__(bits, quantize_input)
        self.conv, self.bn = conv, bn
        self.after = after_bn(bn, act)
        self.output_quant = ActivationQuant() if quantize_output else None

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        conv, bn = self.conv, self.bn
        gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * gain
        if conv.bias is not None:
            bias = bias + conv.bias * gain
        return conv.weight * gain.view(-1, 1, 1, 1), bias

    float_weights = folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        weight, bias = self.quantized()
        c = self.conv
        x = self.after(F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups))
        return x if self.output_quant is None else self.output_quant(x)


class QatLinear(Int8Layer):
    """Linear (the classifier), fake-quantized as the int8 kernel runs it, its input quantized where
    no layer before did it."""

    def __init__(self, linear: nn.Linear, bits: int, quantize_input: bool = True):
        super().__init__(bits, quantize_input)
        self.linear = linear

    def float_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.linear.weight, self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        return F.linear(x, *self.quantized())


def after_bn(bn: nn.Module, act: nn.Module | None) -> nn.Module:
    """What a unit computes after its folded BN: timm's BatchNormAct2d (MobileNet v1) carries its
    dropout and activation inside; a ResNet's activation is the module after the BN (`act`)."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None), act) if m is not None]
    return nn.Sequential(*rest) if rest else nn.Identity()


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def prepare_qat(model: nn.Module, bits: int = 8) -> nn.Module:
    """`model` with its conv+BN(+activation) units and linears fake-quantized, and a quantizer after
    every other layer whose output the int8 network holds in uint8 (bot/models/qat_plan.py), in place.
    A conv without its BN right after it is an error: it would stay unquantized."""
    plan = qat_plan.plan(model)
    for unit in plan.units:
        act = model.get_submodule(unit.act) if unit.act else None
        _set(model, unit.conv, QatConvBn(model.get_submodule(unit.conv), model.get_submodule(unit.bn), bits, act,
                                         unit.input_from is None, unit.quantize_output))
        _set(model, unit.bn, nn.Identity())
        if unit.act:
            _set(model, unit.act, nn.Identity())
    for name, input_from in plan.linears.items():
        _set(model, name, QatLinear(model.get_submodule(name), bits, input_from is None))
    for name in plan.quantize_after:
        _set(model, name, nn.Sequential(model.get_submodule(name), ActivationQuant()))
    for name, input_from in [(u.conv, u.input_from) for u in plan.units] + list(plan.linears.items()):
        if input_from is not None:
            model.get_submodule(name).link(model.get_submodule(input_from))
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Fix every quantizer's parameters as constants, for export (the model in eval mode)."""
    for module in model.modules():
        if isinstance(module, (Int8Layer, ActivationQuant)):
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
