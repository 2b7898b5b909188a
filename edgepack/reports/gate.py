"""The CI gate: budgets on accuracy drop, robustness, latency and size, checked against a run's results.json only.

The recipe's ``gate:`` block is checked at the end of ``pack`` (the outcome lands in results.json under ``gate``);
``edgepack gate RUN_DIR --max-... `` checks any finished run. A figure that was not measured fails its budget:
a gate that passes because nothing was benchmarked would hide exactly what it is there to catch.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgepack.core.errors import UserError

DEPLOYABLE = ("onnx", "tflite")
BUDGETS = ("max_accuracy_drop", "max_robustness_drop", "max_latency_ms", "max_bytes")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str | int | float) -> int:
    """'2MB' -> 2_000_000, '512KiB' -> 524_288, 1000 -> 1000 (KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024)."""
    if isinstance(text, int | float):
        return int(text)
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size; write a number of bytes or e.g. 2MB, 512KB, 1.5MiB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


class GateConfig(BaseModel):
    """Budgets a run must meet; each is optional, at least one is given."""

    model_config = ConfigDict(extra="forbid")
    max_accuracy_drop: float | None = Field(
        None, ge=0, description="Largest top-1 drop from the source model, in percentage points (0.5: 97.2% -> 96.7%)."
    )
    max_robustness_drop: float | None = Field(
        None,
        ge=0,
        description="Largest top-1 drop from the source model under the same input perturbation (the recipe's "
        "robustness block: noise, brightness, contrast), in percentage points, over every perturbation: catches a "
        "quantized model that holds up on clean data but breaks under noise.",
    )
    max_latency_ms: float | None = Field(
        None, gt=0, description="Largest latency in ms (the latency_statistic) of every benchmark record checked."
    )
    latency_statistic: Literal["mean", "p50", "p90", "p99", "max"] = Field(
        "p50", description="Which latency figure max_latency_ms limits."
    )
    max_bytes: int | None = Field(
        None, gt=0, description="Largest artifact file: bytes, or a size such as 2MB (10^6) or 2MiB (2^20)."
    )
    target: str | None = Field(None, description="Check only benchmark records of this target (e.g. host).")
    artifacts: list[str] | None = Field(
        None, description="Check only these artifacts; default every deployable (ONNX, TFLite) artifact."
    )

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, value):
        return None if value is None else parse_size(value)

    @model_validator(mode="after")
    def _some_budget(self) -> GateConfig:
        if all(getattr(self, budget) is None for budget in BUDGETS):
            raise ValueError(f"a gate needs at least one of {', '.join(BUDGETS)}")
        return self


def evaluate_gate(results: dict, config: GateConfig) -> dict:
    """The ``GateOutcome`` record (edgepack/results_format.py): every violated budget, one entry each."""
    checked = _checked_artifacts(results, config)
    reference = results["artifacts"][0]
    violations = [v for a in checked for v in _violations(a, reference, config)]
    return {
        "passed": not violations,
        "budgets": config.model_dump(mode="json", exclude_none=True),
        "checked": [a["name"] for a in checked],
        "violations": violations,
    }


def _checked_artifacts(results: dict, config: GateConfig) -> list[dict]:
    by_name = {a["name"]: a for a in results["artifacts"]}
    if config.artifacts is None:
        return [a for a in results["artifacts"] if a["format"] in DEPLOYABLE]
    unknown = [name for name in config.artifacts if name not in by_name]
    if unknown:
        raise UserError(f"gate: no artifact named {', '.join(unknown)} in this run; it has {', '.join(by_name)}")
    return [by_name[name] for name in config.artifacts]


def _violations(artifact: dict, reference: dict, config: GateConfig) -> list[dict]:
    found = []
    if config.max_accuracy_drop is not None:
        found += _accuracy_violations(artifact, reference, config.max_accuracy_drop)
    if config.max_robustness_drop is not None:
        found += _robustness_violations(artifact, reference, config.max_robustness_drop)
    if config.max_latency_ms is not None:
        found += _latency_violations(artifact, config)
    if config.max_bytes is not None and artifact["bytes"] > config.max_bytes:
        message = f"size {human_bytes(artifact['bytes'])} exceeds the budget {human_bytes(config.max_bytes)}"
        found.append(_violation(artifact, "max_bytes", config.max_bytes, artifact["bytes"], message))
    return found


def _violation(artifact: dict, budget: str, limit: float, value: float | None, message: str) -> dict:
    return {"artifact": artifact["name"], "budget": budget, "limit": limit, "value": value,
            "message": f"{artifact['name']}: {message}"}  # fmt: skip


def _accuracy_violations(artifact: dict, reference: dict, limit_pp: float) -> list[dict]:
    ours, theirs = artifact.get("accuracy"), reference.get("accuracy")
    if not ours or not theirs:
        message = "top-1 was not measured (the recipe needs labelled data and task: classification)"
        return [_violation(artifact, "max_accuracy_drop_pp", limit_pp, None, message)]
    drop_pp = (theirs["top1"] - ours["top1"]) * 100
    if drop_pp <= limit_pp + 1e-9:  # a drop of exactly the budget passes despite float rounding
        return []
    message = (
        f"top-1 drop {drop_pp:.2f} pp ({theirs['top1']:.2%} -> {ours['top1']:.2%}) exceeds the budget {limit_pp:g} pp"
    )
    return [_violation(artifact, "max_accuracy_drop_pp", limit_pp, drop_pp, message)]


def _robustness_violations(artifact: dict, reference: dict, limit_pp: float) -> list[dict]:
    """The worst perturbation: the artifact's top-1 under it against the source model's under the same one."""
    ours, theirs = artifact.get("robustness"), reference.get("robustness")
    source = {c["label"]: c["top1"] for c in (theirs or {}).get("conditions", [])}
    drops = [((source[c["label"]] - c["top1"]) * 100, c) for c in (ours or {}).get("conditions", [])
             if c["label"] in source]  # fmt: skip
    if not drops:
        message = ("top-1 under perturbations was not measured (the recipe needs labelled data, task: "
                   "classification and a robustness block)")  # fmt: skip
        return [_violation(artifact, "max_robustness_drop_pp", limit_pp, None, message)]
    drop_pp, worst = max(drops, key=lambda d: d[0])
    if drop_pp <= limit_pp + 1e-9:
        return []
    message = (f"top-1 under {worst['label']} {drop_pp:.2f} pp below the source model's ({source[worst['label']]:.2%} "
               f"-> {worst['top1']:.2%}) exceeds the budget {limit_pp:g} pp")  # fmt: skip
    return [_violation(artifact, "max_robustness_drop_pp", limit_pp, drop_pp, message)]


def _latency_violations(artifact: dict, config: GateConfig) -> list[dict]:
    records = [b for b in artifact.get("bench") or [] if config.target in (None, b["target"])]
    stat, limit = config.latency_statistic, config.max_latency_ms
    if not records:
        where = f" on target {config.target!r}" if config.target else ""
        return [_violation(artifact, "max_latency_ms", limit, None, f"no benchmark record{where} to check")]
    found = []
    for record in records:
        value = record["latency_ms"].get(stat)
        where = f"on {record['target']} with {record['threads']} thread(s)"
        if value is None:
            found.append(_violation(artifact, "max_latency_ms", limit, None, f"latency {stat} not measured {where}"))
        elif value > limit:
            message = f"latency {stat} {value:.4g} ms {where} exceeds the budget {limit:g} ms"
            found.append(_violation(artifact, "max_latency_ms", limit, value, message))
    return found


def human_bytes(count: float) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.2f} {unit} ({int(count):,} bytes)"
    return f"{int(count):,} bytes"


def check_run(run_dir, overrides: dict) -> dict:
    """``edgepack gate RUN_DIR``: the recipe's gate block with any flag given replacing the key of the same name."""
    from pydantic import ValidationError

    from edgepack.core.results_format import read_results
    from edgepack.recipe_errors import describe_validation_error

    results = read_results(run_dir)
    fields = (results["recipe"].get("gate") or {}) | {k: v for k, v in overrides.items() if v is not None}
    try:
        config = GateConfig.model_validate(fields)
    except ValidationError as e:
        raise UserError(describe_validation_error(e, "edgepack gate", GateConfig)) from e
    return evaluate_gate(results, config)


def outcome_lines(outcome: dict) -> list[str]:
    """One line per violated budget, or one line saying the run passed."""
    if outcome["passed"]:
        return [f"gate passed: {', '.join(outcome['checked'])} within {budget_text(outcome['budgets'])}"]
    return [f"gate failed: {v['message']}" for v in outcome["violations"]]


def budget_text(budgets: dict) -> str:
    parts = []
    if "max_accuracy_drop" in budgets:
        parts.append(f"top-1 drop <= {budgets['max_accuracy_drop']:g} pp")
    if "max_robustness_drop" in budgets:
        parts.append(f"top-1 drop under perturbations <= {budgets['max_robustness_drop']:g} pp")
    if "max_latency_ms" in budgets:
        parts.append(f"latency {budgets['latency_statistic']} <= {budgets['max_latency_ms']:g} ms")
    if "max_bytes" in budgets:
        parts.append(f"size <= {human_bytes(budgets['max_bytes'])}")
    return ", ".join(parts)
