"""Fine-tuning with knowledge distillation: recovers a damaged digits model on held-out data, the loss matches a
hand computation, the step callback's schedule, determinism, feature matching, and the bad-input errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from edgepack.calibration.sources import digits_split
from torch import nn

from edgepack.compression.distillation import accuracy, distillation_loss, finetune
from edgepack.compression.factorisation import factorise
from edgepack.compression.options import FinetuneConfig
from edgepack.core.dataset import ArrayDataset
from edgepack.core.errors import DataError, FinetuneError
from tests import models

NAMES = ["image"]


@pytest.fixture(scope="module")
def digits() -> tuple[ArrayDataset, ArrayDataset]:
    (x_train, y_train), (x_test, y_test) = digits_split("train"), digits_split("test")
    return ArrayDataset({"image": x_train}, y_train), ArrayDataset({"image": x_test}, y_test)


@pytest.fixture(scope="module")
def teacher(trained_weights) -> nn.Module:
    model = models.mlp()
    model.load_state_dict(torch.load(trained_weights("mlp")))
    return model.eval()


def damaged(teacher: nn.Module, rank: int = 5) -> nn.Module:
    """The teacher with both Linear layers cut to rank 5: 2410 -> 732 parameters, accuracy falls by ~30 points."""
    student = copy.deepcopy(teacher)
    assert len(factorise(student, rank=rank).factorised) == 2
    return student.eval()


def test_distillation_recovers_a_low_rank_student_on_held_out_digits(teacher, digits):
    train, test = digits
    teacher_accuracy = accuracy(teacher, test, NAMES)
    student = damaged(teacher)
    before = accuracy(student, test, NAMES)
    steps: list[int] = []
    report = finetune(student, train, FinetuneConfig(), teacher=teacher, input_names=NAMES, on_step=steps.append)
    after = accuracy(student, test, NAMES)
    # Measured on this machine: teacher 0.961, rank-5 student 0.667, after 10 epochs of distillation 0.947-0.953
    # (the last digit moves with the thread count of the float reductions).
    assert teacher_accuracy > 0.94 and before < teacher_accuracy - 0.2
    assert after >= 0.93 and after >= teacher_accuracy - 0.03
    assert not student.training and report.distilled
    assert report.steps == 10 * 23 and steps == list(range(231))  # 1437 samples in batches of 64; step 0 first
    assert len(report.epoch_losses) == 10 and report.epoch_losses[-1] < 0.5 * report.epoch_losses[0]
    assert report.train_accuracy == pytest.approx(accuracy(student, train, NAMES)) and report.train_accuracy > 0.95


def test_distillation_loss_matches_a_hand_computation():
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.5, -1.0]])
    teacher = torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([2, 0])
    T, alpha = 2.0, 0.7

    def log_softmax(z):
        z = np.asarray(z, dtype=np.float64)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    log_p_teacher, log_p_student = log_softmax(teacher / T), log_softmax(student / T)
    kl = (np.exp(log_p_teacher) * (log_p_teacher - log_p_student)).sum(axis=1).mean()  # KL(teacher || student)
    ce = -log_softmax(student)[[0, 1], [2, 0]].mean()
    got = distillation_loss(student, teacher, labels, temperature=T, alpha=alpha)
    assert got.item() == pytest.approx(alpha * T**2 * kl + (1 - alpha) * ce, rel=1e-6)
    assert kl > 0.1 and ce > 0.1  # both terms matter in this case
    assert distillation_loss(student, teacher, labels, temperature=T, alpha=0.0).item() == pytest.approx(ce, rel=1e-6)
    assert distillation_loss(teacher, teacher, labels, temperature=T, alpha=1.0).item() == pytest.approx(0, abs=1e-6)


def test_on_step_runs_at_zero_then_after_every_step_and_can_hold_a_mask(teacher, digits):
    train, _ = digits
    subset = train.take(np.arange(97))  # batches 32, 32, 32 and a single sample that batch norm cannot use: dropped
    student = copy.deepcopy(teacher)
    mask = (torch.rand(student[1].weight.shape, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    seen: list[int] = []

    def keep_mask(step: int) -> None:  # what a pruner does: re-zero the pruned weights after each step
        seen.append(step)
        with torch.no_grad():
            student[1].weight.mul_(mask)

    config = FinetuneConfig(epochs=2, batch_size=32, alpha=0.0, optimizer="sgd")
    report = finetune(student, subset, config, input_names=NAMES, on_step=keep_mask)
    assert seen == [0, 1, 2, 3, 4, 5, 6] and report.steps == 6 and not report.distilled
    assert torch.equal(student[1].weight == 0, mask == 0)
    assert not torch.equal(student[1].weight, teacher[1].weight * mask)  # it did train


def test_same_seed_gives_identical_weights_and_another_seed_does_not(teacher, digits):
    subset = digits[0].take(np.arange(300))
    runs = {}
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        student = damaged(teacher)
        report = finetune(student, subset, FinetuneConfig(epochs=2, seed=seed), teacher=teacher, input_names=NAMES)
        runs[name] = (torch.cat([p.detach().flatten() for p in student.parameters()]), report)
    assert torch.equal(runs["a"][0], runs["b"][0]) and runs["a"][1] == runs["b"][1]
    assert not torch.allclose(runs["a"][0], runs["c"][0])


def hidden_mse(student: nn.Module, teacher: nn.Module, data: ArrayDataset) -> float:
    x = torch.from_numpy(data.inputs["image"])
    with torch.no_grad():
        return float(nn.functional.mse_loss(student[:3](x), teacher[:3](x)))


def test_feature_matching_pulls_the_hidden_layer_towards_the_teacher(teacher, digits):
    train, test = digits
    subset = train.take(np.arange(400))
    plain, matched = damaged(teacher), damaged(teacher)
    start = hidden_mse(plain, teacher, test)
    finetune(plain, subset, FinetuneConfig(epochs=3, alpha=0.0), teacher=teacher, input_names=NAMES)
    config = FinetuneConfig(epochs=3, alpha=0.0, feature_matching=[("2", "2")], feature_weight=5.0)
    finetune(matched, subset, config, teacher=teacher, input_names=NAMES)
    # Labels alone leave the hidden layer free; matching ties it to the teacher's on held-out digits. The rank-5
    # bottleneck limits how close it can get: measured 1.63 at the start, 1.59 on labels alone, 1.21 matched.
    assert hidden_mse(matched, teacher, test) < 0.85 * min(start, hidden_mse(plain, teacher, test))


def test_feature_matching_rejects_shapes_that_differ_and_unknown_layers(teacher, digits):
    subset = digits[0].take(np.arange(64))
    mismatch = FinetuneConfig(epochs=1, feature_matching=[("1.0", "1")])  # rank-5 factor (B, 5) vs teacher (B, 32)
    with pytest.raises(FinetuneError, match=r"student layer '1.0' \(output shape \[64, 5\]\).*teacher layer '1' "):
        finetune(damaged(teacher), subset, mismatch, teacher=teacher, input_names=NAMES)
    unknown = FinetuneConfig(epochs=1, feature_matching=[("1.0", "11")])
    with pytest.raises(FinetuneError, match="teacher layer '11', which does not exist .did you mean 1"):
        finetune(damaged(teacher), subset, unknown, teacher=teacher, input_names=NAMES)


def test_bad_data_and_settings_are_rejected(teacher, digits):
    unlabelled = ArrayDataset({"image": digits[0].inputs["image"][:10]})
    with pytest.raises(DataError, match="has no labels: add an int64 'labels' array"):
        finetune(copy.deepcopy(teacher), unlabelled, FinetuneConfig(alpha=0.0), input_names=NAMES)
    with pytest.raises(DataError, match=r"no array for input\(s\) \['pixels'\]"):
        finetune(copy.deepcopy(teacher), digits[1], FinetuneConfig(alpha=0.0), input_names=["pixels"])
    with pytest.raises(FinetuneError, match="none was given: pass teacher="):
        finetune(copy.deepcopy(teacher), digits[1], FinetuneConfig(alpha=0.5), input_names=NAMES)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        FinetuneConfig(temprature=2.0)
    assert FinetuneConfig.model_validate(FinetuneConfig().model_dump()) == FinetuneConfig()
