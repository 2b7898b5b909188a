"""Verification on a remote target in a pack: the digits CNN in fp32 and int8, ONNX and TFLite, benched on the host
and over ssh (tests/device_bench/sshd.py: the "device" runs this venv's runtimes, which proves the plumbing; the
emulated_pi tier proves it on aarch64). Each ssh record carries ``verification_on_target``; a file that differs on
the device from the one verified here fails the run with the measured figure and the target named."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from edgepack.device_bench import run_on_target

import edgepack
from edgepack.core.errors import VerificationError
from edgepack.core.results_format import read_results
from edgepack.recipe import parse_recipe
from edgepack.running import on_target
from tests.device_bench.emulated_pi import edit_one_weight
from tests.device_bench.sshd import SSHD, start_sshd
from tests.edgepack.helpers import FAST_BENCH, image_recipe

pytestmark = pytest.mark.skipif(
    not SSHD.is_file(), reason="no OpenSSH server at /usr/sbin/sshd (.ci/run installs openssh-server)"
)
ARTIFACTS = ("onnx-fp32", "tflite-fp32", "onnx-int8", "tflite-int8")
STAGES = [{"stage": "export"}, {"stage": "convert", "to": ["tflite"]}, {"stage": "quantize"}]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def digits_recipe(sshd, weights: Path, **verify) -> dict:
    remote = {"remote_python": sys.executable, "ssh_identity_file": str(sshd.identity),
              "ssh_known_hosts": str(sshd.known_hosts)}  # fmt: skip
    return image_recipe("conv_net", weights, stages=STAGES, robustness=None, bench=FAST_BENCH | remote,
                        targets=["host", sshd.target], verify={"samples": 24} | verify)  # fmt: skip


@pytest.fixture(scope="module")
def packed(sshd, trained_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("on_target") / "run"
    result = edgepack.pack(parse_recipe(digits_recipe(sshd, trained_weights("conv_net"))), out=out, quiet=True)
    return {a["name"]: a for a in result.artifacts}, result


def records(artifact: dict) -> tuple[dict, dict]:
    host, remote = artifact["bench"]
    assert host["target"] == "host" and remote["target"].startswith("ssh://")
    return host, remote


@pytest.mark.parametrize("name", ARTIFACTS)
def test_each_ssh_record_is_verified_against_the_reference_and_the_host_run(packed, name):
    host, remote = records(packed[0][name])
    assert "verification_on_target" not in host
    checked = remote["verification_on_target"]
    assert checked["passed"] and checked["samples"] == 24 and checked["runtime"] == remote["runtime"]
    (output,) = checked["outputs"]
    assert output["output"] == "logits" and output["cosine_similarity"] > 0.99
    assert checked["top1_agreement"] >= 0.9
    (apart,) = checked["host_run"]["outputs"]
    assert apart["max_abs_error"] == 0.0  # the same runtimes on both ends
    if name.endswith("int8"):
        assert output["min_cosine"] == 0.99 and apart["output_step"] > 0 and apart["max_steps"] == 0
    else:
        assert output["tolerance"] > 0 and output["max_abs_error"] <= output["tolerance"]
        assert apart["output_step"] is None


def test_the_report_shows_verification_on_each_target(packed):
    _, result = packed
    report = (result.run_dir / "report.md").read_text()
    section = report.split("## Verification on the targets")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "ssh://" in line]
    assert len(rows) == len(ARTIFACTS)
    assert "0 of" in rows[-1]  # int8: steps from the host run
    html = (result.run_dir / "report.html").read_text()
    assert "On the remote targets" in html and f"<td>{records(packed[0]['tflite-int8'])[1]['target']}</td>" in html


def fresh_benches(result, tmp_path: Path) -> Path:
    """A copy of the run whose stages are cached but whose benchmarks are not."""
    copy = tmp_path / "run"
    shutil.copytree(result.run_dir, copy)
    for entry in (copy / ".cache").glob("bench-*.json"):
        entry.unlink()
    return copy


def test_a_second_run_takes_the_verified_records_from_the_cache(packed, sshd, trained_weights, tmp_path, monkeypatch):
    artifacts, result = packed
    monkeypatch.setattr(on_target, "run_on_target", lambda *a, **k: pytest.fail("nothing runs on a cached record"))
    again = edgepack.pack(parse_recipe(digits_recipe(sshd, trained_weights("conv_net"))), out=result.run_dir,
                          quiet=True)  # fmt: skip
    assert again.results["all_cached"]
    assert [a["bench"] for a in again.artifacts if a["name"] in ARTIFACTS] == [artifacts[n]["bench"] for n in ARTIFACTS]


def test_other_samples_are_verified_again_on_the_target_only(packed, sshd, trained_weights, monkeypatch):
    _, result = packed
    calls = []
    monkeypatch.setattr(on_target, "run_on_target", lambda *a, **k: calls.append(a[1]) or run_on_target(*a, **k))
    recipe = digits_recipe(sshd, trained_weights("conv_net"), samples=16)
    edgepack.pack(parse_recipe(recipe), out=result.run_dir, quiet=True)
    results = read_results(result.run_dir)
    assert {a["bench"][1]["verification_on_target"]["samples"] for a in results["artifacts"] if a["bench"]} == {16}
    benches = [s for s in results["steps"] if "bench" in s["name"]]
    assert all(s["cached"] for s in benches if s["name"].endswith("host threads=1"))
    assert not any(s["cached"] for s in benches if "ssh://" in s["name"])
    assert sorted(set(calls)) == ["host", sshd.target]


def spoiling(file_name: str, folder: Path):
    """run_on_target that sends a copy of the file ``file_name`` with one weight changed to a remote target: a
    corrupted copy on the device, after the file was verified here."""

    def run(path, target, samples, options):
        if target != "host" and Path(path).name == file_name:
            path = edit_one_weight(Path(path), folder / Path(path).name)
        return run_on_target(path, target, samples, options)

    return run


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tflite-fp32", r"tflite-fp32: max abs error of output 'logits' vs the reference \d.* exceeds the tolerance"),
        (
            "tflite-int8",
            r"tflite-int8: output 'logits' steps from the host run of the same file \d+ exceeds the tolerance 1 .*"
            r"of values within one step",
        ),
    ],
)
def test_a_file_changed_on_the_device_fails_the_run(
    packed, sshd, trained_weights, tmp_path, monkeypatch, name, expected
):
    artifacts, result = packed
    run_dir = fresh_benches(result, tmp_path)
    (tmp_path / "spoiled").mkdir()
    spoil = spoiling(Path(artifacts[name]["path"]).name, tmp_path / "spoiled")
    monkeypatch.setattr(on_target, "run_on_target", spoil)
    recipe = parse_recipe(digits_recipe(sshd, trained_weights("conv_net")))
    with pytest.raises(VerificationError, match=expected) as caught:
        edgepack.pack(recipe, out=run_dir, quiet=True)
    assert f"on target {sshd.target}" in str(caught.value)
