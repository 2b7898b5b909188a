"""The command line: a thin layer over the Python API. One line per error, exit 1; --debug shows the traceback."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgepack.core.errors import EdgepackError

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
def _options(
    context: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on error.")] = False,
):
    from edgepack.running import interrupts

    DEBUG["on"] = debug
    interrupts.name_command(context.invoked_subcommand)  # what a Ctrl-C outside any named step interrupted


@app.command()
def pack(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default runs/NAME).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: bench.runs=20.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, only the summary.")] = False,
    rebench: Annotated[bool, typer.Option(help="Measure latencies again (not from the cache).")] = False,
):
    """Run the recipe's pipeline: export, convert, verify, evaluate, bench, report."""
    from edgepack.running.pipeline import pack as run_pack

    result = run_pack(recipe, out=out_dir, overrides=overrides or [], quiet=quiet, rebench=rebench)
    _print_summary(result.results, result.run_dir)
    if result.results.get("gate"):
        _finish_gate(result.results["gate"])


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/demo"),
    retrain: Annotated[bool, typer.Option(help="Train again even if the weights exist.")] = False,
):
    """Train the bundled digits CNN (seconds, offline) and pack it."""
    from edgepack.examples import digits
    from edgepack.running.pipeline import pack as run_pack

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
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON record (a list if several).")] = False,
    target: Annotated[str, typer.Option(help="Where to run: host, ssh://user@host[:port] or adb://SERIAL.")] = "host",
    runs: Annotated[int, typer.Option(help="Timed runs (at least).")] = 50,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 5,
    min_seconds: Annotated[float, typer.Option(help="Keep timing until this much time has passed.")] = 1.0,
    threads: Annotated[str, typer.Option(help="Interpreter threads; a list like 1,2,4 gives a record each.")] = "1",
    identity_file: Annotated[Path | None, typer.Option(help="ssh: the private key to log in with.")] = None,
    known_hosts: Annotated[Path | None, typer.Option(help="ssh: known_hosts to check the host in.")] = None,
    remote_python: Annotated[str, typer.Option(help="ssh/adb: the device's Python command.")] = "python3",
    benchmark_model: Annotated[
        Path | None, typer.Option(help="ssh/adb: TFLite's benchmark_model binary for the device, for .tflite files.")
    ] = None,
    input_shapes: Annotated[
        list[str] | None,
        typer.Option(
            "--input-shape", help="name=1x3x224x224 for an input with dynamic dimensions (the file's layout)."
        ),
    ] = None,
    input_values: Annotated[
        list[str] | None,
        typer.Option("--input", help="NAME=FILE.npy: feed this value, not random data (a sample rate, a state)."),
    ] = None,
    verify: Annotated[
        Path | None,
        typer.Option(
            help="Samples (.npz, one array per input, ONNX layout) to run on the target and on the host in the same "
            "runtime; records how far apart the outputs are."
        ),
    ] = None,
):
    """Benchmark a model file in a separate process (latency percentiles, memory, energy)."""
    from pydantic import ValidationError

    from edgepack.convert_file import parse_input_shapes, parse_input_values
    from edgepack.core.errors import UserError
    from edgepack.device_bench import BenchOptions, bench_each_thread_count
    from edgepack.recipe_errors import describe_validation_error

    fields = {"runs": runs, "warmup": warmup, "min_seconds": min_seconds, "threads": threads}
    fields["input_shapes"] = parse_input_shapes(input_shapes or [])
    fields["input_values"] = parse_input_values(input_values or [])
    fields |= {"ssh_identity_file": identity_file, "ssh_known_hosts": known_hosts, "remote_python": remote_python}
    try:
        options = BenchOptions(**fields, benchmark_model=benchmark_model)
    except ValidationError as e:
        raise UserError(describe_validation_error(e, "edgepack bench", BenchOptions)) from e
    if verify is not None:
        from edgepack.target_verify import bench_and_verify

        records = bench_and_verify(model, target, options, verify)
    else:
        records = bench_each_thread_count(model, target=target, options=options)
    if as_json:
        out.print_json(json.dumps(records[0] if len(records) == 1 else records))
        return
    from edgepack.reports.tables import bench_table, verification_table

    out.print(bench_table(records))
    if verify is not None:
        out.print(verification_table(records))


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="A .onnx or .tflite file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Inputs and outputs (names, shapes, dtypes, quantization) and op counts of a model file."""
    from edgepack.converters.inspect import describe_model

    description = describe_model(model)
    if as_json:
        out.print_json(json.dumps(description))
        return
    from edgepack.reports.tables import inspect_tables

    for table in inspect_tables(description):
        out.print(table)


