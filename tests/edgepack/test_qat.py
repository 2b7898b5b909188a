"""QAT: the torch simulation equals the files edgepack's PTQ writes, before and after fine-tuning.

Measured on this machine (digits test split, 360 samples, one sample per runtime call):
- prepared, untrained, int8: QAT output == ONNX QDQ output bit for bit (0 output steps) for conv_net and mlp;
- int16x8: at most 1 output step apart (measured 1.0002 / 1.0008 steps, the excess being float error of the step
  itself: float summation order in the convs/gemms lands a few values on the other side of a 16-bit rounding
  boundary), 98.8 % (conv_net) and 99.5 % (mlp) of outputs bit for bit equal, the same accuracy;
- after 1 epoch of QAT (conv_net int8, 96.4 % -> 98.9 %): ONNX QDQ and TFLite int8 accuracy equal the simulated one
  (smoke runs showed the outputs equal bit for bit); binary mlp 90.3 %, ternary 93.9 % after 3 epochs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from edgepack.calibration.ptq import QuantScheme, calibrate
from edgepack.calibration.sources import load_digits_dataset
from edgepack.converters.qdq import write_qdq_model
from edgepack.converters.torch_to_onnx import export_to_onnx
from onnx import helper, numpy_helper

from edgepack.compression.qat_model import WeightMode, packed_weight_bytes, prepare_qat
from edgepack.compression.qat_modules import ActivationQuantizer, fake_quantize
from edgepack.core.errors import UnsupportedOperatorError
from edgepack.core.quantization import activation_params, weight_params
from tests import models

TRAIN, TEST = load_digits_dataset("image", "train"), load_digits_dataset("image", "test")
EXAMPLE = {"image": TRAIN.inputs["image"][:8]}


def export(module: torch.nn.Module, path) -> onnx.ModelProto:
    export_to_onnx(module.eval(), (torch.zeros(1, 1, 8, 8),), path, input_names=["image"], output_names=["logits"],
                   opset=18, dynamo=True)  # fmt: skip
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def float_model(trained_weights, tmp_path_factory):
    """name -> (trained torch module, its dynamo ONNX export)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            module = getattr(models, name)()
            module.load_state_dict(torch.load(trained_weights(name), weights_only=True))
            cache[name] = module.eval(), export(module, tmp_path_factory.mktemp("qat") / f"{name}.onnx")
        return cache[name]

    return get


def run_ort(path, images: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"image": images[i : i + 1]})[0] for i in range(len(images))])


def simulate(qat, images: np.ndarray) -> np.ndarray:
    qat.eval()
    with torch.no_grad():
        return qat(torch.from_numpy(images)).numpy()


def finetune_briefly(qat, epochs: int = 1, lr: float = 1e-3) -> None:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(qat.parameters(), lr=lr)
    images, labels = torch.from_numpy(TRAIN.inputs["image"]), torch.from_numpy(TRAIN.labels)
    qat.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(qat(images[batch]), labels[batch]).backward()
            optimizer.step()


def accuracy(logits: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == TEST.labels))


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """tensor -> the scale of its DequantizeLinear node: the grid its consumers read (a graph input's QuantizeLinear
    has scale 1 after a Mul by 1 / scale, converters.qdq)."""
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and initializers[n.input[1]].size == 1]
    return {n.name.removesuffix("_DequantizeLinear"): float(initializers[n.input[1]]) for n in nodes}


@pytest.mark.parametrize(("dtype", "symmetric"), [("int8", False), ("int8", True), ("int16", True)])
def test_torch_fake_quant_equals_numpy_bit_for_bit(dtype, symmetric):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((64, 16, 5, 5)) * 2 + 0.5).astype(np.float32)
    params = activation_params(-1.7, 4.3, dtype, symmetric)
    ties = ((np.arange(-300, 300) + 0.5) * params.scale).astype(np.float32)  # half-way points: round half to even
    for x in (values, ties):
        assert np.array_equal(fake_quantize(torch.from_numpy(x), params).numpy(), params.fake_quantize(x))
    weights = (rng.standard_normal((16, 8, 3, 3)) * rng.uniform(0.01, 2, (16, 1, 1, 1))).astype(np.float32)
    grid = weight_params(weights, axis=0)
    simulated = fake_quantize(torch.from_numpy(weights), grid).numpy()
    assert grid.scale.shape == (16,) and np.array_equal(simulated, grid.fake_quantize(weights))


