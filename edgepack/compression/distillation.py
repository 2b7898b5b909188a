"""Fine-tuning with knowledge distillation (Hinton et al. 2015), used after pruning or low-rank factorisation.

The student learns from the labels and from the teacher's (the original model's) softened outputs:

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y) + feature_weight * feature MSE

The KL term is the standard distillation direction: the teacher's distribution is the target the student's log
probabilities are scored against (torch's kl_div). T^2 keeps its gradients on the scale of the hard-label term.
Data comes through the calibration contract (ArrayDataset), with labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgepack.compression.options import FinetuneConfig, Optimizer
from edgepack.core.dataset import ArrayDataset
from edgepack.core.errors import DataError, FinetuneError, closest_names


@dataclass
class FinetuneReport:
    steps: int
    epoch_losses: list[float] = field(default_factory=list)
    train_accuracy: float = 0.0
    distilled: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def finetune(
    student: nn.Module,
    data: ArrayDataset,
    config: FinetuneConfig,
    *,
    teacher: nn.Module | None = None,
    input_names: list[str],
    on_step: Callable[[int], None] | None = None,
    on_epoch: Callable[[int], None] | None = None,
    on_progress: Callable[..., None] | None = None,
) -> FinetuneReport:
    """Train ``student`` in place on ``data`` (distilling from ``teacher`` when given); it ends in eval mode.

    ``on_step(step)`` runs once with step 0 before training, then after every optimizer step (1, 2, ...): a gradual
    pruner hooks in there. ``on_epoch(epoch)`` runs after each pass (1, 2, ...) with the student in eval mode: QAT
    scores each epoch there. ``on_progress(done, total, text, milestone=...)`` hears of every step (the epoch's
    end as a milestone): a minutes-long fine-tune shows where it is. Without a teacher, alpha must be 0 and there
    is no feature matching.
    """
    labels = _check_inputs(data, input_names, config, teacher)
    notify = on_step or (lambda step: None)
    progress = on_progress or (lambda *args, **kwargs: None)
    per_epoch = math.ceil(len(data) / config.batch_size)
    with torch.random.fork_rng(devices=[]), _FeatureTaps(student, teacher, config.feature_matching) as taps:
        torch.manual_seed(config.seed)
        if teacher is not None:
            teacher.eval()
        optimizer = _optimizer(student, config)
        report = FinetuneReport(
            steps=0, distilled=teacher is not None and (config.alpha > 0 or bool(config.feature_matching))
        )
        notify(0)
        progress(0, config.epochs * per_epoch, f"epoch 1/{config.epochs}")  # starts the clock of the ETA
        rng = np.random.default_rng(config.seed)
        for epoch in range(1, config.epochs + 1):
            student.train()
            losses = []
            for step, (inputs, targets) in enumerate(_shuffled_batches(data, labels, input_names, config.batch_size,
                                                                       rng), 1):  # fmt: skip
                losses.append(_train_step(student, teacher, optimizer, inputs, targets, config, taps))
                report.steps += 1
                notify(report.steps)
                progress((epoch - 1) * per_epoch + step, config.epochs * per_epoch,
                         f"epoch {epoch}/{config.epochs}, loss {np.mean(losses):.3g}")  # fmt: skip
            report.epoch_losses.append(float(np.mean(losses)))
            progress(epoch * per_epoch, config.epochs * per_epoch,
                     f"epoch {epoch}/{config.epochs}, loss {report.epoch_losses[-1]:.3g}", milestone=True)  # fmt: skip
            if on_epoch is not None:
                student.eval()
                on_epoch(len(report.epoch_losses))
    student.eval()
    report.train_accuracy = accuracy(student, data, input_names, config.batch_size)
    return report


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * T^2 * KL(p_teacher || p_student) at temperature T, plus (1 - alpha) * cross-entropy with the labels."""
    hard = F.cross_entropy(student_logits, labels)
    if alpha == 0:
        return hard
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1 - alpha) * hard


