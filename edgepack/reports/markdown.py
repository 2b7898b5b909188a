"""The sections of report.md built from the report data (edgepack/report_data.py): the gate first, so a PR comment
opens with pass or fail, then size/accuracy/cost, robustness and the per-layer figures where a run has them."""

from __future__ import annotations

from edgepack.reports.text import FILTERS, energy_text, layer_name, macs_text, mixed_precision_outcome

TOP_LAYERS = 5  # a PR comment names the worst few layers; the HTML report plots them all


def gate_section(data: dict) -> list[str]:
    gate = data["gate"]
    if not gate:
        return []
    from edgepack.reports.gate import budget_text

    if gate["passed"]:
        return [f"**Gate passed**: {', '.join(gate['checked'])} within {budget_text(gate['budgets'])}."]
    lines = "\n".join(f"- {v['message']}" for v in gate["violations"])
    return [f"**Gate failed** ({budget_text(gate['budgets'])}):\n\n{lines}"]


def cost_section(data: dict) -> list[str]:
    from edgepack.reports.text import markdown_table

    header = ["artifact", "size", "vs float", "top-1", "drop", "target", "p50 ms", "p90 ms", "energy uJ", "Pareto"]
    rows = [row for card in data["artifacts"] for row in _cost_rows(card, data["reference"])]
    return ["## Size, accuracy and cost", markdown_table(header, rows)]


def _cost_rows(card: dict, reference: str) -> list[list[str]]:
    f = FILTERS
    vs = "-" if card["name"] == card["baseline"] else f["ratio"](card["compression"], card["baseline"])
    drop = "(reference)" if card["name"] == reference else f["pp"](card["accuracy_drop_pp"])
    head = [card["name"], f"{card['bytes']:,}", vs, f["pct"](card["top1"]), drop]
    pareto = "yes" if card["pareto"] else ""
    if not card["latency"]:
        return [[*head, "-", "-", "-", "-", pareto]]
    return [
        [*head, f"{e['target']} x{e['threads']}", f["ms"](e["p50"]), f["ms"](e["p90"]), energy_text(e), pareto]
        for e in card["latency"]
    ]


def slower_section(data: dict) -> list[str]:
    lines = data["slower_than_float"]
    if not lines:
        return []
    return ["**Slower than float:**\n\n" + "\n".join(f"- {line}" for line in lines)]


def qat_warning_section(data: dict) -> list[str]:
    lines = data["qat_below_ptq"]
    return ["**Warning, QAT below PTQ:**\n\n" + "\n".join(f"- {line}" for line in lines)] if lines else []


def accuracy_drop_section(data: dict) -> list[str]:
    lines = data["accuracy_drops"]
    return ["**Warning, accuracy drop:**\n\n" + "\n".join(f"- {line}" for line in lines)] if lines else []


def compression_section(data: dict) -> list[str]:
    lines = data["compression"]
    return ["## Compression", "\n".join(f"- {line}" for line in lines)] if lines else []


def robustness_section(data: dict) -> list[str]:
    table = data["robustness"]
    if not table:
        return []
    from edgepack.reports.text import markdown_table

    pct, pp = FILTERS["pct"], FILTERS["pp"]
    header = ["artifact", "clean", *(c["label"] for c in table["conditions"]), "worst drop"]
    rows = [[r["artifact"], pct(r["clean"]), *map(pct, r["top1"]), pp(r["worst_drop_pp"])] for r in table["rows"]]
    note = f"Top-1 on {table['samples']} samples under input perturbations, each artifact in its own runtime."
    return ["## Robustness", note, markdown_table(header, rows)]


def layer_sections(data: dict) -> list[str]:
    parts = []
    for name, rows in data["layer_sqnr"].items():
        worst = sorted(rows, key=lambda r: r["sqnr_db"])[:TOP_LAYERS]
        parts.append(f"**{name}** lowest SQNR: " + ", ".join(f"{layer_name(r)} {r['sqnr_db']:.1f} dB" for r in worst))
    sensitivity = data["sensitivity"]
    if sensitivity and sensitivity.get("layers"):
        worst = sorted(sensitivity["layers"], key=lambda r: r["value"], reverse=sensitivity["higher_is_worse"])
        shown = ", ".join(f"{r['layer']} {r['value']:.3g} {sensitivity['unit']}" for r in worst[:TOP_LAYERS])
        parts.append(f"**Most sensitive layers** ({sensitivity['metric']}): {shown}")
    parts += [mixed_precision_line(name, record) for name, record in data["mixed_precision"].items()]
    for name, rows in data["sparsity"].items():
        mean = sum(r["fraction"] for r in rows) / len(rows)
        parts.append(f"**{name}** sparsity: mean {mean:.1%} over {len(rows)} layers")
    return ["## Per-layer figures", *parts] if parts else []


def range_methods_section(data: dict) -> list[str]:
    """method auto: how many activation tensors took each method, and the table of choices."""
    from edgepack.reports.text import markdown_table

    parts = []
    for name, record in data["range_methods"].items():
        counts = ", ".join(f"{method} {count}" for method, count in record["counts"].items())
        parts += [f"**{name}** range method per activation (method auto, {record['scored_on']}): {counts}",
                  *([record["bias_correction"]] if record["bias_correction"] else []),
                  markdown_table(["tensor", "method"], record["rows"])]  # fmt: skip
    return ["## Calibration ranges", *parts] if parts else []


def mixed_precision_line(name: str, record: dict) -> str:
    """One line per integer artifact: the layers kept high, at what precision and why, whether the target held, and
    the share of MACs in each precision."""
    layers = "; ".join(f"{r['layer']} {r['precision']} ({r['why']})" for r in record["layers"]) or "none needed"
    macs = f"; MACs {macs_text(record['macs'])}" if record.get("macs") else ""
    return f"**{name}** mixed precision, {mixed_precision_outcome(record)}{macs}: {layers}"