def test_activation_quantizer_straight_through_and_learned_range():
    quantizer = ActivationQuantizer(-1.0, 3.0, "int8", False, learn_range=True)
    x = torch.linspace(-3, 5, 101, requires_grad=True)
    out = quantizer(x)
    params = activation_params(-1.0, 3.0, "int8")
    assert np.array_equal(out.detach().numpy(), params.fake_quantize(x.detach().numpy()))  # learned: same value
    out.sum().backward()
    low, high = params.representable_range()
    inside = (x.detach() >= low - params.scale / 2) & (x.detach() <= high + params.scale / 2)
    assert torch.equal(x.grad, inside.float())  # 1 inside the grid, 0 where the value was clamped
    assert quantizer.bounds.grad is not None and torch.all(quantizer.bounds.grad != 0)  # LSQ gradient on lo, hi
    observed = ActivationQuantizer(-1.0, 3.0, "int8", False, momentum=0.5).train()
    observed(torch.tensor([-3.0, 1.0]))
    assert observed.range() == (-2.0, 2.0)  # EMA: half old range, half batch min/max


@pytest.mark.parametrize("name", ["conv_net", "mlp"])
@pytest.mark.parametrize("precision", ["int8", "int16x8"])
def test_prepared_model_equals_onnx_qdq_file(float_model, tmp_path, name, precision):
    module, float_onnx = float_model(name)
    calibration = calibrate(float_onnx, TRAIN, QuantScheme(precision=precision))
    qat = prepare_qat(module, float_onnx, calibration, EXAMPLE, input_names=["image"])
    assert sorted(qat.points) == sorted(calibration.plan.activations)  # one fake-quant per calibrated point
    assert len(qat.layers) == len(calibration.plan.weights)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in qat.modules())  # folded as the exporter does
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules()) == (name == "conv_net")  # untouched
    write_qdq_model(float_onnx, tmp_path / "qdq.onnx", calibration.plan, calibration.activations)
    reference, simulated = run_ort(tmp_path / "qdq.onnx", TEST.inputs["image"]), simulate(qat, TEST.inputs["image"])
    steps = np.abs(simulated - reference) / float(calibration.activations["logits"].scale)
    exact = np.mean(steps == 0)
    assert steps.max() <= 1.01 and exact >= (0.99 if precision == "int8" else 0.95), (steps.max(), exact)
    assert accuracy(simulated) == pytest.approx(accuracy(reference), abs=0.003)
    assert accuracy(simulated) > 0.85


