"""The keys of results.json that the reports read, in one place: the stage that writes a key writes exactly this.

Always present (the spine): ``recipe``, ``inputs``, ``environment``, ``steps``, ``artifacts[]`` with ``name``,
``format``, ``precision``, ``path``, ``sha256``, ``bytes``, ``parent``, ``inputs``/``outputs`` (TensorSpec),
``details``, ``verification``, ``accuracy`` ({top1, samples, runtime} or null) and ``bench`` (device_bench records).

``verification`` (converters/verify.py ``Verification``): per output ``max_abs_error``, ``mean_abs_error``,
``cosine_similarity``, ``sqnr_db`` and the tolerance it was held to (``tolerance``: the max abs error allowed of a
float file; ``min_cosine``: the cosine floor of an integer file); ``top1_agreement`` and, for integer files of a
classifier, ``min_top1_agreement``; ``passed``. An artifact in results.json always passed: one that did not failed
the run.

Optional: a report shows a section only when its key is there. Figures are plain floats; percentages are not
pre-multiplied (a top-1 of 97.2% is 0.972), except where a key's name says ``_pp`` (percentage points).

- ``artifacts[].layer_sqnr``: list of ``LayerSqnr`` - quantization error of each layer's output in this (integer)
  artifact against the same tensor in its float parent, SQNR = 10 log10(signal power / error power) in dB.
  Written by the quantization stage.
- ``artifacts[].sparsity``: list of ``LayerSparsity`` - the fraction (0..1) of zero weights per layer, read from the
  artifact's own file (the module for torch); and ``artifacts[].gzip_bytes``: the file gzip-compressed (a pruned dense
  tensor only shrinks when compressed). Written by the pipeline for every artifact descending from a prune stage.
- ``artifacts[].details`` of a torch model written by a compression stage: ``structure`` (the edits that rebuild it
  from the source: channels_removed, low_rank, fold_batchnorm), ``parameters``, and the stage's record: ``pruning``
  (``layers`` {layer: zero fraction} or ``channels`` {params/MACs before/after, channels per layer}), ``low_rank``
  (per-layer rank, params, energy kept or why skipped), ``finetune`` (steps, losses, teacher), ``qat`` (scheme,
  trained ``ranges`` keyed by ONNX tensor name, ``simulated_accuracy``, ``weight_bits``, ``packed_weight_bytes``).
- ``sensitivity``: ``Sensitivity`` (top level) - how much quantizing one layer alone (everything else float) hurts,
  one figure per layer, most costly first; the mixed-precision search reads it. Written by the quantize stage when it
  has an ``accuracy_target`` (calibration/sensitivity.py), in its artifacts' ``details.sensitivity``; the first one.
- ``artifacts[].details.mixed_precision``: ``MixedPrecisionRecord`` - which layers that integer artifact keeps high,
  at what precision and why, and whether the accuracy target was met (measured in the artifact's own runtime for
  TFLite, in onnxruntime for ONNX); ``best_effort`` when it was written although it misses the target.
- ``artifacts[].details.macs``: ``MacShares`` - every integer file the quantize stage writes: its multiply-
  accumulates (Conv/Gemm/MatMul at the recipe's input shapes) and the fraction run in int8, int16 (16x8) and float
  (calibration/precision.py; a file runs at least half of them at its own precision, or is not written).
- ``artifacts[].details.bias_correction``: the layers whose bias was corrected in this file, and
  ``float_bias_kept``: those that run float in it and keep their float bias (calibration/bias_correction.py).
- ``artifacts[].details.calibration_samples``: ``fitted`` (the samples the ranges, weight rounding and biases were
  computed on) and ``held_out`` (those set aside for method auto, bias correction auto and the mixed-precision
  search; 0 when nothing needed them).
- ``artifacts[].details.bias_correction_choice``: with ``bias_correction: auto`` (the default), ``applied`` and
  either ``held_out_error`` {with, without} and ``measured_on``, or ``why`` it was not tried (the weights rounded by
  gptq/adaround, or too few calibration samples to hold some out).
- ``artifacts[].details.gptq`` / ``details.adaround``: the weight rounding of the integer files: ``layers`` (per
  Conv/Gemm/MatMul: ``node``, the layer's output error with nearest rounding and with the one chosen, ``changed``:
  the share of its integers that differ from nearest) and ``seconds`` (calibration/gptq.py, calibration/adaround.py).
- ``artifacts[].details.range_methods``: the ONNX integer file of a calibration with ``method: auto``: ``counts``
  {method: tensors}, ``tensors`` {activation tensor: the method its range came from}, ``plan`` (``per_tensor`` or
  the one method kept everywhere) and ``output_error`` {plan: its outputs' distance from float on held-out
  calibration samples}, ``scored_on`` (how the choice was measured), or ``fallback`` when the calibration data was
  too small to hold samples out (calibration/auto_ranges.py).
- ``artifacts[].bench[].verification_on_target``: each benchmark record of a remote target (ssh://, adb://) of an
  ONNX or TFLite file: the verification samples run on the device with the benchmark, held to the reference as
  ``verification`` is (the same keys: per output ``max_abs_error``, ``mean_abs_error``, ``cosine_similarity``,
  ``sqnr_db``, ``tolerance``/``min_cosine``; ``top1_agreement``, ``min_top1_agreement``, ``samples``, ``runtime``,
  ``runtime_version`` on the device, ``passed``), and ``host_run``: the device's outputs against this host's run of
  the same file (edgepack/target_verify.py ``agreement``: ``host`` facts, per output ``max_abs_error``,
  ``mean_abs_error``, ``cosine_similarity``, ``sqnr_db``, ``output_step`` (None for a float output), ``max_steps``,
  ``within_one_step``). A record in results.json always passed: a float file outside ``verify.float_tolerance``,
  an integer file outside ``verify.integer_tolerance`` or more than one output step from the host run failed the
  run (edgepack/running/on_target.py). Host records have no such key.
- ``artifacts[].robustness``: ``Robustness`` - top-1 under input perturbations, measured in the artifact's own
  runtime (edgepack/robustness.py).
- ``recipe_given`` (top level): the recipe keys the user gave (file and ``--set``; ``recipe`` has every default
  filled in): ``edgepack report A B`` lists the changes of these keys only.
- ``gate``: ``GateOutcome`` (top level) - the recipe's ``gate:`` budgets checked at the end of ``pack``
  (edgepack/gate.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NotRequired, TypedDict

from edgepack.core.errors import UserError


class LayerSqnr(TypedDict):
    layer: str  # the layer's name in the artifact (ONNX node or TFLite tensor name)
    op: str | None  # its op type (Conv, FULLY_CONNECTED, ...), when known
    sqnr_db: float
    module: NotRequired[str]  # the torch module it came from, where the exporter recorded it (ONNX files)


class LayerSparsity(TypedDict):
    layer: str  # the module (torch), node (ONNX) or op output tensor (TFLite) name
    fraction: float  # zero weights / all weights, 0..1
    elements: int
    shape: list[int]  # the stored weight's shape (structured pruning shows here)


class SensitivityLayer(TypedDict):
    layer: str
    value: float


class Sensitivity(TypedDict):
    artifact: str | None  # the float artifact the analysis ran on
    metric: str  # what 'value' is, e.g. "top-1 drop (pp) with only this layer in int8"
    unit: str  # "pp", "dB", ...
    higher_is_worse: bool  # True for a drop, False for an SQNR
    layers: list[SensitivityLayer]


class MixedPrecisionLayer(TypedDict):
    layer: str  # the ONNX node computing the layer (the Conv of Conv+Relu)
    precision: str  # in this artifact: "int16" or "float"
    onnx: str  # the same decision in each file: ONNX int16 (or float) ...
    tflite: str  # ... TFLite float (one file cannot mix int8 and int16)
    why: str  # its rank and measured cost with only it quantized
    top1_drop_pp: float | None
    output_sqnr_db: float


class MixedPrecisionRecord(TypedDict):
    target: dict  # AccuracyTarget: max_accuracy_drop_pp, min_output_sqnr_db (used without labels), best_effort
    target_met: bool
    best_effort: bool  # written although its plan missed the target (accuracy_target.best_effort)
    searched_in: str
    samples: int
    layers: list[MixedPrecisionLayer]
    steps: list[dict]  # {kept_high: [layer, ...], top1_drop_pp, output_sqnr_db, own_precision_macs: {onnx, tflite}}
    written_step: int  # the index in ``steps`` of the plan this file holds
    measured: dict  # {top1_drop_pp, output_sqnr_db} of this artifact


class MacShares(TypedDict):
    total: int  # multiply-accumulates of one inference
    int8: float | None  # fractions of ``total`` (None when the model has no Conv/Gemm/MatMul)
    int16: float | None
    float: float | None


class RobustnessCondition(TypedDict):
    kind: str  # "gaussian_noise" | "brightness" | "contrast"
    label: str  # e.g. "noise 20 dB", "brightness +0.1"
    value: float  # SNR in dB, brightness shift (fraction of the input range) or contrast factor
    top1: float


class Robustness(TypedDict):
    clean_top1: float
    samples: int
    runtime: str
    conditions: list[RobustnessCondition]


class GateViolation(TypedDict):
    artifact: str
    budget: str  # "max_accuracy_drop_pp" | "max_robustness_drop_pp" | "max_latency_ms" | "max_bytes"
    limit: float
    value: float | None  # None: the figure was not measured (a missing figure fails its budget)
    message: str  # one line, printed by the CLI


class GateOutcome(TypedDict):
    passed: bool
    budgets: dict  # the GateConfig that was checked
    checked: list[str]  # artifact names
    violations: list[GateViolation]


OPTIONAL_ARTIFACT_KEYS = ("layer_sqnr", "sparsity", "gzip_bytes", "robustness")
OPTIONAL_RUN_KEYS = ("sensitivity", "gate")


def read_results(run_dir) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist: RUN_DIR must be a folder written by 'edgepack pack'")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-run 'edgepack pack' to rewrite it") from e
    _check_spine(path, results)
    return results


SPINE = ("recipe", "inputs", "environment", "steps", "artifacts")
ARTIFACT_SPINE = ("name", "format", "precision", "path", "sha256", "bytes", "parent", "inputs", "outputs", "details",
                  "verification", "accuracy", "bench")  # fmt: skip


def _check_spine(path: Path, results) -> None:
    """The keys every results.json has (the module docstring): a file without them was not written by 'pack'."""
    again = "; it was not written by this edgepack's 'pack': re-run 'edgepack pack' to rewrite it"
    if not isinstance(results, dict):
        raise UserError(f"{path} holds a {type(results).__name__}, not the results mapping{again}")
    missing = [k for k in SPINE if k not in results]
    if missing:
        raise UserError(f"{path} lacks the key(s) {missing}{again}")
    if not isinstance(results["artifacts"], list) or not all(isinstance(a, dict) for a in results["artifacts"]):
        raise UserError(f"{path}: 'artifacts' is not a list of artifact records{again}")
    for i, artifact in enumerate(results["artifacts"]):
        lacking = [k for k in ARTIFACT_SPINE if k not in artifact]
        if lacking:
            raise UserError(f"{path}: artifacts[{i}] ({artifact.get('name', '?')}) lacks the key(s) {lacking}{again}")
