"""``method: auto``: each activation tensor gets the range of whichever method quantizes it best on calibration
samples held out from fitting the ranges (calibration/held_out.py), never on the evaluation data.

Candidates: minmax, percentile, mse and entropy, all read from ONE sampled histogram per tensor (exact extremes), so
fitting them costs about what one histogram method costs. Entropy is computed there with the zeros counted (its own
estimator leaves them out); it is a candidate like the others and wins only where it scores best.

The score is the error each candidate's grid causes at the output of the next layer, to first order: the squared
error of the quantized tensor against its float values per channel, weighted by the squared weights with which the
Conv/Gemm layers reading the tensor take that channel (sum of W[:, c]^2), summed over the held-out samples (a
strided subsample of at most ``SCORED_VALUES`` values per tensor and call). A tensor no Conv/Gemm reads weighs its
channels equally. That costs one extra pass of the float model over the held-out samples. It is not end to end: a
greedy search measuring the model's output for every tensor and candidate would cost one pass per tensor and
candidate (some 200 on a MobileNet). Unlike the mse method alone, the score is measured on samples the range never
saw, and it weighs a channel by what the next layer makes of it: a clipped channel that the next layer amplifies
costs more than one it nearly ignores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from edgepack.calibration.attention_masks import FLAG_LIMIT, FlagAwareEstimator, SoftmaxInputEstimator
from edgepack.calibration.collect import read_tensors
from edgepack.calibration.estimators import EntropyEstimator, Method, MSEEstimator, PercentileEstimator
from edgepack.calibration.histogram import DEFAULT_SAMPLE_LIMIT, StreamingHistogram

from edgepack.core.dataset import ArrayDataset
from edgepack.core.quantization import activation_params

CANDIDATES = (Method.MINMAX, Method.PERCENTILE, Method.MSE, Method.ENTROPY)  # ties go to the first
SCORED_VALUES = 1 << 16
PER_TENSOR = "per_tensor"  # the whole-model plan of the per-tensor choices


class CandidateEstimator:
    """Every candidate method's range from one sampled histogram; ``range()`` is min-max until a choice is made."""

    def __init__(self, levels: int = 256, symmetric: bool = False, percentile: float = 99.99):
        self.histogram = StreamingHistogram(sample_limit=DEFAULT_SAMPLE_LIMIT)
        self.clippers = {Method.PERCENTILE: PercentileEstimator(percentile, symmetric),
                         Method.MSE: MSEEstimator(levels, symmetric),
                         Method.ENTROPY: EntropyEstimator(levels, symmetric)}  # fmt: skip
        for clipper in self.clippers.values():
            clipper.histogram = self.histogram  # observed once, read by each

    def observe(self, values: np.ndarray, samples: int = 1) -> None:
        self.histogram.observe(values, samples)

    def candidates(self) -> dict[str, tuple[float, float]]:
        minmax = self.histogram.observed_range()
        return {Method.MINMAX: minmax} | {m: clipper.range() for m, clipper in self.clippers.items()}

    def range(self) -> tuple[float, float]:
        return self.candidates()[Method.MINMAX]


def candidate_ranges(estimator) -> tuple[dict[str, tuple[float, float]], float | None]:
    """(method -> range, the floor below which values need no grid: a Softmax input's) through the attention-mask
    wrappers; a tensor holding flags has only its extremes (it stays float)."""
    if isinstance(estimator, FlagAwareEstimator):
        return ({Method.MINMAX: estimator.range()}, None) if estimator.flagged else candidate_ranges(estimator.inner)
    if isinstance(estimator, SoftmaxInputEstimator):
        inner, _ = candidate_ranges(estimator.inner)
        floor = estimator.floor if np.isfinite(estimator.floor) else None
        return {m: (lo if floor is None else max(lo, floor), hi) for m, (lo, hi) in inner.items()}, floor
    return estimator.candidates(), None