@app.command()
def convert(
    model: Annotated[Path, typer.Argument(help="A .onnx, TorchScript (.pt/.ts) or torch.export (.pt2) file.")],
    to: Annotated[str, typer.Option("--to", help="onnx or tflite.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Where to write the converted file.")],
    input_shapes: Annotated[
        list[str] | None,
        typer.Option(
            "--input-shape",
            help="name=1x3x224x224 (needed for torch files, overrides dynamic ONNX dims); "
            "name=2x1x128@1: the batch is axis 1; name= a scalar.",
        ),
    ] = None,
    input_values: Annotated[
        list[str] | None,
        typer.Option("--input", help="NAME=FILE.npy: this input's value in every verification sample, not random."),
    ] = None,
    precision: Annotated[str, typer.Option(help="fp32, int8 or int16x8 (16-bit activations, 8-bit weights).")] = "fp32",
    calib: Annotated[
        Path | None, typer.Option(help="Calibration data for int8/int16x8: a .npz, one array per input.")
    ] = None,
    per_tensor_weights: Annotated[bool, typer.Option(help="One int8 scale per weight tensor.")] = False,
    equalize: Annotated[bool, typer.Option(help="Cross-layer equalization before calibrating.")] = False,
    bias_correction: Annotated[
        bool | None,
        typer.Option("--bias-correction/--no-bias-correction", help="Correct biases for the int8 weights' mean "
                     "error: always, or never; default: where it helps on held-out calibration samples."),
    ] = None,
    dynamic_int8: Annotated[
        bool, typer.Option(help="ONNX only: activations quantized at run time by onnxruntime (transformers).")
    ] = False,
    min_output_sqnr: Annotated[
        float | None, typer.Option(help="Mixed precision: keep sensitive layers high until the output SQNR is this.")
    ] = None,
    min_cosine: Annotated[
        float | None,
        typer.Option(
            help="Integer files: the lowest cosine of each output to the source that counts as verified "
            "(default 0.99); below it nothing is written and the command fails."
        ),  # fmt: skip
    ] = None,
):
    """Convert one file directly, verified against the source in both runtimes, without a recipe."""
    from edgepack.convert_file import convert_file, parse_input_values

    flags = {"per_channel_weights": (per_tensor_weights, False), "cross_layer_equalization": (equalize, True),
             "dynamic_int8": (dynamic_int8, True)}  # fmt: skip
    options = {field: value for field, (given, value) in flags.items() if given}
    options |= {} if bias_correction is None else {"bias_correction": bias_correction}
    if min_output_sqnr is not None:
        options["accuracy_target"] = {"min_output_sqnr_db": min_output_sqnr}
    result = convert_file(model, to=to, out=out_file, input_shapes=input_shapes or [], precision=precision,
                          calib=calib, quant_options=options, min_cosine=min_cosine,
                          input_values=parse_input_values(input_values or []))  # fmt: skip
    check = (
        f"max abs error {result['max_abs_error']:.2e} <= tolerance {result['tolerance']:.2e}"
        if result["tolerance"] is not None
        else f"cosine {result['cosine_similarity']:.5f} >= {result['min_cosine']} (max abs error "
        f"{result['max_abs_error']:.2e})"
    )
    out.print(
        f"wrote {result['path']} ({result['bytes']:,} bytes, {result['precision']}), verified against the source: "
        f"{check} on {result['samples']} samples",
        soft_wrap=True,
    )


@app.command()
def report(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="RUN_DIR to rebuild its reports, or RUN_A RUN_B to compare two runs.")
    ],
):
    """Rebuild a run's reports and manifest from its results.json; with two runs, show what changed from A to B."""
    if len(run_dirs) > 2:
        raise typer.BadParameter("give one run folder (rebuild) or two (compare)", param_hint="RUN_DIRS")
    if len(run_dirs) == 2:
        from edgepack.reports.compare import write_comparison
        from edgepack.reports.tables import comparison_table

        out.print(comparison_table(write_comparison(*run_dirs)))
        out.print(f"Wrote {run_dirs[1] / 'comparison.md'} and comparison.json", soft_wrap=True)
        return
    from edgepack.reports.report import rebuild_reports

    results = rebuild_reports(run_dirs[0])
    _print_summary(results, run_dirs[0])


