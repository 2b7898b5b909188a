"""report.html: one self-contained page (inline CSS, plots as SVG data URIs) from the report data and a jinja2
template shipped in the package (edgepack/templates/report.html.j2)."""

from __future__ import annotations

import yaml

from edgepack.reports.text import FILTERS, energy_text


def render_html(results: dict, data: dict) -> str:
    from edgepack.reports.plots import build_plots
    from edgepack.reports.rows import (
        TARGET_VERIFICATION_COLUMNS,
        provenance_rows,
        target_verification_rows,
        verification_rows,
    )

    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            data=data,
            plots=build_plots(data),
            gate_text=_gate_text(data["gate"]),
            verification={"header": VERIFICATION_HEADER, "rows": verification_rows(results)},
            on_targets={"header": TARGET_VERIFICATION_COLUMNS, "rows": target_verification_rows(results)},
            recipe_yaml=yaml.safe_dump(results["recipe"], sort_keys=False, default_flow_style=None, width=80),
            provenance=_artifact_hashes(results) + provenance_rows(results),
            energy_text=energy_text,
        )
    )


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
