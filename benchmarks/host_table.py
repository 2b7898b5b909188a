"""The bundled digits example on this host: each artifact x threads 1 and 2, latency, memory and energy.

    .venv/bin/python benchmarks/host_table.py [--runs 500] [--min-seconds 2]

Trains the digits CNN (a few seconds, offline), packs it with the bundled recipe into a temporary folder with
bench.threads=[1, 2], and prints one row per (artifact, threads) from results.json. Figures only; nothing is
asserted, since a shared machine's noise moves them from run to run.

The bundled recipe's quantize stage adds the int8 ONNX and TFLite rows, with their energy proxy.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from edgepack.examples import digits
from edgepack.running.pipeline import pack

COLUMNS = ["artifact", "precision", "runtime", "threads", "runs", "p50 ms", "mean ms", "p99 ms", "peak RSS MiB",
           "proxy uJ", "measured uJ"]  # fmt: skip


def measured(record: dict) -> str:
    energy = record["energy"]["measured"]
    return energy["method"] if energy["uj_per_inference"] is None else f"{energy['uj_per_inference']:.3f}"


def row(artifact: dict, record: dict) -> list[str]:
    latency = record["latency_ms"]
    return [
        artifact["name"],
        artifact["precision"],
        f"{record['runtime']} {record['runtime_version']} ({record['delegate']})",
        str(record["threads"]),
        str(record["runs"]),
        *(f"{latency[key]:.4f}" for key in ("p50", "mean", "p99")),
        f"{record['peak_rss_mib']:.1f}",
        f"{record['energy']['proxy']['uj_per_inference']:.4f}",
        measured(record),
    ]


def print_table(results: dict) -> None:
    rows = [row(artifact, record) for artifact in results["artifacts"] for record in artifact["bench"]]
    widths = [max(len(text) for text in column) for column in zip(COLUMNS, *rows, strict=True)]
    for line in [COLUMNS, *rows]:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500, help="least timed runs per record")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="least timed seconds per record")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "digits_cnn.pt"
        accuracy = digits.train(weights)
        bench = [f"bench.runs={args.runs}", "bench.warmup=50", f"bench.min_seconds={args.min_seconds}"]
        overrides = [f"model.weights={weights}", "bench.threads=[1, 2]", *bench]
        results = pack(digits.RECIPE, out=Path(folder) / "run", overrides=overrides, quiet=True).results
    record = results["artifacts"][1]["bench"][0]
    print(
        f"digits CNN (torch test accuracy {accuracy:.2%}) on {record['cpu']} x{record['cores']}, {record['platform']}"
    )
    print_table(results)


if __name__ == "__main__":
    main()
