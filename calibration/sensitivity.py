"""Sensitivity analysis and mixed precision: which layers cost the most to quantize, and which to keep high.

A *layer* is one calibrated point of the plan: the node that computes a calibrated activation (the Conv of a fused
Conv+Relu), its weights, and every tensor that shares its grid (a max pool or flatten after it).

Sensitivity quantizes one layer at a time, everything else float. Skipping one layer at a time (everything else
int8) costs the same, one model per layer, but tells less: when two layers are both bad, skipping either alone
recovers little, so both look harmless, while quantizing each alone shows each one's own cost. Interactions are
not ignored: the greedy search measures every mixed model it considers, with everything else quantized.

Every candidate is an ONNX QDQ model built in memory from the ONE calibration (ranges never change: a layer kept at
int16 gets the int16 grid of its calibrated range) and run in onnxruntime. The metric is the top-1 drop in
percentage points against the float model in the same runtime when the data has labels, else the SQNR of the
outputs. The search runs on the data it is given: the stage passes calibration samples held out from fitting the
ranges (calibration/held_out.py), never the evaluation data, and scores top-1 against the float model's classes, so
the drop it reports is measured, not predicted, and the evaluation figures after it are not tuned on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np
import onnx
from edgepack.calibration.collect import model_outputs
from edgepack.calibration.localise import SqnrSums
from edgepack.calibration.precision import (
    MIN_OWN_PRECISION_MACS,
    carries_its_name,
    integer_nodes,
    mac_fractions,
    node_macs,
    node_precisions,
    own_precision,
)
from edgepack.calibration.ptq import Calibration, without_tensors
from pydantic import BaseModel, ConfigDict, Field

from edgepack.core.dataset import ArrayDataset
from edgepack.core.errors import QuantizationError
from edgepack.core.kernels import FUSED_ACTIVATIONS, FUSING_PRODUCERS
from edgepack.core.quantization import QuantPlan, activation_params


class HighPrecision(StrEnum):
    INT16 = "int16"  # the layer's activations on the int16 grid of the same range, weights int8 (ONNX only)
    FLOAT = "float"  # the layer's activations and weights stay float


class AccuracyTarget(BaseModel):
    """What mixed precision must reach; layers are kept at a higher precision, most sensitive first, until it does."""

    model_config = ConfigDict(extra="forbid")
    max_accuracy_drop_pp: float = Field(0.5, ge=0, description="Classifiers: the largest share of held-out "
        "calibration samples, in percentage points, whose top-1 class differs from the float model's (it bounds the "
        "top-1 drop against float).")  # fmt: skip
    min_output_sqnr_db: float = Field(30.0, description="Used instead when the task is not classification: "
                                      "smallest SQNR of the outputs against float, in dB.")  # fmt: skip
    samples: int | None = Field(None, gt=0, description="Search on the first N held-out calibration samples only "
        "(default: all held out, calibration/held_out.py); each layer costs one pass over them in "
        "onnxruntime.")  # fmt: skip
    best_effort: bool = Field(False, description="When no plan whose files stay integer (at least half of their "
        "MACs at the file's precision, calibration/precision.py) meets the target, write the best such plan, "
        "named as missing the target in its details and the reports; default: stop with an error naming the "
        "best figure reached, before anything is written.")  # fmt: skip


@dataclass
class Layer:
    name: str  # the computing node (the Conv of a fused Conv+Relu)
    op: str
    activation: str  # its calibrated output
    tensors: list[str]  # the activation and every tensor sharing its grid
    weights: list[str]  # its weight initializers
    reads: str | None  # the data input of the computing node


@dataclass
class Score:
    output_sqnr_db: float
    top1_drop_pp: float | None = None  # None without labels

    def as_json(self) -> dict:
        return {"top1_drop_pp": _rounded(self.top1_drop_pp), "output_sqnr_db": _rounded(self.output_sqnr_db)}


@dataclass
class LayerCost:
    layer: Layer
    score: Score  # with only this layer quantized


@dataclass
class MixedPrecision:
    """The outcome of the search: ``kept`` are the layers at ``high`` precision in the ONNX file."""

    target: AccuracyTarget
    ranking: list[LayerCost]
    high: HighPrecision
    kept: list[Layer]
    steps: list[tuple[list[str], Score]]  # (layers kept high, measured score), the all-quantized model first
    samples: int
    met: bool = False
    tflite_float: dict[str, str] = field(default_factory=dict)  # layer -> why it is float in TFLite
    integer_macs: list[dict[str, float | None]] = field(default_factory=list)  # per step: format -> share of MACs
    # at the file's own precision (settle_plan)
    written_step: int | None = None  # the step the files are written from
    best_effort: bool = False  # written although it misses the target (AccuracyTarget.best_effort)


def plan_layers(model: onnx.ModelProto, plan: QuantPlan) -> list[Layer]:
    """Every calibrated activation computed by a node, as a layer, in graph order."""
    producers = {out: node for node in model.graph.node for out in node.output}
    quantized = set(plan.quantized_tensors())
    layers = []
    for tensor in plan.activations:
        if tensor not in producers:
            continue  # a graph input: quantizing it belongs to its consumers
        node = _computing_node(producers[tensor], producers, quantized)
        nodes = {node.name, producers[tensor].name}
        layers.append(Layer(name=node.name or tensor, op=node.op_type, activation=tensor,
                            tensors=[tensor, *(t for t, source in plan.shared.items() if source == tensor)],
                            weights=[w.initializer for w in plan.weights if w.node in nodes],
                            reads=node.input[0] if node.input else None))  # fmt: skip
    return layers


def _computing_node(node: onnx.NodeProto, producers: dict, quantized: set[str]) -> onnx.NodeProto:
    """A Relu/Clip whose input is a Conv/Gemm/... output fused away (not quantized) is that node's activation."""
    source = producers.get(node.input[0]) if node.input else None
    fused = node.op_type in FUSED_ACTIVATIONS and source is not None and source.op_type in FUSING_PRODUCERS
    return source if fused and node.input[0] not in quantized else node


