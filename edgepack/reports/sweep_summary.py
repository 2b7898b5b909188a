"""What sweep.json holds: a row per variant, the Pareto front of its artifacts, the best variant per gate budget.

Plain data in, plain data out: the figures come from each variant's results.json, never from Ray.
"""

from __future__ import annotations

DEPLOYABLE = ("onnx", "tflite")


def variant_figures(results: dict) -> dict:
    """The figures of one run that a sweep compares: per artifact top-1, bytes, sha256 and p50 per target."""
    artifacts = results["artifacts"]
    source = (artifacts[0].get("accuracy") or {}).get("top1")
    return {
        "source_top1": source,
        "gate": (results.get("recipe") or {}).get("gate"),
        "artifacts": [_artifact_figures(a) for a in artifacts],
    }


def _artifact_figures(artifact: dict) -> dict:
    p50 = {}
    for record in artifact.get("bench") or []:  # the first thread count of each target: the one a gate would check
        p50.setdefault(record["target"], record["latency_ms"]["p50"])
    return {
        "name": artifact["name"], "format": artifact["format"], "precision": artifact["precision"],
        "sha256": artifact["sha256"], "bytes": artifact["bytes"],
        "top1": (artifact.get("accuracy") or {}).get("top1"), "p50_ms": p50,
    }  # fmt: skip


def points(rows: list[dict]) -> list[dict]:
    """Every deployable artifact of every finished variant, with its top-1, bytes and p50 on the first target."""
    found = []
    for row in rows:
        if row.get("status") != "ok":
            continue
        for artifact in row["artifacts"]:
            if artifact["format"] not in DEPLOYABLE or artifact["top1"] is None:
                continue
            p50 = next(iter(artifact["p50_ms"].values()), None)
            drop = None if row["source_top1"] is None else (row["source_top1"] - artifact["top1"]) * 100
            found.append({"variant": row["name"], "artifact": artifact["name"], "top1": artifact["top1"],
                          "accuracy_drop_pp": drop, "bytes": artifact["bytes"], "p50_ms": p50})  # fmt: skip
    return found


def pareto_front(candidates: list[dict]) -> list[dict]:
    """The points no other point beats on top-1 (higher), p50 (lower) and bytes (lower) at once; a point without a
    latency is compared on top-1 and bytes only."""

    def figures(p: dict) -> tuple[float, float, float]:
        return (-p["top1"], p["p50_ms"] if p["p50_ms"] is not None else 0.0, p["bytes"])

    def dominates(a: dict, b: dict) -> bool:
        fa, fb = figures(a), figures(b)
        return all(x <= y for x, y in zip(fa, fb, strict=True)) and fa != fb

    return [p for p in candidates if not any(dominates(o, p) for o in candidates if o is not p)]


def best_per_budget(candidates: list[dict], gate: dict | None) -> dict[str, dict | None]:
    """For each budget the recipe's gate names (and all of them together): the most accurate artifact within it
    (then the fastest, then the smallest); None when no artifact meets it."""
    if not gate:
        return {}
    checks = {
        "max_accuracy_drop": lambda p, limit: p["accuracy_drop_pp"] is not None and p["accuracy_drop_pp"] <= limit,
        "max_latency_ms": lambda p, limit: p["p50_ms"] is not None and p["p50_ms"] <= limit,
        "max_bytes": lambda p, limit: p["bytes"] <= limit,
    }
    budgets = {name: gate[name] for name in checks if gate.get(name) is not None}
    best = {
        f"{name} {limit}": _best([p for p in candidates if checks[name](p, limit)]) for name, limit in budgets.items()
    }
    if len(budgets) > 1:
        best["all budgets"] = _best([p for p in candidates if all(checks[n](p, v) for n, v in budgets.items())])
    return best


def _best(candidates: list[dict]) -> dict | None:
    key = lambda p: (-p["top1"], p["p50_ms"] if p["p50_ms"] is not None else float("inf"), p["bytes"])  # noqa: E731
    return min(candidates, key=key, default=None)


def sweep_summary(rows: list[dict]) -> dict:
    """sweep.json: the rows, the Pareto front, the best per gate budget (the first recipe's gate that has one)."""
    candidates = points(rows)
    gate = next((row["gate"] for row in rows if row.get("gate")), None)
    counts = {status: sum(r["status"] == status for r in rows) for status in ("ok", "failed", "cancelled")}
    return {"variants": rows, "counts": counts, "pareto_front": pareto_front(candidates),
            "best_per_budget": best_per_budget(candidates, gate)}  # fmt: skip
