"""Rich tables for the terminal, built from the same dicts the JSON outputs hold."""

from __future__ import annotations

from rich.table import Table

from edgepack.reports.rows import SUMMARY_COLUMNS, summary_rows

NUMERIC = {"bytes", "accuracy", "p50 ms"}


def summary_table(results: dict) -> Table:
    table = Table(title=f"edgepack: {results['recipe']['name']}")
    for column in SUMMARY_COLUMNS:
        table.add_column(column, justify="right" if column in NUMERIC else "left")
    for row in summary_rows(results):
        table.add_row(*row)
    return table


def bench_table(records: list[dict]) -> Table:
    """One column per record (a thread count), one row per figure; '-' where a target could not measure it."""
    first = records[0]
    table = Table(title=f"{first['model']} on {first['target']}")
    table.add_column("figure")
    for record in records:
        table.add_column(f"{record['threads']} thread(s)", justify="right")
    for label, show in _BENCH_ROWS:
        table.add_row(label, *(_bench_cell(show, record) for record in records))
    return table


def _bench_cell(show, record: dict) -> str:
    try:
        return show(record)
    except (KeyError, TypeError, ValueError):  # a figure the target does not give (None, or absent)
        return "-"


def _bench_measured_energy(record: dict) -> str:
    measured = record["energy"]["measured"]
    value = measured["uj_per_inference"]
    return measured["method"] if value is None else f"{value:.4g} ({measured['method']})"


_BENCH_ROWS = [
    ("runtime", lambda r: f"{r['runtime']} {r['runtime_version']} ({r['delegate']})"),
    ("runs / warm-up", lambda r: f"{r['runs']} / {r['warmup']}"),
    ("load ms", lambda r: f"{r['init_ms']:.2f}"),
    ("first inference ms", lambda r: f"{r['first_inference_ms']:.3f}"),
    *(
        (f"{key} ms", lambda r, key=key: f"{r['latency_ms'][key]:.4f}")
        for key in ("mean", "std", "min", "p50", "p90", "p99", "max")
    ),
    ("peak RSS MiB", lambda r: f"{r['peak_rss_mib']:.1f}"),
    ("model bytes", lambda r: f"{r['model_bytes']:,}"),
    ("device", lambda r: f"{r['machine']}, {r['os'] or '-'}, Python {r['python']}"),
    ("runtime build", lambda r: ", ".join(r["runtime_build"]["wheel_tags"]) or "-"),
    ("cpu", lambda r: f"{r['cpu']} x{r['cores']}"),
    ("governor / temperature C", lambda r: f"{r['governor'] or '-'} / {r['temperature_c'] or '-'}"),
    ("energy proxy uJ", lambda r: f"{r['energy']['proxy']['uj_per_inference']:.4g}"),
    ("energy measured uJ", _bench_measured_energy),
]


def verification_table(records: list[dict]) -> Table:
    """`bench --verify`: per thread count and output, how far the target's outputs are from the host's."""
    first = records[0]
    table = Table(title=f"outputs on {first['target']} vs host, {first['verification']['samples']} samples")
    for column in ("threads", "output", "max abs error", "mean abs error", "cosine", "max steps", "within 1 step"):
        table.add_column(column, justify="left" if column == "output" else "right")
    for record in records:
        for o in record["verification"]["outputs"]:
            steps = "-" if o["max_steps"] is None else f"{o['max_steps']:g} of {o['output_step']:.3g}"
            within = "-" if o["within_one_step"] is None else f"{o['within_one_step']:.1%}"
            figures = (f"{o['max_abs_error']:.3g}", f"{o['mean_abs_error']:.3g}", f"{o['cosine_similarity']:.6f}")
            table.add_row(str(record["threads"]), o["output"], *figures, steps, within)
    return table


def inspect_tables(description: dict) -> list[Table]:
    tensors = Table(title=f"{description['path']} ({description['format']}, {description['bytes']:,} bytes)")
    for column in ("io", "name", "shape", "dtype", "layout", "quantization"):
        tensors.add_column(column)
    for io in ("inputs", "outputs"):
        for t in description[io]:
            q = t.get("quantization")
            quant = f"scale {q['scale'][:4]} zp {q['zero_point'][:4]}" if q else "-"
            tensors.add_row(io[:-1], t["name"], str(t["shape"]), t["dtype"], t.get("layout") or "-", quant)
    ops = Table(title="op counts")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    custom = set(description.get("custom_ops", []))  # a runtime must register these to run the file
    for op, count in description["op_counts"].items():
        ops.add_row(f"{op} (custom)" if op in custom else op, str(count))
    return [tensors, ops]


def comparison_table(comparison: dict) -> Table:
    """`edgepack report RUN_A RUN_B`: the recipe keys that changed, then each artifact's figures A -> B."""
    from edgepack.reports.compare import COMPARISON_HEADER, comparison_rows

    changed = ", ".join(c["key"] for c in comparison["recipe_changes"]) or "none"
    table = Table(title=f"{comparison['before']} -> {comparison['after']}", caption=f"recipe keys changed: {changed}")
    for column in COMPARISON_HEADER:
        table.add_column(column)
    for row in comparison_rows(comparison):
        table.add_row(*row)
    return table