def only_layer(calibration: Calibration, layer: Layer) -> Calibration:
    """The calibration restricted to one layer: its weights and output quantized, everything else float."""
    plan = calibration.plan
    only = QuantPlan(activations=[layer.activation], shared={t: layer.activation for t in layer.tensors[1:]},
                     weights=[w for w in plan.weights if w.initializer in layer.weights],
                     biases=[b for b in plan.biases if b.weight in layer.weights])  # fmt: skip
    return replace(calibration, plan=only, activations={t: calibration.activations[t] for t in layer.tensors})


def with_layers_high(calibration: Calibration, layers: list[Layer], high: HighPrecision) -> Calibration:
    """The same calibration, ``layers`` at int16 (their calibrated ranges on the int16 grid) or float."""
    tensors = {t for layer in layers for t in layer.tensors}
    if high == HighPrecision.INT16:
        activations = dict(calibration.activations)
        for layer in layers:
            params = activation_params(*calibration.ranges[layer.activation], "int16")
            activations |= {t: params for t in layer.tensors}
        return replace(calibration, activations=activations)
    return without_tensors(calibration, tensors, {w for layer in layers for w in layer.weights})


class RuntimeScorer:
    """Scores quantized candidates against the float model, both run in onnxruntime on the same samples."""

    def __init__(self, float_model: onnx.ModelProto, dataset: ArrayDataset, *, unsigned_activations: bool = True,
                 per_channel_weights: bool = True, written_from: Callable[[set[str]], onnx.ModelProto] | None = None,
                 top1_of_float: bool = False):  # fmt: skip
        """``top1_of_float``: score top-1 against the float model's classes (its top-1 is then 100%, and a
        candidate's drop is the share of samples whose class it changes) instead of ``dataset.labels``.
        ``written_from(integer nodes)``: the model a candidate's file is written from (weights rounded, biases
        corrected where its layers run int8: FloatPreparation.model_for); default ``float_model`` itself."""
        self.model, self.dataset, self.written_from = float_model, dataset, written_from
        self.writer_options = {"unsigned_activations": unsigned_activations, "per_channel_weights": per_channel_weights}
        self.reference = self.outputs(float_model)  # the float model's, never the bias-corrected one's
        self.output = float_model.graph.output[0].name
        self.labels = self._classes(self.reference) if top1_of_float else dataset.labels
        self.float_top1 = None if self.labels is None else self._top1(self.reference)
        self.macs = node_macs(float_model, {name: [1, *a.shape[1:]] for name, a in dataset.inputs.items()})

    def outputs(self, model: onnx.ModelProto) -> dict[str, np.ndarray]:
        """Many samples a call where the batch can be freed: one candidate costs one pass over the data."""
        return model_outputs(model, self.dataset)

    def quantized_from(self, calibration: Calibration) -> onnx.ModelProto:
        """The float model a file of ``calibration`` is written from."""
        if self.written_from is None:
            return self.model
        return self.written_from(integer_nodes(self.model, calibration))

    def score(self, calibration: Calibration) -> Score:
        from edgepack.converters.qdq import build_qdq_model

        model, _ = build_qdq_model(self.quantized_from(calibration), calibration.plan, calibration.activations,
                                   **self.writer_options)  # fmt: skip
        return self.score_outputs(self.outputs(model))

    def score_outputs(self, outputs: dict[str, np.ndarray]) -> Score:
        sqnr = output_sqnr_db(self.reference, outputs)
        if self.float_top1 is None:
            return Score(sqnr)
        return Score(sqnr, (self.float_top1 - self._top1(outputs)) * 100)

    def _classes(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return outputs[self.output].reshape(len(self.dataset), -1).argmax(1)

    def _top1(self, outputs: dict[str, np.ndarray]) -> float:
        return float(np.mean(self._classes(outputs) == self.labels))


def output_sqnr_db(reference: dict[str, np.ndarray], measured: dict[str, np.ndarray]) -> float:
    """SQNR over every output together: 10 log10(sum reference^2 / sum error^2), as calibration/localise.py's."""
    sums = SqnrSums()
    for name, values in reference.items():
        sums.add(values, measured[name])
    return sums.sqnr_db()


def rank_layers(calibration: Calibration, layers: list[Layer], scorer: RuntimeScorer) -> list[LayerCost]:
    """Most costly first: by top-1 drop when there are labels (ties broken by output SQNR), else by SQNR."""
    costs = [LayerCost(layer, scorer.score(only_layer(calibration, layer))) for layer in layers]
    return sorted(costs, key=lambda c: (-(c.score.top1_drop_pp or 0.0), c.score.output_sqnr_db))


def meets(score: Score, target: AccuracyTarget) -> bool:
    if score.top1_drop_pp is not None:
        return score.top1_drop_pp <= target.max_accuracy_drop_pp + 1e-9
    return score.output_sqnr_db >= target.min_output_sqnr_db


def search_mixed_precision(calibration: Calibration, scorer: RuntimeScorer, target: AccuracyTarget) -> MixedPrecision:
    """Rank the layers, then keep the most sensitive at a higher precision, one more at a time, until the measured
    score meets ``target`` (or every layer is kept high: then ``met`` says it was missed)."""
    layers = plan_layers(scorer.model, calibration.plan)
    high = HighPrecision.INT16 if calibration.scheme.activation_dtype == "int8" else HighPrecision.FLOAT
    result = MixedPrecision(target, rank_layers(calibration, layers, scorer), high, [], [], len(scorer.dataset))
    score = scorer.score(calibration)
    result.steps.append(([], score))
    for cost in result.ranking:
        if meets(score, target):
            break
        result.kept.append(cost.layer)
        score = scorer.score(with_layers_high(calibration, result.kept, high))
        result.steps.append(([layer.name for layer in result.kept], score))
    result.met = meets(score, target)
    result.tflite_float = tflite_float_layers(layers, result.kept)
    return result


@dataclass
class FilePlans:
    """What each file of one plan is written from."""

    onnx: Calibration  # the kept layers at ``high``
    tflite: Calibration  # the kept layers float, and the layers they take along (``tflite_float``)
    tflite_float: dict[str, str]


def file_plans(calibration: Calibration, layers: list[Layer], kept: list[Layer], high: HighPrecision) -> FilePlans:
    tflite_float = tflite_float_layers(layers, kept)
    tflite = without_tensors(calibration, tflite_float_tensors(layers, tflite_float))
    return FilePlans(with_layers_high(calibration, kept, high), tflite, tflite_float)


def settle_plan(result: MixedPrecision, calibration: Calibration, model: onnx.ModelProto, macs: dict[str, int],
                formats: list[str]) -> MixedPrecision:  # fmt: skip
    """The step the files are written from: the first that meets the target with every file in ``formats`` still
    carrying its integer name (calibration/precision.py); else, with ``best_effort``, the best-scoring step whose
    files do; else a QuantizationError naming the best figure reached, raised before anything is written."""
    layers = plan_layers(model, calibration.plan)
    dtype = calibration.scheme.activation_dtype
    shares = [_own_shares(model, file_plans(calibration, layers, _kept_at(result, step), result.high), macs, dtype)
              for step in range(len(result.steps))]  # fmt: skip
    integer = [step for step, share in enumerate(shares) if all(carries_its_name(share[f]) for f in formats)]
    reaching = [step for step in integer if meets(result.steps[step][1], result.target)]
    if not reaching and not (result.target.best_effort and integer):
        raise QuantizationError(_unreachable(result, shares, integer, formats, dtype))
    chosen = reaching[0] if reaching else min(integer, key=lambda step: _worse_first(result.steps[step][1]))
    kept = _kept_at(result, chosen)
    return replace(result, kept=kept, met=bool(reaching), tflite_float=tflite_float_layers(layers, kept),
                   integer_macs=shares, written_step=chosen, best_effort=not reaching)  # fmt: skip


def _kept_at(result: MixedPrecision, step: int) -> list[Layer]:
    """Step k keeps the k most sensitive layers high (step 0: none)."""
    return [cost.layer for cost in result.ranking[:step]]


def _own_shares(model: onnx.ModelProto, plans: FilePlans, macs: dict[str, int], dtype: str) -> dict:
    own = own_precision(dtype)
    return {fmt: mac_fractions(macs, node_precisions(model, getattr(plans, fmt)))[own] for fmt in ("onnx", "tflite")}


def _worse_first(score: Score) -> tuple:
    """Sort key, best score first: the top-1 drop when there are labels (then SQNR), else the SQNR."""
    return (score.top1_drop_pp if score.top1_drop_pp is not None else 0.0, -score.output_sqnr_db)


def _unreachable(result: MixedPrecision, shares: list[dict], integer: list[int], formats: list[str],
                 dtype: str) -> str:  # fmt: skip
    own, target = own_precision(dtype), _target_text(result)
    best = min(range(len(result.steps)), key=lambda step: _worse_first(result.steps[step][1]))
    head = (f"accuracy_target {target} cannot be reached with files that stay {own} (at least "
            f"{MIN_OWN_PRECISION_MACS:.0%} of their MACs {own}): plain {own} measured "
            f"{_figure(result.steps[0][1])}; the best plan, {_plan_text(result, best, shares, formats, own)}, "
            f"reached {_figure(result.steps[best][1])}")  # fmt: skip
    if not integer:
        return head + "; no plan keeps its files integer: keep fewer nodes float (skip_nodes). Nothing was written"
    chosen = min(integer, key=lambda step: _worse_first(result.steps[step][1]))
    if chosen != best:
        head += (f"; the best plan that stays {own}, {_plan_text(result, chosen, shares, formats, own)}, reached "
                 f"{_figure(result.steps[chosen][1])}")  # fmt: skip
    return (f"{head}. Nothing was written. Lower the target (accuracy_target.{_target_key(result)} "
            f"to {_reachable_target(result.steps[chosen][1])}), or set accuracy_target.best_effort: true to write "
            "that plan, named as missing the target")  # fmt: skip


def _plan_text(result: MixedPrecision, step: int, shares: list[dict], formats: list[str], own: str) -> str:
    shown = [(f, shares[step][f]) for f in formats if shares[step][f] is not None]
    share = ", ".join(f"{value:.0%} in {'ONNX' if f == 'onnx' else 'TFLite'}" for f, value in shown)
    macs = f" ({own} MACs: {share})" if share else ""
    return f"{step} of {len(result.ranking)} layers kept {result.high}{macs}"


def _labelled(result: MixedPrecision) -> bool:
    return result.steps[0][1].top1_drop_pp is not None


def _target_key(result: MixedPrecision) -> str:
    return "max_accuracy_drop_pp" if _labelled(result) else "min_output_sqnr_db"


def _target_text(result: MixedPrecision) -> str:
    target = result.target
    if _labelled(result):
        return f"top-1 drop <= {target.max_accuracy_drop_pp} pp"
    return f"output SQNR >= {target.min_output_sqnr_db} dB"


def _figure(score: Score) -> str:
    if score.top1_drop_pp is not None:
        return f"{score.top1_drop_pp:.2f} pp top-1 drop"
    return f"{score.output_sqnr_db:.1f} dB output SQNR"


def _reachable_target(score: Score) -> str:
    """The figure rounded the way that keeps it met: a drop up, an SQNR down."""
    if score.top1_drop_pp is not None:
        return f"{math.ceil(score.top1_drop_pp * 100 - 1e-6) / 100:.2f}"
    return f"{math.floor(score.output_sqnr_db * 10 + 1e-6) / 10:.1f}"


def tflite_float_layers(layers: list[Layer], kept: list[Layer]) -> dict[str, str]:
    """Layer -> why it is float in the TFLite file. A TFLite file cannot mix int8 and int16, so a layer kept high
    is float there; and where the converter gives an op its input's grid (a mean, a pad, ...), a float output needs
    a float input too, or the converter would invent that output's grid: the layer feeding it is float as well."""
    from edgepack.core.kernels import INPUT_GRID_OPS

    owner = {t: layer for layer in layers for t in layer.tensors}
    reasons = {layer.name: "kept high; TFLite cannot mix int8 and int16 in one file" for layer in kept}
    pending = list(kept)
    while pending:
        layer = pending.pop()
        feeder = owner.get(layer.reads)
        if layer.op in INPUT_GRID_OPS and feeder is not None and feeder.name not in reasons:
            reasons[feeder.name] = f"feeds {layer.name} ({layer.op}), to which the converter gives its input's grid"
            pending.append(feeder)
    return reasons


def tflite_float_tensors(layers: list[Layer], float_layers: dict[str, str]) -> set[str]:
    return {t for layer in layers if layer.name in float_layers for t in layer.tensors}


def sensitivity_record(result: MixedPrecision, artifact: str) -> dict:
    """results.json's ``sensitivity`` (edgepack/results_format.py ``Sensitivity``)."""
    labelled = result.steps[0][1].top1_drop_pp is not None
    metric = "top-1 drop" if labelled else "output SQNR"
    return {
        "artifact": artifact,
        "metric": f"{metric} with only this layer quantized ({result.samples} held-out calibration samples, "
                  "onnxruntime)",
        "unit": "pp" if labelled else "dB",
        "higher_is_worse": labelled,
        "layers": [{"layer": c.layer.name, "value": _rounded(_value(c.score))} for c in result.ranking],
    }


SEARCHED_ON = ("held-out calibration samples (never the evaluation data); top-1 against the float model's classes, "
               "or output SQNR against float")


def mixed_precision_record(result: MixedPrecision, file_format: str, measured: Score | None = None) -> dict:
    """What one artifact's details say: which layers are kept high, at what precision, why; and the outcome."""
    costs = {c.layer.name: c.score for c in result.ranking}
    rank = {c.layer.name: i + 1 for i, c in enumerate(result.ranking)}
    kept = [layer.name for layer in result.kept]
    names = kept + [n for n in result.tflite_float if n not in kept]  # TFLite may need more float: listed in both
    layers = [_layer_entry(n, rank[n], costs[n], result, file_format) for n in names]
    written = len(result.steps) - 1 if result.written_step is None else result.written_step
    return {
        "target": result.target.model_dump(),
        "target_met": result.met if measured is None else meets(measured, result.target),
        "best_effort": result.best_effort,  # written although the plan missed the target
        "searched_in": "onnxruntime, ONNX QDQ candidates built in memory from the one calibration",
        "samples": result.samples,
        "searched_on": SEARCHED_ON,
        "layers": layers,
        "steps": [_step_entry(result, step) for step in range(len(result.steps))],
        "written_step": written,
        "measured": (measured or result.steps[written][1]).as_json(),
    }


def _step_entry(result: MixedPrecision, step: int) -> dict:
    names, score = result.steps[step]
    shares = result.integer_macs[step] if result.integer_macs else None
    return {"kept_high": names, **score.as_json(), "own_precision_macs": shares}


def _layer_entry(name: str, rank: int, cost: Score, result: MixedPrecision, file_format: str) -> dict:
    onnx_precision = str(result.high) if name in {layer.name for layer in result.kept} else "int8"
    tflite_precision = "float" if name in result.tflite_float else "int8"
    why = f"rank {rank}: {_describe(cost)} with only this layer quantized"
    if name in result.tflite_float:
        why += f"; float in TFLite: {result.tflite_float[name]}"
    return {"layer": name, "precision": onnx_precision if file_format == "onnx" else tflite_precision,
            "onnx": onnx_precision, "tflite": tflite_precision, "why": why, **cost.as_json()}  # fmt: skip


def _describe(score: Score) -> str:
    if score.top1_drop_pp is None:
        return f"output SQNR {score.output_sqnr_db:.1f} dB"
    return f"top-1 drop {score.top1_drop_pp:.2f} pp (output SQNR {score.output_sqnr_db:.1f} dB)"


def _value(score: Score) -> float:
    return score.top1_drop_pp if score.top1_drop_pp is not None else score.output_sqnr_db


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
