"""Verification on a remote benchmark target (ssh://, adb://): the verification samples travel with the benchmark
(device_bench.run_on_target), and what the device computed is held to the reference exactly as host verification
holds the file (converters.verify.judge, the recipe's ``verify`` tolerances), and compared with the host's run of
the same file (edgepack.target_verify.agreement: for an integer output, how many of its steps apart).

A float file outside ``verify.float_tolerance`` on the device, an integer file outside
``verify.integer_tolerance``, or an integer output more than one step from the host's fails the run.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

from edgepack.converters.output_steps import output_steps
from edgepack.converters.verify import Verification, judge, outputs_from_runtime, runtime_samples
from edgepack.core.artifacts import Artifact, Precision
from edgepack.core.errors import VerificationError
from edgepack.device_bench import BenchOptions, TargetRun, bench, run_on_target
from edgepack.recipe import Task
from edgepack.running.cache import cache_key
from edgepack.running.measure import verification_error
from edgepack.target_verify import OUTPUTS_ONLY, agreement

REMOTE_PREFIXES = ("ssh://", "adb://")
# A thousandth of a step absorbs float rounding of dequantized values (as target_verify.steps_apart).
MAX_STEPS_FROM_HOST = 1.0 + 1e-3


def is_remote(target: str) -> bool:
    return target.startswith(REMOTE_PREFIXES)


class TargetCheck:
    """One artifact's verification samples in its runtime's layout, its host run (made once per thread count, only
    when a record is not cached), and the check of a device's outputs against both."""

    def __init__(self, ctx, artifact: Artifact):
        self.ctx, self.artifact = ctx, artifact
        self.path: Path = ctx.artifact_path(artifact)
        self._host_runs: dict[int, TargetRun] = {}

    @cached_property
    def _prepared(self) -> tuple[dict, list[int]]:
        return runtime_samples(self.ctx.open_session(self.artifact), self.ctx.verify_data, self.ctx.batch_size)

    @property
    def key(self) -> str:
        """What the check depends on beyond the benchmark's key: the samples' content, the reference, the rules."""
        samples, counts = self._prepared
        content = [[name, str(a.dtype), list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()]
                   for name, a in sorted(samples.items())]  # fmt: skip
        recipe = self.ctx.recipe
        reference = self.ctx.reference_artifact(self.artifact).sha256
        return cache_key(content, counts, reference, recipe.verify.model_dump(mode="json"), recipe.task)

    def bench(self, target: str, options: BenchOptions) -> dict:
        """The benchmark record of ``target`` with ``verification_on_target``; raises VerificationError."""
        samples, _ = self._prepared
        if options.benchmark_model is None:  # the runner times and then runs the samples: one call
            run = run_on_target(self.path, target, samples, options)
            record = run.record
        else:  # benchmark_model only times: the samples run in an outputs-only call of the runner
            record = bench(self.path, target, options)
            run = run_on_target(self.path, target, samples, _outputs_only(options))
        return record | {"verification_on_target": self.check(target, run, options)}

    def check(self, target: str, run: TargetRun, options: BenchOptions) -> dict:
        ctx, artifact = self.ctx, self.artifact
        session, (_, counts) = ctx.open_session(artifact), self._prepared
        verification = self._judge(outputs_from_runtime(session, run.outputs, counts), run.record)
        host = agreement(session, run, self._host_run(options), counts, output_steps(self.path))
        on = f"on target {target}, "
        if not verification.passed:
            raise verification_error(ctx, artifact, verification, [], on=on)
        if artifact.precision != Precision.FP32:
            _check_steps(artifact.name, host["outputs"], f"{on}{verification.runtime} {verification.runtime_version}")
        return verification.model_dump() | {"host_run": host}

    def _judge(self, device: dict, record: dict) -> Verification:
        ctx, recipe = self.ctx, self.ctx.recipe
        integer = None if self.artifact.precision == Precision.FP32 else recipe.verify.integer_tolerance
        reference = ctx.reference_outputs(ctx.reference_artifact(self.artifact))
        relative = recipe.verify.float_tolerance if integer is None else None
        runtime = (record["runtime"], record["runtime_version"])
        return judge(reference, device, runtime, relative, integer, recipe.task == Task.CLASSIFICATION)

    def _host_run(self, options: BenchOptions) -> TargetRun:
        """The same file on this host, in the same runtime, fed the same samples (one per thread count)."""
        if options.threads not in self._host_runs:
            host = run_on_target(self.path, "host", self._prepared[0], _outputs_only(options))
            self._host_runs[options.threads] = host
        return self._host_runs[options.threads]


def _outputs_only(options: BenchOptions) -> BenchOptions:
    return options.model_copy(update=OUTPUTS_ONLY | {"benchmark_model": None})


def _check_steps(name: str, outputs: list[dict], where: str) -> None:
    """An integer file computes on the device what it computes here, give or take one step of its output grid."""
    for output in outputs:
        if output["max_steps"] is not None and output["max_steps"] > MAX_STEPS_FROM_HOST:
            share, step, error = output["within_one_step"], output["output_step"], output["max_abs_error"]
            detail = f"{where}; {share:.1%} of values within one step of {step:.3g}, max abs error {error:.3g}"
            raise VerificationError(name, f"output {output['output']!r} steps from the host run of the same file",
                                    output["max_steps"], 1.0, detail)  # fmt: skip
