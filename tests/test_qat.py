"""model.qat (Jacob et al., CVPR 2018): fake-quant training, its int8 ONNX, resume, bad input."""

import ast
import collections
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from bot import config
from bot.cli import quantize as quantize_cli
from bot.export.quantize import qat_onnx
from bot.errors import UserError
from bot.artifacts import trained
from bot.models import build_model
from bot.models.qat import (
    BIAS_LIMIT,
    ActivationQuant,
    Int8Layer,
    QatConvBn,
    QatLinear,
    QuantizedWeights,
    calibrate,
    freeze,
    prepare_qat,
)
from bot.train.trainer import train

TINY = {"resnet18-D": ["model.arch=resnet18", "model.variant=D", "model.width=0.25"],
        "mobilenet_v1": ["model.arch=mobilenet_v1"]}


def tiny(arch: str, bits: int = 8, size: int = 32):
    cfg = config.load(None, [*TINY[arch], f"data.image_size={size}"])
    torch.manual_seed(0)
    model = build_model(cfg, 5)
    for m in model.modules():  # BN statistics of a trained network, not the identity of a new one
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return calibrate(prepare_qat(model, bits), [torch.randn(4, 3, size, size) for _ in range(2)])


@pytest.mark.parametrize("arch", TINY)
def test_every_conv_folds_its_bn_and_every_layer_is_quantized(arch):
    relus = sum(isinstance(m, torch.nn.ReLU) for m in build_model(config.load(None, TINY[arch]), 5).modules())
    model = tiny(arch)
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == relus  # timm's BatchNormAct2d keeps its act
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and not isinstance(p, QatConvBn)
                   for p in model.modules() for m in p.children())
    convs = [m for m in model.modules() if isinstance(m, QatConvBn)]
    assert convs and sum(isinstance(m, QatLinear) for m in model.modules()) == 1
    assert all(q.seen and q.hi > 0 for q in model.modules() if isinstance(q, ActivationQuant))


def test_weights_per_channel_on_a_symmetric_grid_whose_ends_are_each_channels_largest():
    w = torch.randn(6, 3, 3, 3) * torch.logspace(-2, 0, 6).view(-1, 1, 1, 1)  # ranges 100x apart (the seed's cause)
    for bits in (8, 4):
        q = 2 ** (bits - 1) - 1
        fq = QuantizedWeights(bits)(w)
        scale = w.abs().amax((1, 2, 3)) / q
        assert torch.allclose(fq.abs().amax((1, 2, 3)), w.abs().amax((1, 2, 3)))
        ints = fq / scale.view(-1, 1, 1, 1)
        assert torch.allclose(ints, ints.round(), atol=1e-4) and ints.abs().max() <= q + 1e-4
        assert ((fq - w).abs() <= scale.view(-1, 1, 1, 1) / 2 + 1e-7).all()  # at most half a step off


def test_activation_range_is_an_ema_of_min_max_holding_zero():
    quant = ActivationQuant().train()
    quant(torch.tensor([0.5, 2.0])), quant(torch.tensor([-1.0, 4.0]))
    assert quant.lo.item() == pytest.approx(-0.01) and quant.hi.item() == pytest.approx(0.99 * 2 + 0.01 * 4)
    quant.eval()(torch.tensor([-9.0, 9.0]))  # evaluation does not move it
    assert quant.hi.item() == pytest.approx(2.02)
    scale, zero = quant.qparams()
    assert scale.item() == pytest.approx(2.03 / 255) and zero.item() == round(0.01 / (2.03 / 255))


def test_bn_folds_into_the_conv_as_jacob_et_al_equations():
    """gamma (W x) / sigma + beta - gamma mu / sigma, with the BN's running statistics: at 8 bits the
    fake-quant layer is the float conv -> BN within its rounding."""
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8).eval()
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(-2, 2)
    bn.bias.data.uniform_(-1, 1)
    layer = QatConvBn(conv, bn, 8, quantize_input=True, quantize_output=False).eval()
    x = torch.rand(2, 3, 8, 8)
    layer.input_quant.lo.fill_(0), layer.input_quant.hi.fill_(1)
    w, b = layer.folded()
    sigma = (bn.running_var + bn.eps).sqrt()
    assert torch.allclose(w, conv.weight * (bn.weight / sigma).view(-1, 1, 1, 1))
    assert torch.allclose(b, bn.bias - bn.weight * bn.running_mean / sigma)
    with torch.no_grad():
        assert torch.allclose(layer(x), bn(conv(x)), atol=0.05)


