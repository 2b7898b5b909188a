"""Reports built from results.json only: report.md, report.html, report.json and the one-screen summary table.
Never recomputes a figure."""

from __future__ import annotations

import json
from pathlib import Path

from edgepack.core.artifacts import write_text_atomic
from edgepack.reports.rows import (
    SUMMARY_COLUMNS,
    TARGET_VERIFICATION_COLUMNS,
    bench_rows,
    provenance_rows,
    summary_rows,
    target_verification_rows,
    verification_rows,
)
from edgepack.reports.text import markdown_table


def render_markdown(results: dict) -> str:
    from edgepack.reports import markdown as sections
    from edgepack.reports.data import build_report_data
    from edgepack.reports.paths import relative_to_run

    results = relative_to_run(results)  # a PR comment shows no path of the machine that packed
    recipe, data = results["recipe"], build_report_data(results)
    parts = [
        f"# edgepack report: {recipe['name']}",
        f"Created {results['created']} by edgepack {results['edgepack_version']}.",
        *([f"**Run failed.** {data['failure']}"] if data["failure"] else []),
        *sections.gate_section(data),
        "## Artifacts",
        markdown_table(SUMMARY_COLUMNS, summary_rows(results)),
        "Accuracy is top-1 on the evaluation data, measured in each artifact's own runtime.",
        *sections.cost_section(data),
        *sections.slower_section(data),
        *sections.qat_warning_section(data),
        *sections.accuracy_drop_section(data),
        *sections.compression_section(data),
        *sections.robustness_section(data),
        *sections.layer_sections(data),
        *sections.range_methods_section(data),
        "## Verification against the reference",
        markdown_table(
            ["artifact", "output", "max abs err", "mean abs err", "cosine", "tolerance", "top-1 agree"],
            verification_rows(results),
        ),
        *_target_verification_section(results),
        "## Latency on the host",
        markdown_table(
            ["artifact", "target", "runtime", "threads", "runs", "mean", "p50", "p90", "p99", "max", "peak RSS MiB"],
            bench_rows(results),
        ),
        "## Steps",
        markdown_table(
            ["step", "seconds", "cached"],
            [[s["name"], f"{s['seconds']:.2f}", "yes" if s["cached"] else ""] for s in results["steps"]],
        ),
        "## Inputs and versions",
        markdown_table(["what", "value"], provenance_rows(results)),
    ]
    return "\n\n".join(parts) + "\n"


def _target_verification_section(results: dict) -> list[str]:
    rows = target_verification_rows(results)
    if not rows:
        return []
    about = ("The verification samples run on each remote target with its benchmark, held to the same tolerances; "
             "steps vs host: how far the device's outputs are from the host's run of the same file, in steps of an "
             "integer output's grid (else its max abs difference).")  # fmt: skip
    return ["## Verification on the targets", about, markdown_table(TARGET_VERIFICATION_COLUMNS, rows)]


def write_reports(run_dir: Path, results: dict) -> None:
    """report.md (a PR comment), report.html (to forward) and report.json (for tools), from the same report data."""
    from edgepack.reports.data import build_report_data
    from edgepack.reports.html import render_html

    data = build_report_data(results)
    write_text_atomic(Path(run_dir) / "report.md", render_markdown(results))
    write_text_atomic(Path(run_dir) / "report.html", render_html(results, data))
    write_text_atomic(Path(run_dir) / "report.json", json.dumps(data, indent=2))


def rebuild_reports(run_dir: Path) -> dict:
    """`edgepack report RUN_DIR`: manifest and reports again from results.json."""
    from edgepack.core.results_format import read_results
    from edgepack.reports.manifest import write_manifest

    results = read_results(run_dir)
    write_manifest(Path(run_dir), results)
    write_reports(Path(run_dir), results)
    return results