def accuracy(model: nn.Module, data: ArrayDataset, input_names: list[str], batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (as it is, train or eval mode) on the labelled ``data``."""
    if data.labels is None:
        raise DataError("accuracy needs labelled data; the data has no labels")
    correct = 0
    with torch.no_grad():
        for start, batch in zip(range(0, len(data), batch_size), data.batches(batch_size), strict=True):
            logits = _logits(model(*_tensors(batch, input_names)))
            correct += int((logits.argmax(1).numpy() == data.labels[start : start + batch_size]).sum())
    return correct / len(data)


# --- checks -------------------------------------------------------------------------------------------------------


def _check_inputs(
    data: ArrayDataset, input_names: list[str], config: FinetuneConfig, teacher: nn.Module | None
) -> np.ndarray:
    if data.labels is None:
        raise DataError(
            "fine-tuning trains on labelled data, but the data has no labels: add an int64 'labels' array "
            "(one per sample) to the .npz file, or use the bundled digits data (data: digits)"
        )
    missing = [name for name in input_names if name not in data.inputs]
    if missing:
        raise DataError(f"fine-tuning data has no array for input(s) {missing}; it holds {sorted(data.inputs)}")
    if len(data) == 0:
        raise DataError("fine-tuning data holds no samples")
    if len(data.labels) != len(data):
        raise DataError(f"fine-tuning data has {len(data)} samples but {len(data.labels)} labels; give one per sample")
    if teacher is None and (config.alpha > 0 or config.feature_matching):
        raise FinetuneError(
            f"fine-tuning with alpha={config.alpha} and feature_matching={config.feature_matching} learns from a "
            "teacher, but none was given: pass teacher=<the original model>, or set alpha: 0 and no "
            "feature_matching to train on the labels alone"
        )
    return data.labels.astype(np.int64)


# --- training -----------------------------------------------------------------------------------------------------


def _optimizer(student: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    if config.optimizer == Optimizer.SGD:
        return torch.optim.SGD(student.parameters(), lr=config.learning_rate, momentum=0.9)
    return torch.optim.Adam(student.parameters(), lr=config.learning_rate)


def _shuffled_batches(
    data: ArrayDataset, labels: np.ndarray, input_names: list[str], batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    order = rng.permutation(len(data))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        # A single-sample batch breaks batch norm in training mode (no variance to estimate); drop it.
        if len(indices) < 2 and len(order) >= 2:
            continue
        batch = {name: data.inputs[name][indices] for name in input_names}
        yield _tensors(batch, input_names), torch.from_numpy(labels[indices])


def _train_step(student, teacher, optimizer, inputs, targets, config: FinetuneConfig, taps: _FeatureTaps) -> float:
    optimizer.zero_grad()
    student_logits = _logits(student(*inputs))
    teacher_logits = student_logits.detach()
    if teacher is not None:
        with torch.no_grad():
            teacher_logits = _logits(teacher(*inputs))
    loss = distillation_loss(
        student_logits, teacher_logits, targets, temperature=config.temperature, alpha=config.alpha
    )
    if config.feature_matching:
        loss = loss + config.feature_weight * taps.loss()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _tensors(batch: dict[str, np.ndarray], input_names: list[str]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(batch[name])) for name in input_names]


def _logits(output) -> torch.Tensor:
    # Models that return (logits, extras...) are common; the first output is taken as the logits.
    logits = output[0] if isinstance(output, tuple | list) else output
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise FinetuneError(
            f"fine-tuning needs the model's (first) output to be class logits of shape (batch, classes); got "
            f"{getattr(logits, 'shape', type(logits).__name__)}"
        )
    return logits


# --- feature matching ---------------------------------------------------------------------------------------------


class _FeatureTaps:
    """Forward hooks that keep the latest output of each matched student and teacher layer."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, pairs: list[tuple[str, str]]):
        self.pairs = [(s, t) for s, t in pairs]
        self.outputs: dict[tuple[str, str], torch.Tensor] = {}
        self.handles = []
        for s, t in self.pairs:
            self._tap(student, s, "student", ("student", s))
            self._tap(teacher, t, "teacher", ("teacher", t))

    def _tap(self, model: nn.Module, name: str, role: str, key: tuple[str, str]) -> None:
        layer = _layer(model, name, role)

        def keep(_module, _inputs, output):
            self.outputs[key] = output[0] if isinstance(output, tuple | list) else output

        self.handles.append(layer.register_forward_hook(keep))

    def loss(self) -> torch.Tensor:
        total = 0.0
        for s, t in self.pairs:
            student_out, teacher_out = self.outputs[("student", s)], self.outputs[("teacher", t)].detach()
            if student_out.shape != teacher_out.shape:
                raise FinetuneError(
                    f"feature matching pairs student layer {s!r} (output shape {list(student_out.shape)}) with "
                    f"teacher layer {t!r} (output shape {list(teacher_out.shape)}); the shapes must be equal. "
                    "Pick layers whose outputs have the same shape"
                )
            total = total + F.mse_loss(student_out, teacher_out)
        return total / len(self.pairs)

    def __enter__(self) -> _FeatureTaps:
        return self

    def __exit__(self, *_exc) -> None:
        for handle in self.handles:
            handle.remove()


def _layer(model: nn.Module, name: str, role: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        close = closest_names(name, [n for n in modules if n])
        hint = f"did you mean {', '.join(close)}?" if close else f"its layers: {', '.join(n for n in modules if n)}"
        raise FinetuneError(f"feature matching names {role} layer {name!r}, which does not exist ({hint})")
    return modules[name]