def test_a_channel_whose_gamma_is_near_zero_keeps_its_bias_in_int32():
    """Zero gamma (section 3.1 of the paper) leaves some BN scales near 0 after a short run: the folded
    weights of such a channel are tiny, and so would be its weight scale, and its bias would not fit
    the int32 grid of input scale x weight scale: the scale widens instead, and the bias is kept."""
    conv, bn = torch.nn.Conv2d(3, 2, 1, bias=False), torch.nn.BatchNorm2d(2).eval()
    bn.weight.data = torch.tensor([1.0, 1e-9])
    bn.bias.data = torch.tensor([0.3, 0.5])
    layer = QatConvBn(conv, bn, 8, quantize_input=True, quantize_output=False).eval()
    layer.input_quant.lo.fill_(-1), layer.input_quant.hi.fill_(1)
    freeze(layer)
    _, scale, _ = layer.weight_quant.frozen
    ints = layer.frozen_bias / (layer.input_scale() * scale)
    assert ints.abs().max() <= BIAS_LIMIT and torch.allclose(ints, ints.round())
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(layer(x)[:, 1], torch.full((2, 4, 4), 0.5), atol=1e-6)


@pytest.mark.parametrize("arch, bits", [("mobilenet_v1", 8), ("resnet18-D", 4)])  # resnet at 8: the end-to-end test
def test_the_int8_file_runs_every_conv_in_integers_and_computes_the_fake_quant_network(arch, bits, tmp_path):
    model = tiny(arch, bits, size=16)
    qat_onnx(model, 16, tmp_path / "int8.onnx", {})
    fake_quant_equals_the_int8_onnx(model, tmp_path / "int8.onnx", bits, size=16)


@pytest.mark.parametrize("extra, message", [
    ([], "model.qat: fine-tunes a trained run: set model.init_from"),
    (["model.init_from=runs/x", "model.slim_l1=1e-4"], "model.qat: does not train with slimming's penalty"),
    (["model.init_from=runs/x", "model.arch=inception_v3", "data.image_size=299"],
     "model.qat: handles ResNets and mobilenet_v1"),
    (["model.init_from=runs/x", "precision=bf16"], "precision: model.qat simulates int8 in fp32"),
    (["model.init_from=runs/x", "model.qat_bits=1"], "model.qat_bits: must be in [2, 8]"),
])
def test_bad_qat_combinations_are_one_line(extra, message):
    with pytest.raises(UserError) as e:
        config.load(None, ["model.qat=true", *extra])
    assert str(e.value).startswith(message), e.value
    with pytest.raises(UserError, match="model.qat_bits: sets the bits of model.qat"):
        config.load(None, ["model.qat_bits=4"])


# ---------------------------------------------------------------- end to end

SMALL = ["data.backend=torch", "data.image_size=16", "data.batch_size=16", "data.workers=0", "model.arch=resnet18",
         "model.variant=D", "model.width=0.25", "schedule.epochs=2", "run.log_every=1"]


def small(toy, out, *extra):
    return config.load(None, [f"data.root={toy}", f"run.out={out}", *SMALL, *extra])


