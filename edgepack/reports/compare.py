"""``edgepack report RUN_A RUN_B``: what changed between two runs (recipe keys, accuracy, size, latency), from their
results.json only. Artifacts are matched by name; benchmark records by (target, threads)."""

from __future__ import annotations

import json
from pathlib import Path

from edgepack.core.artifacts import write_text_atomic


def compare_runs(before: dict, after: dict) -> dict:
    old = {a["name"]: a for a in before["artifacts"]}
    new = {a["name"]: a for a in after["artifacts"]}
    names = list(new) + [name for name in old if name not in new]
    return {
        "before": before["run_dir"],
        "after": after["run_dir"],
        "recipe_changes": recipe_changes(
            before["recipe"], after["recipe"], given=(before.get("recipe_given"), after.get("recipe_given"))
        ),
        "artifacts": [_artifact_change(name, old.get(name), new.get(name)) for name in names],
    }


def recipe_changes(before: dict, after: dict, given: tuple[dict | None, dict | None] = (None, None)) -> list[dict]:
    """[{key, before, after}] for every dotted recipe key whose value differs (absent is None). With the keys each
    user wrote (results.json ``recipe_given``), only the keys written in either recipe, or inside or above one:
    adding a stage shows its ``stage`` key and the options given, not its thirty defaults."""
    old, new = _flatten(before), _flatten(after)
    keys = list(new) + [k for k in old if k not in new]
    changed = [k for k in keys if old.get(k) != new.get(k)]
    if None not in given:
        written = set(_flatten(given[0])) | set(_flatten(given[1]))
        changed = [k for k in changed if any(_related(k, w) for w in written)]
    return [{"key": k, "before": old.get(k), "after": new.get(k)} for k in changed]


def _related(key: str, written: str) -> bool:
    """``key`` is the written key, inside it (robustness.snr_db under robustness: null) or above it."""
    return key == written or key.startswith(written + ".") or written.startswith(key + ".")


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def _artifact_change(name: str, old: dict | None, new: dict | None) -> dict:
    status = "added" if old is None else "removed" if new is None else "kept"
    old, new = old or {}, new or {}
    return {
        "artifact": name,
        "status": status,
        "top1": _difference(_top1(old), _top1(new), percent_points=True),
        "bytes": _difference(old.get("bytes"), new.get("bytes")),
        "latency_p50_ms": _latency_changes(old, new),
    }


def _top1(artifact: dict) -> float | None:
    return (artifact.get("accuracy") or {}).get("top1")


def _difference(before: float | None, after: float | None, percent_points: bool = False) -> dict:
    """{before, after, change}: the change is in percentage points for fractions, else in percent of before."""
    change = None
    if before is not None and after is not None:
        change = (after - before) * 100 if percent_points else (after / before - 1) * 100 if before else None
    return {"before": before, "after": after, "change": change, "unit": "pp" if percent_points else "%"}


def _latency_changes(old: dict, new: dict) -> list[dict]:
    def p50s(artifact: dict) -> dict:
        return {(b["target"], b["threads"]): b["latency_ms"].get("p50") for b in artifact.get("bench") or []}

    before, after = p50s(old), p50s(new)
    keys = list(after) + [k for k in before if k not in after]
    return [{"target": t, "threads": n, **_difference(before.get((t, n)), after.get((t, n)))} for t, n in keys]


def comparison_rows(comparison: dict) -> list[list[str]]:
    """One row per artifact and benchmark record: top-1, size and p50 before -> after with the change."""
    rows = []
    for change in comparison["artifacts"]:
        latencies = change["latency_p50_ms"] or [None]
        for i, latency in enumerate(latencies):
            first = i == 0
            rows.append([
                change["artifact"] if first else "",
                change["status"] if first else "",
                _text(change["top1"], "{:.2%}") if first else "",
                _text(change["bytes"], "{:,}") if first else "",
                "-" if latency is None else f"{latency['target']} x{latency['threads']}",
                "-" if latency is None else _text(latency, "{:.4g}"),
            ])  # fmt: skip
    return rows


COMPARISON_HEADER = ["artifact", "status", "top-1", "bytes", "target", "p50 ms"]


def _text(difference: dict, spec: str) -> str:
    def show(value) -> str:
        return "-" if value is None else spec.format(value)

    text = f"{show(difference['before'])} -> {show(difference['after'])}"
    change = difference["change"]
    unit = "%" if difference["unit"] == "%" else " pp"
    return text if change is None else f"{text} ({change:+.2f}{unit})"


def comparison_markdown(comparison: dict) -> str:
    from edgepack.reports.text import markdown_table

    changes = comparison["recipe_changes"]
    recipe = (
        "\n".join(f"- `{c['key']}`: {c['before']!r} -> {c['after']!r}" for c in changes) or "No recipe key changed."
    )
    parts = [
        "# edgepack comparison",
        f"Before: `{comparison['before']}`  \nAfter: `{comparison['after']}`",
        "## Recipe changes",
        recipe,
        "## Artifacts",
        markdown_table(COMPARISON_HEADER, comparison_rows(comparison)),
    ]
    return "\n\n".join(parts) + "\n"


def write_comparison(run_a: Path, run_b: Path) -> dict:
    """comparison.md and comparison.json in RUN_B (the newer run); returns the comparison."""
    from edgepack.core.results_format import read_results

    comparison = compare_runs(read_results(run_a), read_results(run_b))
    write_text_atomic(Path(run_b) / "comparison.md", comparison_markdown(comparison))
    write_text_atomic(Path(run_b) / "comparison.json", json.dumps(comparison, indent=2))
    return comparison
