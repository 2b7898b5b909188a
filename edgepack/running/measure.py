"""Figures measured on each artifact in its own runtime: verification, accuracy, host benchmark."""

from __future__ import annotations

import numpy as np

from edgepack.converters.verify import Verification, pad_batch, predict, verify_session
from edgepack.core.artifacts import Artifact, Format, Precision, ancestors
from edgepack.core.dataset import ArrayDataset
from edgepack.core.errors import VerificationError
from edgepack.recipe import ModelFormat, Recipe, Task
from edgepack.running.loading import run_torch
from edgepack.running.robustness import RobustnessConfig, perturbed_datasets

TORCH_BATCH = 256  # torch runs the whole set in large batches; the artifacts run at their exported batch size


def batch_size(recipe: Recipe) -> int:
    return recipe.model.inputs[0].shape[0]


def torch_outputs(module, recipe: Recipe, dataset: ArrayDataset) -> dict[str, np.ndarray]:
    # Traced and exported programs are specialised to the shapes they were made with: feed them the recipe's batch.
    size = TORCH_BATCH if recipe.model.format == ModelFormat.TORCH else batch_size(recipe)
    parts = []
    for batch in dataset.batches(size):
        count = len(next(iter(batch.values())))
        outputs = run_torch(module, pad_batch(batch, size) if size != TORCH_BATCH else batch, recipe.model)
        parts.append({name: value[:count] for name, value in outputs.items()})
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def artifact_outputs(ctx, artifact: Artifact, dataset: ArrayDataset) -> dict[str, np.ndarray]:
    """Outputs of any artifact on a dataset, in the runtime that ships it (torch for the source module)."""
    if artifact.format == Format.TORCH:
        return torch_outputs(ctx.torch_module(artifact), ctx.recipe, dataset)
    return predict(ctx.open_session(artifact), dataset, batch_size(ctx.recipe))


def verify_artifact(ctx, artifact: Artifact, siblings: list[Artifact] = ()) -> Verification:
    """Compare with the reference on held-out samples; an artifact outside its tolerance fails the run: a float one
    by max abs error, an integer one by cosine and top-1 agreement (``verify.integer_tolerance``). ``siblings``: the
    other files of the same stage, whose per-layer SQNR a failure message also names (the ONNX and TFLite files of
    one calibration)."""
    recipe = ctx.recipe
    integer = None if artifact.precision == Precision.FP32 else recipe.verify.integer_tolerance
    verification = verify_session(
        ctx.open_session(artifact),
        ctx.verify_data,
        ctx.reference_outputs(ctx.reference_artifact(artifact)),
        batch_size=batch_size(recipe),
        relative_tolerance=recipe.verify.float_tolerance if integer is None else None,
        integer=integer,
        classifier=recipe.task == Task.CLASSIFICATION,
    )
    if not verification.passed:
        raise verification_error(ctx, artifact, verification, [artifact, *[s for s in siblings if s != artifact]])
    return verification


def verification_error(ctx, artifact: Artifact, verification: Verification, localised: list[Artifact], on: str = ""):
    """The VerificationError of a failed ``verification``, the worst figure first; ``on``: where it ran, when that
    is not this host ("on target ssh://pi@board, ")."""
    where = f"{on}{verification.runtime} {verification.runtime_version}, {verification.samples} samples"
    failures = verification.failures()
    if artifact.precision == Precision.FP32:
        worst = max(verification.outputs, key=lambda c: c.max_abs_error / (c.tolerance or 1))
        rule = f"tolerance = {ctx.recipe.verify.float_tolerance} x output range"
        return VerificationError(artifact.name, f"max abs error of output {worst.output!r} vs the reference",
                                 worst.max_abs_error, worst.tolerance or 0.0, f"{where}, {rule}")  # fmt: skip
    floor = ctx.recipe.verify.integer_tolerance
    worst = min(verification.outputs, key=lambda c: c.cosine_similarity)
    if worst.passed:  # every output's cosine is within the floor: the top-1 agreement is what failed
        metric, measured, limit = "top-1 agreement", verification.top1_agreement, floor.min_top1_agreement
    else:
        metric, measured, limit = f"cosine of output {worst.output!r}", worst.cosine_similarity, floor.min_cosine
    also = [f"all outside it: {', '.join(failures)}"] if len(failures) > 1 else []
    detail = "; ".join([where, *also, f"verify.integer_tolerance {floor.model_dump()}", *worst_layers(ctx, localised),
                        *remedies(artifact)])  # fmt: skip
    return VerificationError(artifact.name, metric, measured, limit, detail, floor=True)


def remedies(artifact: Artifact) -> list[str]:
    """What can bring a post-training integer file within its floor, for the error's last words."""
    if artifact.stage != "quantize":
        return []
    options = ["accuracy_target on the quantize stage (keeps the most sensitive layers high)"]
    if artifact.precision == Precision.INT8 and "dynamic_int8" not in artifact.details:
        options += ["precision: int16x8", "dynamic_int8: true (ONNX only: activations quantized at run time, what a "
                    "transformer's outlier activations need)"]  # fmt: skip
    return [f"to reach it: {', or '.join(options)}; or lower verify.integer_tolerance if this loss is acceptable"]


