"""The command line: a thin layer over the Python API. One line per error, exit 1; --debug shows the traceback."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgepack.errors import EdgepackError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Pack a trained model into verified, benchmarked ONNX and TFLite artifacts.",
)
# At least 120 columns: the summary table is one screen wide and must not wrap when piped to a file or CI log.
out = Console(highlight=False, width=max(shutil.get_terminal_size().columns, 120))
err = Console(stderr=True, highlight=False)
DEBUG = {"on": False}


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on error.")] = False):
    DEBUG["on"] = debug


@app.command()
def pack(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default runs/NAME).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: bench.runs=20.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, only the summary.")] = False,
):
    """Run the recipe's pipeline: export, convert, verify, evaluate, bench, report."""
    from edgepack.pipeline import pack as run_pack

    result = run_pack(recipe, out=out_dir, overrides=overrides or [], quiet=quiet)
    _print_summary(result.results, result.run_dir)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/demo"),
    retrain: Annotated[bool, typer.Option(help="Train again even if the weights exist.")] = False,
):
    """Train the bundled digits CNN (seconds, offline) and pack it."""
    from edgepack.examples import digits
    from edgepack.pipeline import pack as run_pack

    weights = out_dir.resolve() / "digits_cnn.pt"
    if retrain or not weights.is_file():
        with err.status("training the digits CNN on scikit-learn's digits ..."):
            accuracy = digits.train(weights)
        err.print(f"  [green]✓[/green] trained: torch test accuracy {accuracy:.2%}, weights {weights}")
    result = run_pack(digits.RECIPE, out=out_dir, overrides=[f"model.weights={weights}"])
    _print_summary(result.results, result.run_dir)


@app.command()
def bench(
    model: Annotated[Path, typer.Argument(help="A .onnx or .tflite file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON record.")] = False,
    target: Annotated[str, typer.Option(help="Where to run: host.")] = "host",
    runs: Annotated[int, typer.Option(help="Timed runs (at least).")] = 50,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 5,
    min_seconds: Annotated[float, typer.Option(help="Keep timing until this much time has passed.")] = 1.0,
    threads: Annotated[int, typer.Option(help="Interpreter threads.")] = 1,
):
    """Benchmark a model file in a separate process (latency percentiles, memory)."""
    from device_bench import BenchOptions
    from device_bench import bench as run_bench

    options = BenchOptions(runs=runs, warmup=warmup, min_seconds=min_seconds, threads=threads)
    record = run_bench(model, target=target, options=options)
    if as_json:
        out.print_json(json.dumps(record))
        return
    from edgepack.cli_tables import bench_table

    out.print(bench_table(record))


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="A .onnx or .tflite file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Inputs and outputs (names, shapes, dtypes, quantization) and op counts of a model file."""
    from converters.inspect import describe_model

    description = describe_model(model)
    if as_json:
        out.print_json(json.dumps(description))
        return
    from edgepack.cli_tables import inspect_tables

    for table in inspect_tables(description):
        out.print(table)


@app.command()
def convert(
    model: Annotated[Path, typer.Argument(help="A .onnx, TorchScript (.pt/.ts) or torch.export (.pt2) file.")],
    to: Annotated[str, typer.Option("--to", help="onnx or tflite.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Where to write the converted file.")],
    input_shapes: Annotated[
        list[str] | None,
        typer.Option("--input-shape", help="name=1x3x224x224; needed for torch files, overrides dynamic ONNX dims."),
    ] = None,
):
    """Convert one file directly, verified against the source in both runtimes, without a recipe."""
    from edgepack.convert_file import convert_file

    result = convert_file(model, to=to, out=out_file, input_shapes=input_shapes or [])
    out.print(
        f"wrote {result['path']} ({result['bytes']:,} bytes), verified: max abs error "
        f"{result['max_abs_error']:.2e} <= tolerance {result['tolerance']:.2e} on {result['samples']} samples",
        soft_wrap=True,
    )


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'edgepack pack'.")]):
    """Rebuild report.md and manifest.json from the run's results.json."""
    from edgepack.report import rebuild_reports

    results = rebuild_reports(run_dir)
    _print_summary(results, run_dir)


def _print_summary(results: dict, run_dir: Path) -> None:
    from edgepack.cli_tables import summary_table

    out.print(summary_table(results))
    if results.get("all_cached"):
        out.print("Nothing changed since the last run: every step came from the cache.")
    out.print(f"Run folder: {run_dir}  (results.json, manifest.json, report.md)", soft_wrap=True)


def main() -> None:
    # Standalone mode: typer handles --help, usage errors and their exit code 2; we turn our own errors into one line.
    try:
        app()
    except EdgepackError as e:
        _fail(e, f"error: {e}")
    except Exception as e:
        _fail(e, f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback, and report it)")


def _fail(error: BaseException, message: str) -> None:
    if DEBUG["on"]:
        import traceback

        traceback.print_exception(error)
    print(message, file=sys.stderr)  # one line, never wrapped: CI logs and scripts grep it
    sys.exit(1)


if __name__ == "__main__":
    main()
