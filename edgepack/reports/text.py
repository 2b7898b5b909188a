"""How figures read in the reports: number formats (the HTML template's filters), Markdown tables, energy,
mixed-precision outcomes and MAC shares. Shared by the Markdown and HTML reports and the report data."""

from __future__ import annotations

from edgepack.reports.gate import human_bytes


def _dash_if_none(format_value):
    return lambda value, *args: "-" if value is None else format_value(value, *args)


def _size_ratio_text(ratio: float, baseline: str) -> str:
    """``ratio`` = baseline bytes / artifact bytes, in words (unstructured pruning leaves the size as it was)."""
    if f"{ratio:.2f}" == "1.00":
        return f"same size as {baseline}"
    return f"{ratio:.2f}x smaller vs {baseline}" if ratio > 1 else f"{1 / ratio:.2f}x larger vs {baseline}"


FILTERS = {
    "pct": _dash_if_none(lambda v: f"{v * 100:.2f}%"),
    "pp": _dash_if_none(lambda v: f"{0.0 - v:+.2f} pp"),  # a drop of 0.5 pp reads as -0.50 pp
    "ms": _dash_if_none(lambda v: f"{v:.3g}" if v < 1 else f"{v:.2f}"),
    "num": _dash_if_none(lambda v, digits=2: f"{v:.{digits}f}"),
    "sci": _dash_if_none(lambda v: f"{v:.1e}"),
    "ratio": _dash_if_none(_size_ratio_text),
    "bytes": _dash_if_none(human_bytes),
}


def energy_text(entry: dict) -> str:
    """The measured energy where a sensor gave one, else the analytic proxy, marked as such."""
    if entry["energy_measured_uj"] is not None:
        return f"{entry['energy_measured_uj']:.3g}"
    if entry["energy_proxy_uj"] is not None:
        return f"~{entry['energy_proxy_uj']:.3g} (proxy)"
    return "-"


def mixed_precision_outcome(record: dict) -> str:
    """'target met (...)', or 'target MISSED (...)', with 'best effort' when the file was written as such."""
    target, measured = record["target"], record["measured"]
    if measured["top1_drop_pp"] is not None:
        outcome = f"top-1 drop {measured['top1_drop_pp']:.2f} pp, target <= {target['max_accuracy_drop_pp']} pp"
    else:
        outcome = f"output SQNR {measured['output_sqnr_db']:.1f} dB, target >= {target['min_output_sqnr_db']} dB"
    verdict = "met" if record["target_met"] else "MISSED"
    effort = ", written as best effort" if record.get("best_effort") else ""
    return f"target {verdict} ({outcome}{effort})"


def macs_text(macs: dict | None) -> str:
    """'88.3% int8, 11.7% float of 83,680' (precisions with no MACs left out)."""
    if not macs or not macs.get("total"):
        return "-"
    shares = ", ".join(f"{macs[p]:.1%} {p}" for p in ("int8", "int16", "float") if macs.get(p))
    return f"{shares} of {macs['total']:,}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def layer_name(row: dict) -> str:
    """A per-layer row's name, with the torch module it came from where known: 'node_relu_1 (features.3)'."""
    return f"{row['layer']} ({row['module']})" if row.get("module") else row["layer"]
