"""The keys of results.json that the reports read, in one place: the stage that writes a key writes exactly this.

Always present (the spine): ``recipe``, ``inputs``, ``environment``, ``steps``, ``artifacts[]`` with ``name``,
``format``, ``precision``, ``path``, ``sha256``, ``bytes``, ``parent``, ``inputs``/``outputs`` (TensorSpec),
``details``, ``verification``, ``accuracy`` ({top1, samples, runtime} or null) and ``bench`` (device_bench records).

Optional: a report shows a section only when its key is there. Figures are plain floats; percentages are not
pre-multiplied (a top-1 of 97.2% is 0.972), except where a key's name says ``_pp`` (percentage points).

- ``artifacts[].layer_sqnr``: list of ``LayerSqnr`` - quantization error of each layer's output in this (integer)
  artifact against the same tensor in its float parent, SQNR = 10 log10(signal power / error power) in dB.
  Written by the quantization stage.
- ``artifacts[].sparsity``: list of ``LayerSparsity`` - the fraction (0..1) of zero weights per layer. Written by
  the pruning stage.
- ``sensitivity``: ``Sensitivity`` (top level) - how much quantizing one layer alone (everything else float) hurts,
  one figure per layer; the mixed-precision search reads it. Written by the sensitivity analysis.
- ``artifacts[].robustness``: ``Robustness`` - top-1 under input perturbations, measured in the artifact's own
  runtime (edgepack/robustness.py).
- ``gate``: ``GateOutcome`` (top level) - the recipe's ``gate:`` budgets checked at the end of ``pack``
  (edgepack/gate.py).
"""

from __future__ import annotations

from typing import TypedDict


class LayerSqnr(TypedDict):
    layer: str  # the layer's name in the artifact (ONNX node or TFLite tensor name)
    op: str | None  # its op type (Conv, FULLY_CONNECTED, ...), when known
    sqnr_db: float


class LayerSparsity(TypedDict):
    layer: str
    fraction: float  # zero weights / all weights, 0..1


class SensitivityLayer(TypedDict):
    layer: str
    value: float


class Sensitivity(TypedDict):
    artifact: str | None  # the float artifact the analysis ran on
    metric: str  # what 'value' is, e.g. "top-1 drop (pp) with only this layer in int8"
    unit: str  # "pp", "dB", ...
    higher_is_worse: bool  # True for a drop, False for an SQNR
    layers: list[SensitivityLayer]


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
    budget: str  # "max_accuracy_drop_pp" | "max_latency_ms" | "max_bytes"
    limit: float
    value: float | None  # None: the figure was not measured (a missing figure fails its budget)
    message: str  # one line, printed by the CLI


class GateOutcome(TypedDict):
    passed: bool
    budgets: dict  # the GateConfig that was checked
    checked: list[str]  # artifact names
    violations: list[GateViolation]


OPTIONAL_ARTIFACT_KEYS = ("layer_sqnr", "sparsity", "robustness")
OPTIONAL_RUN_KEYS = ("sensitivity", "gate")