LOCALISED_BELOW_DB = 20.0  # a layer below this SQNR has lost most of its signal: where to look first


def worst_layers(ctx, artifacts: list[Artifact]) -> list[str]:
    """For each integer file: the first layer (in graph order) below LOCALISED_BELOW_DB and the lowest three.
    Errors add up along the graph, so the first layer that drops is the likely culprit."""
    from edgepack.stages.registry import get_stage

    found = []
    for artifact in artifacts:
        measurement = get_stage(artifact.stage).measurements.get("layer_sqnr") if artifact.stage != "load" else None
        try:
            layers = measurement.measure(ctx.stage_view(), artifact) if measurement else None
        except Exception as e:  # a hint only: the verification failure stays the error
            found.append(f"per-layer SQNR of {artifact.name} could not be measured: {e}")
            continue
        if layers is not None:
            found.append(_describe_layers(artifact.name, layers))
    return found


def _describe_layers(name: str, layers: list[dict]) -> str:
    def named(layer: dict) -> str:
        op = f" ({layer['op']})" if layer.get("op") else ""
        return f"{layer['layer']!r}{op} {layer['sqnr_db']:.1f} dB"

    first = next((layer for layer in layers if layer["sqnr_db"] < LOCALISED_BELOW_DB), None)
    lowest = sorted(layers, key=lambda layer: layer["sqnr_db"])[:3]
    start = f"first below {LOCALISED_BELOW_DB:.0f} dB {named(first)}; " if first else ""
    return f"per-layer SQNR in {name}: {start}lowest {', '.join(named(layer) for layer in lowest)}"


def evaluate_artifact(ctx, artifact: Artifact) -> dict | None:
    """Top-1 accuracy on the evaluation data, measured in the artifact's runtime."""
    data = ctx.eval_data
    if data is None or data.labels is None or ctx.recipe.task != Task.CLASSIFICATION:
        return None
    top1_accuracy = top1(artifact_outputs(ctx, artifact, data), data.labels)
    return {"top1": top1_accuracy, "samples": len(data), "runtime": runtime_name(ctx, artifact)}


def top1(outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy of the first output (the class scores) against integer labels."""
    logits = next(iter(outputs.values()))
    return float(np.mean(logits.reshape(len(logits), -1).argmax(1) == labels))


def runtime_name(ctx, artifact: Artifact) -> str:
    if artifact.format == Format.TORCH:
        import torch

        return f"torch {torch.__version__}"
    session = ctx.open_session(artifact)
    return f"{session.runtime} {session.version}"


def descends_from(ctx, artifact: Artifact, stage: str) -> bool:
    """Whether ``artifact`` or one of its ancestors was written by ``stage``."""
    return any(a.stage == stage for a in [artifact, *ancestors(ctx.artifacts, artifact)])


def weight_sparsity(ctx, artifact: Artifact) -> list[dict]:
    """Fraction of zero weights of every Conv/Linear layer: from the module for torch, else read from the file."""
    from edgepack.converters.sparsity import layer_sparsity, onnx_weight_sparsity, tflite_weight_sparsity

    if artifact.format == Format.ONNX:
        return onnx_weight_sparsity(ctx.artifact_path(artifact))
    if artifact.format == Format.TFLITE:
        return tflite_weight_sparsity(ctx.artifact_path(artifact))
    from edgepack.compression.pruning import prunable_layers

    layers = prunable_layers(ctx.torch_module(artifact))
    return [layer_sparsity(name, layer.weight.detach().numpy()) for name, layer in layers.items()]


def robustness_record(ctx, artifact: Artifact, config: RobustnessConfig) -> dict:
    """The ``Robustness`` record (core/results_format.py) of one artifact, run in its own runtime."""
    dataset = ctx.eval_data
    if config.max_samples is not None and config.max_samples < len(dataset):
        dataset = dataset.take(np.arange(config.max_samples))
    outputs_of = _many_samples_a_call(ctx, artifact)
    conditions = []
    for condition, perturbed in perturbed_datasets(config, dataset, ctx.recipe.seed):
        conditions.append({**condition, "top1": top1(outputs_of(perturbed), dataset.labels)})
    clean = top1(outputs_of(dataset), dataset.labels)
    runtime = runtime_name(ctx, artifact)
    return {"clean_top1": clean, "samples": len(dataset), "runtime": runtime, "conditions": conditions}


def _many_samples_a_call(ctx, artifact: Artifact):
    """dataset -> outputs for the robustness passes (up to a thousand samples, six times over): an ONNX file many
    samples a call where that computes what one sample a call does (running/batched.py); TFLite and torch as
    ``artifact_outputs`` runs them."""
    if artifact.format != Format.ONNX:
        return lambda dataset: artifact_outputs(ctx, artifact, dataset)
    from edgepack.running.batched import onnx_outputs_batched

    return onnx_outputs_batched(ctx.artifact_path(artifact))