@dataclass
class RangeChoice:
    ranges: dict[str, tuple[float, float]]  # the chosen range of every tensor
    methods: dict[str, str]  # tensor -> the method chosen
    errors: dict[str, dict[str, float]] = field(default_factory=dict)  # tensor -> method -> weighted error
    held_out: int = 0  # samples scored on
    candidates: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # method -> every range
    plans: dict[str, float] = field(default_factory=dict)  # whole-model plan -> relative output error
    plan: str = PER_TENSOR

    def record(self) -> dict:
        """For results.json (``details.range_methods``)."""
        counts = {str(m): sum(chosen == m for chosen in self.methods.values()) for m in CANDIDATES}
        return {"scored_on": f"{self.held_out} held-out calibration samples: per tensor, each candidate's error at "
                             "the next layer's output, to first order; then the whole-model plan (the per-tensor "
                             "choices, or one method everywhere) whose outputs are closest to float's (softmax KL for "
                             "a classifier), a plan that clips only if at least 20% closer than min-max "
                             "(calibration/auto_ranges.py)",
                "plan": self.plan, "output_error": {p: float(f"{e:.4g}") for p, e in self.plans.items()},
                "counts": counts, "tensors": dict(self.methods)}  # fmt: skip

    def with_plan(self, plan: str, errors: dict[str, float]) -> RangeChoice:
        if plan == PER_TENSOR:
            return RangeChoice(self.ranges, self.methods, self.errors, self.held_out, self.candidates, errors, plan)
        ranges = self.candidates[plan]
        return RangeChoice(ranges, dict.fromkeys(ranges, plan), self.errors, self.held_out, self.candidates, errors,
                           plan)  # fmt: skip


END_TO_END_SAMPLES = 32  # held-out samples each whole-model plan runs on: one model pass per plan


def pick_plan(model: onnx.ModelProto, choice: RangeChoice, held_out: ArrayDataset, build,
              classifier: bool = False) -> RangeChoice:  # fmt: skip
    """The per-tensor scores are local; so the whole model is also run on the held-out samples with the per-tensor
    choices and with each single method everywhere (``build(ranges)``: the quantized model in memory), and the plan
    whose outputs are closest to float's is kept: the default is never worse than min-max everywhere on the held-out
    samples. Closest: for a ``classifier``, the mean KL divergence of the first output's softmax from float's (what
    decides the classes; the logits' squared error did not predict it on EfficientNet-Lite1), else the relative
    squared error over every output."""
    plans = {PER_TENSOR: choice.ranges} | {str(m): r for m, r in choice.candidates.items()}
    builders = {name: (lambda r=ranges: build(r)) for name, ranges in plans.items()
                if name == PER_TENSOR or ranges != choice.ranges}  # the same ranges: nothing new to measure
    errors = held_out_errors(model, builders, held_out, classifier)
    best = min(errors, key=errors.get)  # ties: the per-tensor plan, then CANDIDATES' order
    return choice.with_plan(best if _clips_enough_better(best, errors) else str(Method.MINMAX), errors)


CLIPPING_MARGIN = 0.8  # a plan that clips must bring the held-out error to this share of min-max's, or below


def _clips_enough_better(plan: str, errors: dict[str, float]) -> bool:
    """Held-out samples come from the calibration data itself, where a clipped range looks better than it is on new
    inputs, so a plan that clips replaces min-max (the one that never clips) only by a clear margin. Measured on
    EfficientNet-Lite0/-Lite1 (benchmarks/int8_defaults.py, 2 folds each): where mse everywhere was 14% better than
    min-max on held-out samples, its KL on photos the calibration never saw was 5x worse (0.045 against 0.0086);
    where the winner was 26-37% better, it kept its advantage there. No min-max entry: the per-tensor plan is
    min-max everywhere."""
    baseline = errors.get(str(Method.MINMAX))
    return plan == str(Method.MINMAX) or baseline is None or errors[plan] <= CLIPPING_MARGIN * baseline


def held_out_errors(model: onnx.ModelProto, builders: dict[str, Callable[[], onnx.ModelProto]],
                    held_out: ArrayDataset, classifier: bool = False) -> dict[str, float]:  # fmt: skip
    """Each candidate quantized model's distance from the float ``model`` on the first END_TO_END_SAMPLES held-out
    samples (see ``pick_plan``); built one at a time, so only one candidate is in memory."""
    from edgepack.calibration.collect import model_outputs

    samples = held_out.head(END_TO_END_SAMPLES)
    reference = model_outputs(model, samples)
    return {name: _output_error(reference, model_outputs(build(), samples), classifier)
            for name, build in builders.items()}  # fmt: skip


