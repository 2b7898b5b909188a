"""Rich tables for the terminal, built from the same dicts the JSON outputs hold."""

from __future__ import annotations

from rich.table import Table

from edgepack.report import SUMMARY_COLUMNS, summary_rows

NUMERIC = {"bytes", "accuracy", "p50 ms"}


def summary_table(results: dict) -> Table:
    table = Table(title=f"edgepack: {results['recipe']['name']}")
    for column in SUMMARY_COLUMNS:
        table.add_column(column, justify="right" if column in NUMERIC else "left")
    for row in summary_rows(results):
        table.add_row(*row)
    return table


def bench_table(record: dict) -> Table:
    table = Table(title=f"{record['model']} on {record['target']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("runtime", f"{record['runtime']} {record['runtime_version']} ({record['delegate']})"),
        ("threads", str(record["threads"])),
        ("runs / warm-up", f"{record['runs']} / {record['warmup']}"),
        ("load ms", f"{record['init_ms']:.2f}"),
        ("first inference ms", f"{record['first_inference_ms']:.3f}"),
    ]
    rows += [(f"{key} ms", f"{value:.4f}") for key, value in record["latency_ms"].items()]
    rows += [
        ("peak RSS MiB", f"{record['peak_rss_mib']}"),
        ("model bytes", f"{record['model_bytes']:,}"),
        ("cpu", f"{record['cpu']} x{record['cores']}"),
    ]
    for key, value in rows:
        table.add_row(key, value)
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
    for op, count in description["op_counts"].items():
        ops.add_row(op, str(count))
    return [tensors, ops]
