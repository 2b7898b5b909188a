"""Reports built from results.json only: report.md, report.html, report.json and the one-screen summary table.
Never recomputes a figure."""

from __future__ import annotations

import json
from pathlib import Path

from edgepack.core.artifacts import write_text_atomic

SUMMARY_COLUMNS = ["artifact", "format", "precision", "bytes", "accuracy", "measured in", "p50 ms", "max err vs ref"]


def summary_rows(results: dict) -> list[list[str]]:
    return [_summary_row(a) for a in results["artifacts"]]


def _summary_row(artifact: dict) -> list[str]:
    accuracy = artifact.get("accuracy")
    bench = (artifact.get("bench") or [None])[0]
    return [
        artifact["name"],
        artifact["format"],
        artifact["precision"],
        f"{artifact['bytes']:,}",
        f"{accuracy['top1'] * 100:.2f}%" if accuracy else "-",
        accuracy["runtime"] if accuracy else "-",
        f"{bench['latency_ms']['p50']:.3f}" if bench else "-",
        _verified(artifact.get("verification")),
    ]


def _verified(verification: dict | None) -> str:
    if verification is None:
        return "(reference)"
    outputs, verdict = verification["outputs"], "ok" if verification["passed"] else "FAILED"
    if any(o.get("min_cosine") is not None for o in outputs):  # integer files: held to a cosine floor
        return f"cos {min(o['cosine_similarity'] for o in outputs):.4f} {verdict}"
    worst = max(o["max_abs_error"] for o in outputs)
    if all(o["tolerance"] is None for o in outputs):
        return f"{worst:.1e} (int)"  # results.json written before integer files had a tolerance
    return f"{worst:.1e} {verdict}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def render_markdown(results: dict) -> str:
    from edgepack.reports import markdown as sections
    from edgepack.reports.data import build_report_data

    recipe, data = results["recipe"], build_report_data(results)
    parts = [
        f"# edgepack report: {recipe['name']}",
        f"Created {results['created']} by edgepack {results['edgepack_version']}.",
        *sections.gate_section(data),
        "## Artifacts",
        markdown_table(SUMMARY_COLUMNS, summary_rows(results)),
        "Accuracy is top-1 on the evaluation data, measured in each artifact's own runtime.",
        *sections.cost_section(data),
        *sections.slower_section(data),
        *sections.qat_warning_section(data),
        *sections.compression_section(data),
        *sections.robustness_section(data),
        *sections.layer_sections(data),
        "## Verification against the reference",
        markdown_table(
            ["artifact", "output", "max abs err", "mean abs err", "cosine", "tolerance", "top-1 agree"],
            _verification_rows(results),
        ),
        "## Latency on the host",
        markdown_table(
            ["artifact", "target", "runtime", "threads", "runs", "mean", "p50", "p90", "p99", "max", "peak RSS MiB"],
            _bench_rows(results),
        ),
        "## Steps",
        markdown_table(
            ["step", "seconds", "cached"],
            [[s["name"], f"{s['seconds']:.2f}", "yes" if s["cached"] else ""] for s in results["steps"]],
        ),
        "## Inputs and versions",
        markdown_table(["what", "value"], _provenance_rows(results)),
    ]
    return "\n\n".join(parts) + "\n"


def _tolerance_text(output: dict) -> str:
    if output["tolerance"] is not None:
        return f"{output['tolerance']:.1e}"
    return "reported only" if output.get("min_cosine") is None else f"cosine >= {output['min_cosine']}"


def _verification_rows(results: dict) -> list[list[str]]:
    rows = []
    for artifact in results["artifacts"]:
        verification = artifact.get("verification")
        for out in (verification or {}).get("outputs", []):
            tolerance = _tolerance_text(out)
            agree, floor = verification.get("top1_agreement"), verification.get("min_top1_agreement")
            rows.append(
                [
                    artifact["name"],
                    out["output"],
                    f"{out['max_abs_error']:.2e}",
                    f"{out['mean_abs_error']:.2e}",
                    f"{out['cosine_similarity']:.6f}",
                    tolerance,
                    "-" if agree is None else f"{agree:.3f}" + ("" if floor is None else f" (>= {floor})"),
                ]
            )
    return rows


def _bench_rows(results: dict) -> list[list[str]]:
    """One row per (artifact, target, threads); '-' for a figure a target does not give (benchmark_model's p90)."""

    def figure(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    rows = []
    for artifact in results["artifacts"]:
        for b in artifact.get("bench") or []:
            rows.append(
                [
                    artifact["name"],
                    b["target"],
                    f"{b['runtime']} {b['runtime_version']}",
                    str(b["threads"]),
                    str(b["runs"]),
                    *(figure(b["latency_ms"][k], ".3f") for k in ("mean", "p50", "p90", "p99", "max")),
                    figure(b["peak_rss_mib"], ".1f"),
                ]
            )
    return rows


def _provenance_rows(results: dict) -> list[list[str]]:
    rows = [["model sha256", results["inputs"]["model_sha256"]]]
    rows += [[f"file {path}", digest] for path, digest in results["inputs"]["files"].items()]
    rows += [[name, version] for name, version in results["environment"]["packages"].items()]
    return rows


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
    from edgepack.reports.manifest import write_manifest
    from edgepack.running.results import read_results

    results = read_results(run_dir)
    write_manifest(Path(run_dir), results)
    write_reports(Path(run_dir), results)
    return results
