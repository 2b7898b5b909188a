"""What keeps QAT from shipping a model worse than PTQ without saying so.

- A seeded slice of the QAT training data is held out of the fine-tune. The simulated model is scored on it before
  training and after every epoch, and the best state is kept. Before training the prepared model computes what the
  PTQ files compute (same ranges, same grids), so that state is PTQ: a fine-tune that diverges (a learning rate too
  high for the BatchNorm-folded weights took a small ResNet from 99.4 % to 10 %) ends where PTQ would, not below.
- The PTQ int8 ONNX file of the starting model and the QAT one are both written and run in onnxruntime on that
  held-out slice; the stage records both (``details.qat.vs_ptq``) and the reports warn when QAT ends below.
- Before export, the QAT model is checked against the float model it started from with the integer tolerance the
  pipeline applies to int8 files (cosine, top-1 agreement); outside it, a VerificationError names the figures.

The evaluation data never decides anything here: the held-out slice comes from the training data.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from edgepack.calibration.ptq import Calibration
from edgepack.converters.verify import IntegerTolerance, compare
from edgepack.core.dataset import ArrayDataset
from edgepack.core.errors import VerificationError


def split_holdout(data: ArrayDataset, fraction: float, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """(to train on, held out): a seeded ``fraction`` of the samples, at least one, kept out of the fine-tune."""
    order = np.random.default_rng(seed).permutation(len(data))
    count = min(max(1, round(len(data) * fraction)), len(data) - 1)
    return data.take(np.sort(order[count:])), data.take(np.sort(order[:count]))


def held_out_score(model: torch.nn.Module, data: ArrayDataset, input_names: list[str]) -> tuple[float, float]:
    """(top-1, minus the mean cross-entropy) of ``model`` on labelled ``data``: higher is better, the loss breaks
    ties between epochs with the same top-1."""
    logits = torch.from_numpy(module_logits(model, data, input_names))
    labels = torch.from_numpy(data.labels.astype(np.int64))
    top1 = float((logits.argmax(1) == labels).float().mean())
    return top1, -float(torch.nn.functional.cross_entropy(logits, labels))


def module_logits(model: torch.nn.Module, data: ArrayDataset, input_names: list[str]) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        parts = [model(*(torch.from_numpy(batch[n]) for n in input_names)) for batch in data.batches(256)]
    return torch.cat([p[0] if isinstance(p, tuple | list) else p for p in parts]).numpy()


class BestEpoch:
    """Called after each epoch (``finetune``'s on_epoch): keeps the state of the best-scoring epoch on held-out
    data; epoch 0, scored at creation, is the prepared model, i.e. PTQ."""

    def __init__(self, model: torch.nn.Module, data: ArrayDataset, input_names: list[str]):
        self.model, self.data, self.input_names = model, data, input_names
        self.scores: list[tuple[float, float]] = []
        self.best, self.state = 0, None
        self(0)

    def __call__(self, epoch: int) -> None:
        self.scores.append(held_out_score(self.model, self.data, self.input_names))
        if epoch == 0 or self.scores[-1] > self.scores[self.best]:
            self.best, self.state = epoch, {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self) -> dict:
        """Load the best state back into the model; the record of what was kept."""
        self.model.load_state_dict(self.state)
        self.model.eval()
        top1 = [round(top1, 4) for top1, _ in self.scores]
        return {"kept_epoch": self.best, "held_out_top1_by_epoch": top1, "samples": len(self.data)}


def int8_onnx_figures(float_onnx: onnx.ModelProto, calibration: Calibration, data: ArrayDataset,
                      reference: np.ndarray, batch: int) -> dict:  # fmt: skip
    """Top-1 and agreement with ``reference`` (the float starting model's logits) of the int8 ONNX QDQ file written
    from ``calibration``, run in onnxruntime on ``data``."""
    from edgepack.converters.qdq import write_qdq_model
    from edgepack.converters.runtime import open_session
    from edgepack.converters.verify import predict

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "int8.onnx"
        write_qdq_model(float_onnx, path, calibration.plan, calibration.activations)
        session = open_session(path)
        logits = next(iter(predict(session, data, batch).values()))
    return {"top1": _top1(logits, data.labels), "agreement": _top1(logits, reference.argmax(1)),
            "runtime": f"{session.runtime} {session.version}"}  # fmt: skip


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.reshape(len(logits), -1).argmax(1) == labels))


def vs_ptq_record(ptq: dict, qat: dict, data_description: str, samples: int) -> dict:
    """Both int8 files on the same held-out samples; ``qat_below_ptq`` is what the reports warn about."""
    return {"data": f"{samples} held-out samples of {data_description}", "ptq": ptq, "qat": qat,
            "qat_below_ptq": qat["top1"] < ptq["top1"]}  # fmt: skip


def check_against_float(artifact: str, outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], *,
                        tolerance: IntegerTolerance | None, classifier: bool) -> dict:  # fmt: skip
    """Cosine (every output) and top-1 agreement (the first output, for a classifier) of ``outputs`` with
    ``reference``; a VerificationError naming the measured figure when one is below ``tolerance`` (None: the
    figures are recorded only)."""
    comparisons, agreement = compare(reference, outputs, relative_tolerance=None, classifier=classifier)
    worst = min(comparisons, key=lambda c: c.cosine_similarity)
    figures = {"cosine_similarity": worst.cosine_similarity, "top1_agreement": agreement,
               "samples": len(next(iter(outputs.values())))}  # fmt: skip
    if tolerance is None:
        return figures
    detail = (f"{figures['samples']} verification samples, vs the float model QAT started from "
              "(verify.integer_tolerance); lower the qat learning rate or train fewer epochs")  # fmt: skip
    if worst.cosine_similarity < tolerance.min_cosine:
        raise VerificationError(artifact, f"cosine of output {worst.output!r}", worst.cosine_similarity,
                                tolerance.min_cosine, detail, floor=True)  # fmt: skip
    if agreement is not None and agreement < tolerance.min_top1_agreement:
        raise VerificationError(artifact, "top-1 agreement", agreement, tolerance.min_top1_agreement, detail,
                                floor=True)  # fmt: skip
    return figures
