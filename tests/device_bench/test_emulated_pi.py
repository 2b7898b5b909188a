"""The emulated_pi tier: the digits artifacts on an emulated Raspberry Pi (Debian bookworm arm64 under qemu-user,
scripts/emulated-pi) over ssh, against the host's run of the same files.

Proves the aarch64 builds of LiteRT and onnxruntime load and run edgepack's files and compute what the host
computes, the ssh protocol end to end with a device that is not this machine's Python, and that verification on
the target notices a file that differs from the one verified on the host. Timings under emulation mean nothing
and are never asserted. Deselected by default; run with `./dev.sh test -m emulated_pi` (root; .ci/run runs it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from edgepack.calibration.sources import digits_split
from edgepack.converters.output_steps import output_steps
from edgepack.converters.runtime import open_session
from edgepack.converters.verify import runtime_samples
from edgepack.device_bench import BenchOptions, run_on_target

import edgepack
from edgepack.core.dataset import ArrayDataset
from edgepack.recipe import parse_recipe
from edgepack.target_verify import agreement
from tests.device_bench import emulated_pi
from tests.device_bench.helpers import edgepack_cli
from tests.edgepack.helpers import image_recipe

pytestmark = [
    pytest.mark.emulated_pi,
    pytest.mark.skipif(os.geteuid() != 0, reason="scripts/emulated-pi needs root (mmdebstrap, binfmt_misc, chroot)"),
]
SAMPLES = 64
ARTIFACTS = ("onnx-fp32", "tflite-fp32", "onnx-int8", "tflite-int8")
OUTPUTS_ONLY = {"runs": 1, "warmup": 0, "min_seconds": 0.0}
# Float files: onnxruntime's aarch64 kernels sum in another order than its x86 ones (measured 2.9e-6 on logits
# ranging over ~30); a 1e-5 share of the output's range (a tenth of a pack's float_tolerance) allows that, and
# nothing near what one wrong weight does (> 0.1).
FLOAT_RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def pi():
    instance = emulated_pi.start()
    yield instance
    if not instance.info["already_running"]:  # someone else's instance stays up
        emulated_pi.stop()


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory, trained_weights) -> dict[str, Path]:
    """The digits CNN packed in fp32 and int8, ONNX and TFLite (one calibration), verified on the host."""
    stages = [{"stage": "export"}, {"stage": "convert", "to": ["tflite"]}, {"stage": "quantize"}]
    recipe = image_recipe("conv_net", trained_weights("conv_net"), stages=stages, bench=None, robustness=None)
    result = edgepack.pack(parse_recipe(recipe), out=tmp_path_factory.mktemp("digits") / "run", quiet=True)
    return {a["name"]: result.run_dir / a["path"] for a in result.artifacts if a["name"] in ARTIFACTS}


@pytest.fixture(scope="module")
def held_out() -> ArrayDataset:
    images, labels = digits_split("test")
    return ArrayDataset({"image": images[:SAMPLES]}, labels[:SAMPLES])


def run_both(path: Path, pi, dataset: ArrayDataset, pi_path: Path | None = None) -> dict:
    """The samples through ``path`` on the host and through ``pi_path`` (default the same file) on the Pi."""
    session = open_session(path)
    samples, counts = runtime_samples(session, dataset, batch_size=1)
    on_host = run_on_target(path, "host", samples, BenchOptions(**OUTPUTS_ONLY))
    on_pi = run_on_target(pi_path or path, pi.target, samples, pi.options())
    return {"host": on_host, "pi": on_pi, "figures": agreement(session, on_pi, on_host, counts, output_steps(path))}


@pytest.fixture(scope="module")
def runs(pi, digits_files, held_out) -> dict[str, dict]:
    return {name: run_both(path, pi, held_out) for name, path in digits_files.items()}


def test_start_is_idempotent_and_status_names_the_same_target(pi):
    again = emulated_pi.start()
    assert again.info["already_running"] and again.target == pi.target
    status = json.loads(emulated_pi.run_script("status", "--json").stdout)
    assert status["running"] and status["target"] == pi.target and status["device"].startswith("aarch64, Debian")


@pytest.mark.parametrize("name", ARTIFACTS)
def test_the_record_gives_the_pis_facts_and_the_folder_is_gone(pi, runs, name):
    host, on_pi = runs[name]["host"].record, runs[name]["pi"].record
    assert on_pi["machine"] == "aarch64" and on_pi["os"] == "Debian GNU/Linux 12 (bookworm)"
    assert on_pi["python"].startswith("3.11.") and on_pi["cpu"].startswith("ARMv8")
    assert all(tag.endswith("_aarch64") for tag in on_pi["runtime_build"]["wheel_tags"])
    assert all(tag.endswith("_x86_64") for tag in host["runtime_build"]["wheel_tags"])
    assert (on_pi["runtime"], on_pi["runtime_version"]) == (host["runtime"], host["runtime_version"])
    assert on_pi["verification"]["samples"] == SAMPLES and on_pi["runs"] >= 5
    remote_folder = Path(on_pi["device_model"]).parent
    assert remote_folder.name.startswith("edgepack-bench.") and pi.host_path("/tmp").is_dir()
    assert not pi.host_path(str(remote_folder)).exists()
    assert list(pi.host_path("/tmp").glob("edgepack-bench.*")) == []


@pytest.mark.parametrize("name", ["tflite-int8", "onnx-int8"])
def test_integer_outputs_on_the_pi_are_within_one_step_of_the_host(runs, name):
    (figures,) = runs[name]["figures"]["outputs"]
    assert figures["output_step"] > 0 and figures["max_steps"] <= 1 and figures["within_one_step"] == 1.0, figures


@pytest.mark.parametrize("name", ["tflite-fp32", "onnx-fp32"])
def test_float_outputs_on_the_pi_match_the_host(runs, name):
    (figures,) = runs[name]["figures"]["outputs"]
    outputs = runs[name]["host"].outputs["logits"]
    allowed = FLOAT_RELATIVE_TOLERANCE * float(outputs.max() - outputs.min())
    assert figures["max_abs_error"] <= allowed and figures["cosine_similarity"] > 0.999999, figures
    assert figures["output_step"] is None


def test_tflite_outputs_on_the_pi_are_bit_identical(runs):
    for name in ("tflite-fp32", "tflite-int8"):
        assert np.array_equal(runs[name]["pi"].outputs["logits"], runs[name]["host"].outputs["logits"]), name


@pytest.mark.parametrize("name", ["tflite-int8", "onnx-fp32"])
def test_a_file_with_one_weight_changed_after_the_host_run_shows_on_the_pi(pi, digits_files, held_out, tmp_path, name):
    source = digits_files[name]
    spoiled = emulated_pi.edit_one_weight(source, tmp_path / f"spoiled{source.suffix}")
    (figures,) = run_both(source, pi, held_out, pi_path=spoiled)["figures"]["outputs"]
    assert figures["max_abs_error"] > 0.1 and figures["cosine_similarity"] < 0.9999, figures
    if figures["output_step"] is not None:
        assert figures["max_steps"] > 1 and figures["within_one_step"] < 1.0, figures


def test_the_command_line_verifies_on_the_pi(pi, digits_files, held_out, tmp_path):
    data = tmp_path / "held_out.npz"
    np.savez(data, image=held_out.inputs["image"])
    flags = ["--identity-file", pi.info["identity_file"], "--known-hosts", pi.info["known_hosts"]]
    flags += ["--remote-python", pi.info["remote_python"], "--runs", "3", "--min-seconds", "0", "--json"]
    done = edgepack_cli("bench", str(digits_files["tflite-int8"]), "--target", pi.target, "--verify", str(data), *flags)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["machine"] == "aarch64" and record["verification"]["samples"] == SAMPLES
    assert record["verification"]["host"]["machine"] == "x86_64"
    (figures,) = record["verification"]["outputs"]
    assert figures["max_steps"] == 0 and figures["cosine_similarity"] == 1.0


@pytest.fixture(scope="module")
def packed_on_pi(pi, trained_weights, tmp_path_factory) -> dict[str, dict]:
    """`edgepack pack` of the digits recipe with targets [host, the Pi]: every file verified on the Pi too."""
    stages = [{"stage": "export"}, {"stage": "convert", "to": ["tflite"]}, {"stage": "quantize"}]
    bench = pi.options(runs=2, warmup=0).model_dump(mode="json", exclude_defaults=True)
    recipe = image_recipe("conv_net", trained_weights("conv_net"), stages=stages, bench=bench, robustness=None,
                          targets=["host", pi.target])  # fmt: skip
    result = edgepack.pack(parse_recipe(recipe), out=tmp_path_factory.mktemp("digits_pack") / "run", quiet=True)
    return {a["name"]: a for a in result.artifacts if a["name"] in ARTIFACTS} | {"run_dir": result.run_dir}


@pytest.mark.parametrize("name", ARTIFACTS)
def test_a_pack_verifies_each_file_on_the_pi(pi, packed_on_pi, name):
    host, on_pi = packed_on_pi[name]["bench"]
    assert (host["target"], on_pi["target"], on_pi["machine"]) == ("host", pi.target, "aarch64")
    checked = on_pi["verification_on_target"]
    (output,) = checked["outputs"]
    (apart,) = checked["host_run"]["outputs"]
    print(f"{name} on the Pi: max abs error {output['max_abs_error']:.3g}, cosine {output['cosine_similarity']:.6f},"
          f" top-1 agreement {checked['top1_agreement']}, vs host {apart['max_abs_error']:.3g} / {apart['max_steps']}"
          " steps")  # fmt: skip
    assert checked["passed"] and output["passed"] and checked["host_run"]["host"]["machine"] == "x86_64"
    if name.endswith("int8"):
        assert apart["output_step"] > 0 and apart["max_steps"] <= 1 and apart["within_one_step"] == 1.0, apart
    else:
        assert output["max_abs_error"] <= output["tolerance"] and apart["output_step"] is None
    assert list(pi.host_path("/tmp").glob("edgepack-bench.*")) == []


def test_the_pack_report_shows_the_pi(pi, packed_on_pi):
    report = (packed_on_pi["run_dir"] / "report.md").read_text()
    section = report.split("## Verification on the targets")[1].split("\n## ")[0]
    assert sum(f"| {pi.target} |" in line for line in section.splitlines()) == len(ARTIFACTS)
