"""report.html: one self-contained page (inline CSS, plots as SVG data URIs) from the report data and a jinja2
template shipped in the package (edgepack/templates/report.html.j2)."""

from __future__ import annotations

import yaml

from edgepack.reports.text import FILTERS, energy_text


def render_html(results: dict, data: dict) -> str:
    from edgepack.reports.paths import relative_to_run
    from edgepack.reports.plots import build_plots
    from edgepack.reports.rows import (
        TARGET_VERIFICATION_COLUMNS,
        provenance_rows,
        target_verification_rows,
        verification_rows,
    )

    results = relative_to_run(results)
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            data=data,
            summary=summary_table(data),
            plots=build_plots(data),
            gate_text=_gate_text(data["gate"]),
            verification={"header": VERIFICATION_HEADER, "rows": verification_rows(results)},
            on_targets={"header": TARGET_VERIFICATION_COLUMNS, "rows": target_verification_rows(results)},
            recipe_yaml=yaml.safe_dump(results["recipe"], sort_keys=False, default_flow_style=None, width=80),
            provenance=_artifact_hashes(results) + provenance_rows(results),
            energy_text=energy_text,
        )
    )


def summary_table(data: dict) -> dict:
    """The page's first table, one row per artifact: its figures and p50 per (target, threads); a top-1 drop beyond
    the gate's max_accuracy_drop (without a gate: beyond the terminal summary's warning threshold) is marked."""
    from edgepack.reports.data import DROP_WARNING_PP

    columns = list(dict.fromkeys((e["target"], e["threads"]) for c in data["artifacts"] for e in c["latency"]))
    limit = ((data["gate"] or {}).get("budgets") or {}).get("max_accuracy_drop", DROP_WARNING_PP)
    rows = []
    for card in data["artifacts"]:
        p50 = {(e["target"], e["threads"]): e["p50"] for e in card["latency"]}
        drop = card["accuracy_drop_pp"] if card["name"] != data["reference"] else None
        rows.append({"card": card, "drop": drop, "beyond": drop is not None and drop > limit,
                     "p50": [p50.get(column) for column in columns]})  # fmt: skip
    return {"targets": [f"{target} x{threads}" for target, threads in columns], "rows": rows, "limit": limit}


VERIFICATION_HEADER = ["artifact", "output", "max abs err", "mean abs err", "cosine", "tolerance", "top-1 agree"]


def _environment():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("edgepack", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt key fails the test suite, not silently blanks a figure
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(FILTERS)
    return environment


def _gate_text(gate: dict | None) -> str:
    from edgepack.reports.gate import budget_text

    return budget_text(gate["budgets"]) if gate else ""


def _artifact_hashes(results: dict) -> list[list[str]]:
    return [[f"{a['name']} sha256", a["sha256"]] for a in results["artifacts"]]
