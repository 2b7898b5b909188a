"""The rows of the report tables (summary, verification, benchmarks, provenance), read from results.json: the same
rows in the Markdown report, the HTML page and the terminal summary."""

from __future__ import annotations

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


def _tolerance_text(output: dict) -> str:
    if output["tolerance"] is not None:
        return f"{output['tolerance']:.1e}"
    return "reported only" if output.get("min_cosine") is None else f"cosine >= {output['min_cosine']}"


def verification_rows(results: dict) -> list[list[str]]:
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


TARGET_VERIFICATION_COLUMNS = ["artifact", "target", "threads", "output", "max abs err", "mean abs err", "cosine",
                               "tolerance", "top-1 agree", "steps vs host"]  # fmt: skip


def target_verification_rows(results: dict) -> list[list[str]]:
    """One row per (artifact, remote target, threads, output): the device's outputs against the reference, and how
    many output steps (integer files) from the host's run of the same file."""
    rows = []
    for artifact in results["artifacts"]:
        for record in artifact.get("bench") or []:
            checked = record.get("verification_on_target")
            for out in (checked or {}).get("outputs", []):
                rows.append([artifact["name"], record["target"], str(record["threads"]),
                             *_target_figures(checked, out)])  # fmt: skip
    return rows


def _target_figures(checked: dict, out: dict) -> list[str]:
    agree, floor = checked.get("top1_agreement"), checked.get("min_top1_agreement")
    host = next((o for o in checked["host_run"]["outputs"] if o["output"] == out["output"]), None)
    if host is None or host["max_steps"] is None:
        steps = "-" if host is None else f"{host['max_abs_error']:.1e} abs"
    else:
        steps = f"{host['max_steps']:g} of {host['output_step']:.3g}"
    return [
        out["output"],
        f"{out['max_abs_error']:.2e}",
        f"{out['mean_abs_error']:.2e}",
        f"{out['cosine_similarity']:.6f}",
        _tolerance_text(out),
        "-" if agree is None else f"{agree:.3f}" + ("" if floor is None else f" (>= {floor})"),
        steps,
    ]


def bench_rows(results: dict) -> list[list[str]]:
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


def provenance_rows(results: dict) -> list[list[str]]:
    rows = [["model sha256", results["inputs"]["model_sha256"]]]
    rows += [[f"file {path}", digest] for path, digest in results["inputs"]["files"].items()]
    rows += [[name, version] for name, version in results["environment"]["packages"].items()]
    return rows