@app.command()
def gate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'edgepack pack'.")],
    max_accuracy_drop: Annotated[
        float | None, typer.Option(help="Largest top-1 drop from the source model, in percentage points.")
    ] = None,
    max_robustness_drop: Annotated[
        float | None,
        typer.Option(help="Largest top-1 drop from the source model under the same perturbation, in points."),
    ] = None,
    max_latency_ms: Annotated[float | None, typer.Option(help="Largest latency of every benchmark record.")] = None,
    max_bytes: Annotated[str | None, typer.Option(help="Largest artifact file: 2MB, 512KiB or bytes.")] = None,
    latency_statistic: Annotated[str | None, typer.Option(help="mean, p50 (default), p90, p99 or max.")] = None,
    target: Annotated[str | None, typer.Option(help="Check only the benchmark records of this target.")] = None,
    artifact: Annotated[list[str] | None, typer.Option(help="Check only this artifact (repeatable).")] = None,
):
    """Check a run against budgets (flags, or the recipe's gate block); exit 1 with one line per violated budget."""
    from edgepack.reports.gate import check_run

    flags = {"max_accuracy_drop": max_accuracy_drop, "max_robustness_drop": max_robustness_drop,
             "max_latency_ms": max_latency_ms, "max_bytes": max_bytes}  # fmt: skip
    flags |= {"latency_statistic": latency_statistic, "target": target, "artifacts": artifact or None}
    _finish_gate(check_run(run_dir, flags))


from edgepack.sweeps.cli import sweep_command  # noqa: E402  (Ray loads only when a sweep runs)

app.command("sweep")(sweep_command)


@app.command()
def stages(name: Annotated[str | None, typer.Argument(help="A stage to describe; all stages when omitted.")] = None):
    """List the stages a recipe can name, or one stage's settings (key, default, what it does)."""
    from edgepack.stages.registry import get_stage, stage_names

    if name is None:
        for entry in map(get_stage, stage_names()):
            out.print(f"{entry.name:<10} {_first_sentence(sys.modules[entry.run.__module__].__doc__)}", soft_wrap=True)
        return
    from pydantic_core import to_jsonable_python

    entry = get_stage(name)
    for key, field in entry.config_class.model_fields.items():
        if key != "stage":
            # As the recipe spells it: an enum by its value, a nested block as its mapping (not Python's repr).
            value = to_jsonable_python(field.get_default(call_default_factory=True), fallback=str)
            default = "" if field.is_required() else f" (default {json.dumps(value)})"
            out.print(f"{key}{default}\n    {field.description}", markup=False)  # '[a, b]' in help is text


def _first_sentence(doc: str | None) -> str:
    paragraph = " ".join((doc or "").split("\n\n")[0].split())
    return paragraph.partition(": ")[2].split(". ")[0].rstrip(".") if ": " in paragraph else paragraph


def _finish_gate(outcome: dict) -> None:
    from edgepack.reports.gate import outcome_lines

    for line in outcome_lines(outcome):
        print(line)  # plain print: one line each, never wrapped, for CI logs
    if not outcome["passed"]:
        raise typer.Exit(1)


def _print_summary(results: dict, run_dir: Path) -> None:
    from edgepack.reports.data import accuracy_drops, mixed_precision_notes, qat_below_ptq, slower_than_float
    from edgepack.reports.tables import summary_table

    out.print(summary_table(results))
    for line in mixed_precision_notes(results["artifacts"]) + slower_than_float(results["artifacts"]):
        out.print(f"note: {line}", soft_wrap=True)
    for line in qat_below_ptq(results["artifacts"]) + accuracy_drops(results["artifacts"]):
        out.print(f"warning: {line}", soft_wrap=True)
    if results.get("all_cached"):
        out.print("Nothing changed since the last run: every step came from the cache.")
    out.print(f"Run folder: {run_dir}  (results.json, manifest.json, report.md, report.html)", soft_wrap=True)


def main() -> None:
    # Standalone mode: typer handles --help, usage errors and their exit code 2; we turn our own errors into one line.
    from edgepack.running import interrupts

    interrupts.install()
    try:
        app()
    except BaseException as e:
        # Ctrl-C first, whatever it became on its way out (typer's exit 130, a library's wrapped error).
        if interrupts.interrupted():
            print(interrupts.message(), file=sys.stderr)
            sys.exit(interrupts.EXIT_CODE)
        if isinstance(e, EdgepackError):
            _fail(e, f"error: {e}")
        if isinstance(e, Exception):
            _fail(e, f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback, and report it)")
        raise


def _fail(error: BaseException, message: str) -> None:
    if DEBUG["on"]:
        import traceback

        traceback.print_exception(error)
    print(message, file=sys.stderr)  # one line, never wrapped: CI logs and scripts grep it
    sys.exit(1)


if __name__ == "__main__":
    main()
