"""Robustness: the perturbations are what they claim (SNR, shift, contrast), and on the digits model every artifact's
top-1 is measured in its own runtime and falls monotonically as the noise grows."""

from __future__ import annotations

import numpy as np
import pytest
from edgepack.calibration.sources import digits_split

from edgepack.core.dataset import ArrayDataset
from edgepack.recipe import parse_recipe
from edgepack.running.pipeline import pack
from edgepack.running.robustness import RobustnessConfig, perturbed_datasets
from tests.edgepack.helpers import image_recipe

RUNTIMES = {"torch-fp32": "torch ", "onnx-fp32": "onnxruntime ", "tflite-fp32": "ai_edge_litert "}


@pytest.fixture(scope="module")
def digits() -> ArrayDataset:
    images, labels = digits_split("test")
    return ArrayDataset({"image": images}, labels)


def by_label(config: RobustnessConfig, dataset: ArrayDataset) -> dict[str, np.ndarray]:
    return {condition["label"]: data.inputs["image"] for condition, data in perturbed_datasets(config, dataset, 0)}


def test_noise_has_the_requested_snr_and_one_pattern_scaled_per_level(digits):
    clean = digits.inputs["image"].astype(np.float64)
    perturbed = by_label(RobustnessConfig(snr_db=[30, 10], brightness=None, contrast=None), digits)
    assert list(perturbed) == ["noise 30 dB", "noise 10 dB"]
    noise = {label: array - clean for label, array in perturbed.items()}
    for label, snr in (("noise 30 dB", 30), ("noise 10 dB", 10)):
        measured = 10 * np.log10(np.mean(clean**2) / np.mean(noise[label] ** 2))
        assert measured == pytest.approx(snr, abs=0.3)
    # The same seeded pattern at both levels: 20 dB apart is a factor 10 in amplitude.
    assert np.allclose(noise["noise 10 dB"], 10 ** (20 / 20) * noise["noise 30 dB"], atol=1e-5)


def test_brightness_and_contrast_stay_in_the_input_range(digits):
    clean = digits.inputs["image"]
    perturbed = by_label(RobustnessConfig(snr_db=[], brightness=0.1, contrast=0.5), digits)
    brighter, flatter = perturbed["brightness +0.1"], perturbed["contrast x0.5"]
    assert brighter.min() >= clean.min() and brighter.max() <= clean.max()
    assert np.allclose(brighter, np.minimum(clean + 0.1, 1.0), atol=1e-6)
    assert flatter.std(axis=(1, 2, 3)).mean() == pytest.approx(0.5 * clean.std(axis=(1, 2, 3)).mean(), rel=0.02)
    assert perturbed_datasets(RobustnessConfig(snr_db=[]), digits, 0)[0][1].labels is digits.labels


def test_every_artifact_is_measured_in_its_runtime_and_falls_with_the_noise(digits_run):
    for artifact in digits_run.artifacts:
        record = artifact["robustness"]
        assert record["runtime"].startswith(RUNTIMES[artifact["name"]]) and record["samples"] == 360
        assert record["clean_top1"] == artifact["accuracy"]["top1"]
        top1 = {c["label"]: c["top1"] for c in record["conditions"]}
        assert list(top1) == ["noise 30 dB", "noise 20 dB", "noise 10 dB", "brightness +0.1", "contrast x0.8"]
        ladder = [record["clean_top1"], top1["noise 30 dB"], top1["noise 20 dB"], top1["noise 10 dB"]]
        # Mild noise can flip a digit or two either way; a real rise would be more than two samples of 360.
        assert all(b <= a + 2 / 360 for a, b in zip(ladder[:-1], ladder[1:], strict=True)), (artifact["name"], ladder)
        assert ladder[0] - ladder[-1] > 0.05  # 10 dB of noise really hurts a digits classifier
    figures = [[c["top1"] for c in a["robustness"]["conditions"]] for a in digits_run.artifacts]
    assert np.allclose(figures[1], figures[0], atol=2 / 360) and np.allclose(figures[2], figures[0], atol=2 / 360)


def test_robustness_null_turns_it_off_and_a_second_run_takes_it_from_the_cache(tmp_path, trained_weights):
    recipe = image_recipe("mlp", trained_weights("mlp"), robustness={"snr_db": [20], "contrast": None}, bench=None)
    first = pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True)
    assert [c["label"] for c in first.artifacts[1]["robustness"]["conditions"]] == ["noise 20 dB", "brightness +0.1"]
    again = pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True)
    steps = {s["name"]: s["cached"] for s in again.results["steps"]}
    assert steps["robustness tflite-fp32"] and again.artifacts[2]["robustness"] == first.artifacts[2]["robustness"]
    off = pack(parse_recipe(recipe | {"robustness": None}), out=tmp_path / "off", quiet=True)
    assert all("robustness" not in a for a in off.artifacts)
    assert not any(s["name"].startswith("robustness") for s in off.results["steps"])


def test_an_onnx_file_is_perturbed_many_samples_a_call_with_the_figures_of_one_sample_a_call(digits_run, digits):
    """The robustness passes run the ONNX file through calibration's batched reader: this file (exported with its
    batch fixed at 1) takes the batched path, and every figure is what one sample a call gives."""
    import onnx
    from edgepack.calibration.collect import read_tensors
    from edgepack.converters.runtime import open_session
    from edgepack.converters.verify import predict

    from edgepack.running.batched import reshapes_keep_batch
    from edgepack.running.measure import top1

    onnx_fp32 = next(a for a in digits_run.artifacts if a["name"] == "onnx-fp32")
    path = digits_run.run_dir / onnx_fp32["path"]
    model = reshapes_keep_batch(onnx.load(path))
    calls = [batch.rows for batch in read_tensors(model, [model.graph.output[0].name], digits)]
    assert calls[0] == 3 and max(calls) > 1 and len(calls) < len(digits) / 8  # the probe, then many a call
    session, config = open_session(path), RobustnessConfig()
    one_a_call = {c["label"]: top1(predict(session, data, 1), digits.labels)
                  for c, data in perturbed_datasets(config, digits, 0)}  # fmt: skip
    record = onnx_fp32["robustness"]
    assert {c["label"]: c["top1"] for c in record["conditions"]} == one_a_call
    assert record["clean_top1"] == top1(predict(session, digits, 1), digits.labels)
