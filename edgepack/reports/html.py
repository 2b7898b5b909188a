"""report.html: one self-contained page (inline CSS, plots as SVG data URIs) from the report data and a jinja2
template shipped in the package (edgepack/templates/report.html.j2)."""

from __future__ import annotations

import yaml

from edgepack.reports.gate import human_bytes


def render_html(results: dict, data: dict) -> str:
    from edgepack.reports.plots import build_plots
    from edgepack.reports.report import _provenance_rows, _verification_rows

    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            data=data,
            plots=build_plots(data),
            gate_text=_gate_text(data["gate"]),
            verification={"header": VERIFICATION_HEADER, "rows": _verification_rows(results)},
            recipe_yaml=yaml.safe_dump(results["recipe"], sort_keys=False, default_flow_style=None, width=80),
            provenance=_artifact_hashes(results) + _provenance_rows(results),
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


def _gate_text(gate: dict | None) -> str:
    from edgepack.reports.gate import budget_text

    return budget_text(gate["budgets"]) if gate else ""


def _artifact_hashes(results: dict) -> list[list[str]]:
    return [[f"{a['name']} sha256", a["sha256"]] for a in results["artifacts"]]