def test_finetuned_export_matches_onnx_and_tflite(float_model, tmp_path):
    from edgepack.converters.onnx_to_tflite import FakeQuantization, convert_onnx_to_tflite
    from edgepack.converters.runtime import open_session
    from edgepack.converters.verify import predict

    module, float_onnx = float_model("conv_net")
    calibration = calibrate(float_onnx, TRAIN, QuantScheme())
    qat = prepare_qat(module, float_onnx, calibration, EXAMPLE, input_names=["image"], momentum=0.05)
    finetune_briefly(qat)
    assert qat.trained_ranges()["relu_1"] != calibration.ranges["relu_1"]  # the observed ranges moved
    logits = simulate(qat, TEST.inputs["image"])
    simulated = accuracy(logits)
    trained_onnx = export(qat.float_module(), tmp_path / "trained.onnx")
    assert not [n for n in trained_onnx.graph.node if "Quantize" in n.op_type]
    exported = qat.calibration_for(trained_onnx)
    assert sorted(exported.ranges.values()) == sorted(qat.export_calibration().ranges.values())
    qdq_path = tmp_path / "qdq.onnx"
    write_qdq_model(trained_onnx, qdq_path, exported.plan, exported.activations, unsigned_activations=False)
    stored = activation_scales(onnx.load(str(tmp_path / "qdq.onnx")))
    for tensor, (low, high) in exported.ranges.items():
        assert stored[tensor] == float(activation_params(low, high, "int8").scale), tensor
    ranges = {t: tuple(float(v) for v in p.representable_range()) for t, p in exported.activations.items()}
    convert_onnx_to_tflite(tmp_path / "trained.onnx", tmp_path / "int8.tflite", input_shapes={"image": [1, 1, 8, 8]},
                           quantization=FakeQuantization(ranges, 8))  # fmt: skip
    for path in (tmp_path / "qdq.onnx", tmp_path / "int8.tflite"):
        in_runtime = predict(open_session(path), TEST, 1)["logits"]
        steps = np.abs(in_runtime - logits) / float(exported.activations["logits"].scale)
        assert abs(accuracy(in_runtime) - simulated) <= 0.005 and steps.max() <= 1.01, (path.name, steps.max())
    assert simulated > 0.85


@pytest.mark.parametrize(("mode", "values", "packed"), [("binary", {-127, 127}, 2368 / 8 + 4 * 42),
                                                        ("ternary", {-127, 0, 127}, 2368 / 4 + 4 * 42)])  # fmt: skip
def test_binary_and_ternary_weights_export_as_two_or_three_int8_values(float_model, tmp_path, mode, values, packed):
    module, float_onnx = float_model("mlp")
    calibration = calibrate(float_onnx, TRAIN, QuantScheme())
    learn = mode == "ternary"  # learned ranges (LSQ) ride along here: they must export as exactly as observed ones
    qat = prepare_qat(module, float_onnx, calibration, EXAMPLE, input_names=["image"], weight_bits=mode,
                      learn_ranges=learn)  # fmt: skip
    finetune_briefly(qat, epochs=3)
    learned = {id(q.bounds) for q in qat.quantizers.values()} & {id(p) for p in qat.parameters()}
    assert bool(learned) == learn and qat.trained_ranges()["relu"] != calibration.ranges["relu"]
    float_module = qat.float_module()
    for layer in (m for m in float_module.modules() if isinstance(m, torch.nn.Linear)):
        distinct = [len(torch.unique(row)) for row in layer.weight.detach()]
        assert max(distinct) == 2 if mode == "binary" else max(distinct) <= 3, distinct
    assert packed_weight_bytes(qat, mode) == packed and packed_weight_bytes(qat, WeightMode.INT8) == 2368 + 4 * 42
    trained_onnx = export(float_module, tmp_path / "trained.onnx")
    exported = qat.calibration_for(trained_onnx)
    weights = write_qdq_model(trained_onnx, tmp_path / "qdq.onnx", exported.plan, exported.activations)
    written = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "qdq.onnx")).graph.initializer}
    assert len(weights) == 2
    for name in weights:
        assert set(np.unique(written[f"{name}_quantized"]).tolist()) <= values
    images = TEST.inputs["image"]
    assert accuracy(run_ort(tmp_path / "qdq.onnx", images)) == accuracy(simulate(qat, images))


def test_plan_tensor_without_torch_value_is_named(float_model):
    module, float_onnx = float_model("mlp")
    doubled = onnx.ModelProto()
    doubled.CopyFrom(float_onnx)  # logits -> Mul(2) -> doubled: a value the torch model never computes
    graph = doubled.graph
    graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    graph.node.append(helper.make_node("Mul", ["logits", "two"], ["doubled"], name="node_double"))
    graph.output[0].name = "doubled"
    calibration = calibrate(doubled, TRAIN, QuantScheme())
    with pytest.raises(UnsupportedOperatorError, match=r"'node_double' \(op Mul\).*'doubled'"):
        prepare_qat(module, doubled, calibration, EXAMPLE, input_names=["image"])
    with pytest.raises(UnsupportedOperatorError, match=r"op Gemm.*no torch Conv/Linear whose weight"):
        prepare_qat(models.mlp(), float_onnx, calibration, EXAMPLE, input_names=["image"])