def _output_error(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray], classifier: bool) -> float:
    if classifier:
        first = next(iter(reference))
        count = len(reference[first])
        p, q = (_log_softmax(x[first].reshape(count, -1)) for x in (reference, outputs))
        return float(np.mean(np.sum(np.exp(p) * (p - q), axis=1)))
    return sum(float(np.sum((outputs[o] - r) ** 2) / max(np.sum(r.astype(np.float64) ** 2), 1e-30))
               for o, r in reference.items())  # fmt: skip


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def choose_ranges(model: onnx.ModelProto, estimators: dict, held_out: ArrayDataset, dtype: str,
                  symmetric: bool) -> RangeChoice:  # fmt: skip
    """Score every tensor's candidates on ``held_out`` and keep the best."""
    found = {t: candidate_ranges(e) for t, e in estimators.items()}
    weights = channel_weights(model, list(found))
    grids = {t: {m: activation_params(lo, hi, dtype, symmetric) for m, (lo, hi) in c.items()}
             for t, (c, _) in found.items()}  # fmt: skip
    sums = {t: dict.fromkeys(g, 0.0) for t, g in grids.items()}
    counts = dict.fromkeys(grids, 0)
    for batch in read_tensors(model, list(grids), held_out):
        for name in batch.values:
            values, weight = _scored_values(batch.real(name), found[name][1], weights.get(name))
            counts[name] += values.size
            for method, grid in grids[name].items():
                sums[name][method] += float(np.sum(weight * (grid.fake_quantize(values) - values) ** 2))
    errors = {t: {str(m): s / max(counts[t], 1) for m, s in by_method.items()} for t, by_method in sums.items()}
    methods = {t: str(min(CANDIDATES, key=lambda m: by_method.get(str(m), np.inf))) for t, by_method in errors.items()}
    ranges = {t: found[t][0][Method(m)] for t, m in methods.items()}
    candidates = {str(m): {t: c.get(m, c[Method.MINMAX]) for t, (c, _) in found.items()} for m in CANDIDATES}
    return RangeChoice(ranges, methods, errors, len(held_out), candidates)


def _scored_values(value: np.ndarray, floor: float | None, weights: np.ndarray | None) -> tuple[np.ndarray, object]:
    """(values to score, each one's weight): [samples, channels, positions] subsampled along the positions when
    ``weights`` (per channel, axis 1) apply, else flattened; flags (masks: -inf, finfo.min) left out."""
    value = np.asarray(value, dtype=np.float64)
    if weights is not None and value.ndim >= 2 and value.shape[1] == weights.size:
        grid = value.reshape(value.shape[0], value.shape[1], -1)
        stride = -(-grid.size // SCORED_VALUES)
        grid = grid[:, :, (stride - 1) // 2 :: stride] if stride > 1 else grid
        values, weight = grid, np.broadcast_to(weights[None, :, None], grid.shape)
    else:
        flat = value.reshape(-1)
        values, weight = (flat[:: -(-flat.size // SCORED_VALUES)] if flat.size > SCORED_VALUES else flat), None
    keep = np.abs(values) <= FLAG_LIMIT
    values = values[keep] if floor is None else np.maximum(values[keep], floor)  # below a Softmax floor: no matter
    return values, 1.0 if weight is None else weight[keep]


def channel_weights(model: onnx.ModelProto, tensors: list[str]) -> dict[str, np.ndarray]:
    """Tensor -> per input channel, the sum of the squared weights with which the Conv/Gemm nodes reading it (as
    their data input, with a constant weight) take that channel; normalised to mean 1. Tensors no such node reads
    are left out (their channels weigh the same)."""
    from onnx import numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    wanted, found = set(tensors), {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.input[0] not in wanted or node.input[1] not in initializers:
            continue
        per_channel = _input_channel_weights(node, numpy_helper.to_array(initializers[node.input[1]]))
        if per_channel is not None:
            previous = found.get(node.input[0])
            found[node.input[0]] = per_channel if previous is None or previous.size != per_channel.size else (
                previous + per_channel)  # fmt: skip
    return {t: w / w.mean() for t, w in found.items() if w.mean() > 0}


def _input_channel_weights(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray | None:
    squared = weight.astype(np.float64) ** 2
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        if attributes.get("transA", 0) or squared.ndim != 2:
            return None
        return squared.sum(axis=0) if attributes.get("transB", 0) else squared.sum(axis=1)
    groups = attributes.get("group", 1)
    out_channels, per_group = squared.shape[:2]
    by_group = squared.reshape(groups, out_channels // groups, per_group, -1).sum(axis=(1, 3))  # [groups, per_group]
    return by_group.reshape(-1)  # input channel g * per_group + j
