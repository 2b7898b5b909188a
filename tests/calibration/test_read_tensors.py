"""calibration.collect.read_tensors: many samples a call where the model's batch can be freed, and exactly the
values a one-sample-a-call run gives, whichever way it runs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from edgepack.calibration import collect
from edgepack.calibration.collect import collect_ranges, model_batch, onnx_tensor_reader, read_tensors
from edgepack.calibration.estimators import MinMaxEstimator, MovingAverageMinMaxEstimator
from onnx import TensorProto, helper, numpy_helper

from edgepack.core.dataset import ArrayDataset

RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((4, 3)).astype(np.float32)


def graph_model(nodes, batch: int, output_shape: list, initializers=()) -> onnx.ModelProto:
    """x [batch, 4] -> nodes -> y; every intermediate tensor is a candidate to read."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(WEIGHT, "w"), *initializers],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def per_sample(batch: int = 1) -> onnx.ModelProto:
    """x @ w -> relu -> y: each sample computed on its own."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    return graph_model(nodes, batch, [batch, 3])


def batch_baked_in() -> onnx.ModelProto:
    """x -> Reshape [1, -1] -> ReduceSum over axis 1 -> y [1, 1]: runs at any batch, but sums over the samples."""
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("ReduceSum", ["flat"], ["y"], keepdims=1)]  # fmt: skip
    return graph_model(nodes, 1, [1, 1], [shape])


def data(count: int) -> ArrayDataset:
    return ArrayDataset({"x": RNG.standard_normal((count, 4)).astype(np.float32)})


def one_at_a_time(model, tensors, dataset) -> dict[str, np.ndarray]:
    read = onnx_tensor_reader(model, tensors)
    parts = [read(b) for b in dataset.batches(1)]
    return {t: np.concatenate([p[t] for p in parts]) for t in tensors}


def stacked(batches, tensors) -> dict[str, np.ndarray]:
    return {t: np.concatenate([b.real(t) for b in batches]) for t in tensors}


def test_a_batch_one_model_runs_many_samples_a_call_with_the_same_values():
    model, dataset, tensors = per_sample(), data(100), ["x", "h", "y"]
    batches = list(read_tensors(model, tensors, dataset))
    assert model_batch(model) == 1
    assert [b.samples for b in batches] == [3, 32, 32, 32, 1]  # the probe, then up to MAX_BATCH a call
    assert sum(b.samples for b in batches) == 100
    expected, got = one_at_a_time(model, tensors, dataset), stacked(batches, tensors)
    for tensor in tensors:
        np.testing.assert_allclose(got[tensor], expected[tensor], rtol=1e-6, atol=1e-6)


def test_the_batch_per_call_shrinks_to_fit_the_memory_budget(monkeypatch):
    monkeypatch.setattr(collect, "BATCH_BYTES", 5 * (4 + 3 + 3) * 4)  # five samples' worth of x, h and y
    batches = list(read_tensors(per_sample(), ["x", "h", "y"], data(20)))
    assert [b.samples for b in batches] == [3, 5, 5, 5, 2]


def test_a_model_with_the_batch_baked_in_runs_one_sample_a_call():
    model, dataset, tensors = batch_baked_in(), data(10), ["flat", "y"]
    batches = list(read_tensors(model, tensors, dataset))
    assert [b.samples for b in batches] == [1] * 10
    expected = one_at_a_time(model, tensors, dataset)
    assert all(np.array_equal(stacked(batches, tensors)[t], expected[t]) for t in tensors)


def test_a_graph_that_refuses_another_batch_runs_one_sample_a_call():
    shape = numpy_helper.from_array(np.array([1, 4], np.int64), "shape")  # a fixed reshape: batch 3 cannot fit it
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["y"])]
    batches = list(read_tensors(graph_model(nodes, 1, [1, 3], [shape]), ["y"], data(5)))
    assert [b.samples for b in batches] == [1] * 5


def test_a_fixed_batch_of_four_is_padded_by_repeating_the_last_sample():
    dataset = data(10)
    batches = list(read_tensors(per_sample(batch=4), ["y"], dataset))
    assert [(b.rows, b.samples) for b in batches] == [(4, 4), (4, 4), (4, 2)] and model_batch(per_sample(4)) == 4
    last = batches[-1].values["y"]
    assert np.array_equal(last[1], last[2]) and np.array_equal(last[1], last[3])  # sample 9 and its copies
    expected = one_at_a_time(per_sample(), ["y"], dataset)["y"]
    np.testing.assert_allclose(stacked(batches, ["y"])["y"], expected, rtol=1e-6, atol=1e-6)


def test_minmax_and_moving_average_ranges_do_not_depend_on_the_samples_per_call():
    """The same ranges whether the model frees its batch (many a call) or not (one a call)."""
    dataset, tensors = data(64), ["h"]
    many = per_sample()
    one = batch_baked_in_copy_of(many)  # the same function, with a Reshape that pins the batch
    assert [b.samples for b in read_tensors(one, tensors, dataset)][:2] == [1, 1]
    for make in (MinMaxEstimator, MovingAverageMinMaxEstimator):
        fast = collect_ranges(many, tensors, dataset, lambda _, make=make: make())["h"]
        slow = collect_ranges(one, tensors, dataset, lambda _, make=make: make())["h"]
        assert fast == pytest.approx(slow, rel=1e-6), make.__name__


def batch_baked_in_copy_of(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with x reshaped to [1, 4] first: the same values for batch 1, no other batch possible."""
    shape = numpy_helper.from_array(np.array([1, 4], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["x1"]), helper.make_node("MatMul", ["x1", "w"], ["h"]),
             helper.make_node("Relu", ["h"], ["y"])]  # fmt: skip
    return graph_model(nodes, 1, [1, 3], [shape])