def test_qat_fine_tune_resumes_bit_exactly_and_leaves_as_int8_onnx(toy, tmp_path):
    train(small(toy, tmp_path / "fp32", "run.max_steps=6"))
    qat = [f"model.init_from={tmp_path / 'fp32'}", "model.qat=true", "optim.lr=0.01", "schedule.epochs=1"]
    whole = train(small(toy, tmp_path / "whole", *qat))
    assert train(small(toy, tmp_path / "part", *qat, "run.max_steps=3"))["steps"] == 3
    again = train(small(toy, tmp_path / "part", *qat))
    assert again["steps"] == whole["steps"] == 6
    a = torch.load(tmp_path / "whole/last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "part/last.pt", weights_only=False)["model"]
    assert any(k.endswith("output_quant.hi") for k in a)  # the tracked ranges are saved and resumed
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # scripts/quantize.py writes the QAT run's ranges as the int8 ONNX that evaluate reads
    out = tmp_path / "qat.int8.onnx"
    assert quantize_cli.main([str(tmp_path / "whole"), f"data.root={toy}", "--out", str(out), "--repeats", "1"]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["model"] for r in rows] == ["QAT int8 (onnxruntime)"]
    assert abs(rows[0]["top1"] - whole["top1"]) <= 100 / 32 + 1e-6  # at most one of the 32 val images differs
    fake_quant_equals_the_int8_onnx(trained.build(trained.read(tmp_path / "whole")), out, bits=8)


def fake_quant_equals_the_int8_onnx(model, out, bits: int, size: int = 16):
    """The ONNX file computes the fake-quant network with onnxruntime's integer kernels: every conv
    runs as QLinearConv (so each reads a uint8 tensor and writes one, no tensor quantized twice), the
    weights are on each channel's grid, every tensor the network holds in uint8 is the fake-quant
    network's within one step (float sums in another order may tip a rounding; nearly all are
    equal), and the logits differ by at most what one step at the classifier's input can move them."""
    graph = onnx.load(str(out)).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert ops["QuantizeLinear"] and ops["DequantizeLinear"] and not ops["BatchNormalization"]
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    assert not any(n.op_type == "QuantizeLinear" and made_by.get(n.input[0]) == "DequantizeLinear" for n in graph.node)
    layers = [m for m in model.modules() if isinstance(m, Int8Layer)]
    integer = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    weights = [onnx.numpy_helper.to_array(t).astype(int) for t in graph.initializer
               if t.data_type in integer and len(t.dims) >= 2]  # not the zero points
    assert len(weights) == len(layers)  # one per layer
    zero = 128 if bits == 8 else 0  # 8 bits: uint8 around 128, onnxruntime's kernel that never saturates
    assert all(np.abs(w - zero).max() == 2 ** (bits - 1) - 1 for w in weights)  # each channel's largest is +-q
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out.with_suffix(".fused.onnx"))
    onnxruntime.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    fused = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    assert fused["Conv"] == 0 and fused["QLinearConv"] == sum(isinstance(m, QatConvBn) for m in layers), fused
    x = torch.randn(16, 3, size, size)
    ours, theirs = uint8_tensors(model, out, x)
    for name, tensor in theirs.items():
        if name == "logits":
            continue
        scale, zero_point = model.get_submodule(name).frozen
        diff = (torch.round(ours[name] / scale) + zero_point - tensor).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() <= 0.01, (name, diff.max(), (diff > 0).float().mean())
    fc = next(m for m in model.modules() if isinstance(m, QatLinear))
    bound = fc.input_scale() * fc.weight_quant(fc.linear.weight).abs().sum(1).max()
    assert (ours["logits"] - theirs["logits"]).abs().max() <= bound
    assert (ours["logits"].argmax(1) == theirs["logits"].argmax(1)).float().mean() >= 0.9


def uint8_tensors(model, out, x) -> tuple[dict, dict]:
    """The output of every quantizer (by module name) and the logits, from the fake-quant network and
    from onnxruntime's integer kernels running `out` with every QuantizeLinear's result made an output
    (the exporter names the module each node came from)."""
    proto = onnx.load(str(out))
    names = {}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear":
            scopes = next(p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes")
            names[node.output[0]] = ast.literal_eval(scopes)[-2]
            proto.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UINT8, None))
    ours = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: ours.__setitem__(name, o.detach().clone()))
             for name, m in model.named_modules() if isinstance(m, ActivationQuant)]
    with torch.no_grad():
        ours["logits"] = model(x)
    for hook in hooks:
        hook.remove()
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, *uint8 = session.run(None, {"images": x.numpy()})
    theirs = {name: torch.as_tensor(t).float() for name, t in zip(names.values(), uint8)}
    return ours, {**theirs, "logits": torch.as_tensor(logits)}