def test_fake_quant_of_a_relu_output_sits_after_an_in_place_relu(float_model):
    """torchvision writes ReLU(inplace=True): the matcher's recorded conv output used to be rewritten by the ReLU,
    so a ReLU's range was simulated (and observed, negatives included) on the conv or the residual Add before it."""
    module, float_onnx = float_model("small_resnet")
    calibration = calibrate(float_onnx, TRAIN, QuantScheme())
    qat = prepare_qat(module, float_onnx, calibration, EXAMPLE, input_names=["image"])
    producers = {out: node.op_type for node in float_onnx.graph.node for out in node.output}
    relu_outputs = [t for t in calibration.plan.activations if producers.get(t) == "Relu"]
    assert len(relu_outputs) == 7  # the stem's ReLU, and two per block (the second after the residual Add)
    nodes, layers = {n.name: n for n in qat.graph_module.graph.nodes}, dict(qat.graph_module.named_modules())
    for tensor in relu_outputs:
        node = nodes[qat.points[tensor]]
        assert isinstance(layers.get(node.target), torch.nn.ReLU), (tensor, node.name, node.target)
    finetune_briefly(qat)
    for tensor in relu_outputs:  # observed in training on the ReLU's output: never below zero
        assert qat.trained_ranges()[tensor][0] == 0.0, tensor


def test_a_partial_finetune_block_keeps_the_qat_learning_rate():
    """{epochs: 1} used to bring the generic 3e-3, which takes the BatchNorm-folded small ResNet 99.4 % -> 95.6 %."""
    from edgepack.stages.qat import QAT_FINETUNE, QatConfig

    config = QatConfig(finetune={"epochs": 1})
    assert (config.finetune.epochs, config.finetune.learning_rate) == (1, QAT_FINETUNE.learning_rate)
    assert QatConfig(finetune={"learning_rate": 1e-2}).finetune.epochs == QAT_FINETUNE.epochs
    assert QatConfig().finetune == QAT_FINETUNE


def test_a_qat_model_outside_the_integer_tolerance_is_a_verification_error():
    from edgepack.converters.verify import IntegerTolerance

    from edgepack.compression.qat_guard import check_against_float
    from edgepack.core.errors import VerificationError

    rng = np.random.default_rng(0)
    reference = {"logits": rng.standard_normal((40, 10)).astype(np.float32)}
    close = {"logits": reference["logits"] + 0.01}
    figures = check_against_float("torch-qat", close, reference, tolerance=IntegerTolerance(), classifier=True)
    assert figures["cosine_similarity"] > 0.999 and figures["top1_agreement"] == 1.0 and figures["samples"] == 40
    shuffled = {"logits": reference["logits"][::-1].copy()}
    with pytest.raises(
        VerificationError, match=r"torch-qat: cosine of output 'logits' -?0\.\d+ is below the floor 0.99"
    ):
        check_against_float("torch-qat", shuffled, reference, tolerance=IntegerTolerance(), classifier=True)
    swapped = {"logits": reference["logits"] * 0.2 + close["logits"] * 0.8}  # cosine high, a few top-1 flipped
    swapped["logits"][:8] = reference["logits"][:8] * -0.1 + np.abs(reference["logits"][:8]).max()
    loose_cosine = IntegerTolerance(min_cosine=0.0)
    with pytest.raises(VerificationError, match=r"top-1 agreement 0\.\d+ is below the floor 0.9 "):
        check_against_float("torch-qat", swapped, reference, tolerance=loose_cosine, classifier=True)
    figures = check_against_float("torch-qat", shuffled, reference, tolerance=None, classifier=True)  # recorded only
    assert figures["cosine_similarity"] < 0.5
