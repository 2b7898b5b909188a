"""The ssh target against a real OpenSSH server on 127.0.0.1 (keys, known_hosts and port made by the test).

The "device" is this machine reached through sshd: a real handshake, host-key check, public-key login, remote
shell, file copy and clean-up. The device's Python is this venv's (``remote_python``), so the runtimes are the
same as the host's; what differs from a Raspberry Pi is the CPU, not the protocol.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from edgepack.device_bench import BenchOptions, bench, run_on_target

import edgepack
from edgepack.core.errors import BenchError
from edgepack.recipe import parse_recipe
from tests.device_bench.helpers import REPO, conv_relu_recipe, cpu_seconds, edgepack_cli, processes_mentioning
from tests.device_bench.sshd import SSHD, free_port, make_key, start_sshd

pytestmark = pytest.mark.skipif(
    not SSHD.is_file(), reason="no OpenSSH server at /usr/sbin/sshd (.ci/run installs openssh-server)"
)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def options_for(server, **changes) -> BenchOptions:
    fields = {"runs": 10, "warmup": 1, "min_seconds": 0.05, "remote_python": sys.executable}
    fields |= {"ssh_identity_file": server.identity, "ssh_known_hosts": server.known_hosts}
    return BenchOptions(**fields | changes)


def bench_folders() -> set[str]:
    """The temporary folders the ssh target makes on the "device" (here the same machine's /tmp)."""
    return set(glob.glob("/tmp/edgepack-bench.*"))


def test_a_record_comes_back_like_the_hosts_and_the_folder_is_removed(sshd, tflite_model):
    before = bench_folders()
    record = bench(tflite_model, sshd.target, options_for(sshd))
    assert record["target"] == sshd.target and record["model"] == str(tflite_model)
    assert record["runtime"] == "ai_edge_litert" and record["runs"] >= 10 and record["threads"] == 1
    assert record["model_bytes"] == tflite_model.stat().st_size
    assert record["energy"]["proxy"]["macs"] == {"fp32": 4 * 8 * 8 * 3 * 3 * 3}
    host = bench(tflite_model, "host", options_for(sshd))
    assert set(host) - {"device_model"} <= set(record)  # the same figures as the host gives
    folder = Path(record["device_model"]).parent
    assert folder.name.startswith("edgepack-bench.") and not folder.exists()
    assert bench_folders() == before


def test_samples_travel_over_ssh_and_their_outputs_come_back_byte_for_byte(sshd, onnx_model):
    before = bench_folders()
    samples = {"x": np.random.default_rng(3).standard_normal((4, 1, 3, 8, 8)).astype(np.float32)}
    run = run_on_target(onnx_model, sshd.target, samples, options_for(sshd, runs=1, min_seconds=0))
    on_host = run_on_target(onnx_model, "host", samples, options_for(sshd, runs=1, min_seconds=0))
    assert np.array_equal(run.outputs["y"], on_host.outputs["y"]) and run.record["verification"]["samples"] == 4
    assert bench_folders() == before  # the samples and outputs went with the folder


def test_an_input_value_file_travels_with_the_model_and_is_fed_there(sshd, onnx_model, tmp_path):
    """--input NAME=FILE.npy on a device: the file is copied into the benchmark's folder (and removed with it), and
    the runner there feeds it; a value of the wrong shape fails in the device's runtime, which proves it was fed."""
    before = bench_folders()
    np.save(tmp_path / "x.npy", np.ones((1, 3, 8, 8), np.float32))
    record = bench(onnx_model, sshd.target, options_for(sshd, input_values={"x": tmp_path / "x.npy"}))
    assert record["inputs"] == [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    np.save(tmp_path / "wrong.npy", np.ones((1, 3, 8, 5), np.float32))
    with pytest.raises(BenchError, match=r"on target 'ssh://.*(8, 5|8,5|5\b|dimensions)"):
        bench(onnx_model, sshd.target, options_for(sshd, input_values={"x": tmp_path / "wrong.npy"}))
    assert bench_folders() == before


def test_an_unknown_host_key_is_refused_with_the_command_that_accepts_it(sshd, tflite_model, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(BenchError) as caught:
        bench(tflite_model, sshd.target, options_for(sshd, ssh_known_hosts=empty))
    message = str(caught.value)
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in message and "SHA256:" in message
    assert empty.read_text() == ""  # never accepted on the user's behalf


def test_a_changed_host_key_is_refused(sshd, tflite_model, tmp_path):
    impostor = make_key(tmp_path / "impostor")
    key_type, key = impostor.with_suffix(".pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {key}\n")
    with pytest.raises(BenchError, match="differs from the one in .*man-in-the-middle.*ssh-keygen -R"):
        bench(tflite_model, sshd.target, options_for(sshd, ssh_known_hosts=known_hosts))


def test_a_key_the_server_does_not_know_fails_login_clearly(sshd, tflite_model):
    with pytest.raises(BenchError) as caught:
        bench(tflite_model, sshd.target, options_for(sshd, ssh_identity_file=sshd.stranger))
    message = str(caught.value)
    assert f"login as '{sshd.user}'" in message and str(sshd.stranger) in message and "authorized_keys" in message


def test_a_port_without_sshd_is_unreachable(sshd, tflite_model):
    target = f"ssh://{sshd.user}@127.0.0.1:{free_port()}"
    with pytest.raises(BenchError, match="cannot reach 127.0.0.1"):
        bench(tflite_model, target, options_for(sshd))


@pytest.mark.parametrize(
    ("model_fixture", "packages"), [("tflite_model", "ai-edge-litert"), ("onnx_model", "onnxruntime")]
)
def test_a_device_without_python_says_what_to_install(request, sshd, model_fixture, packages):
    before = bench_folders()
    with pytest.raises(BenchError) as caught:
        bench(request.getfixturevalue(model_fixture), sshd.target, options_for(sshd, remote_python="/nowhere/python3"))
    message = str(caught.value)
    assert "'/nowhere/python3'" in message and f"pip install numpy {packages}" in message
    assert bench_folders() == before


def test_a_benchmark_past_its_timeout_is_stopped_and_cleaned_up(sshd, tflite_model):
    before = bench_folders()
    with pytest.raises(BenchError, match="timeout_seconds=2"):
        bench(tflite_model, sshd.target, options_for(sshd, min_seconds=600, timeout_seconds=2))
    assert bench_folders() == before
    assert processes_mentioning("/tmp/edgepack-bench.") == []  # the runner was killed, not left running


def test_a_recipe_benchmarks_every_artifact_on_the_host_and_over_ssh(sshd, onnx_model, tmp_path):
    bench_options = options_for(sshd, threads=1).model_dump(mode="json", exclude_defaults=True)
    recipe = conv_relu_recipe(onnx_model, targets=["host", sshd.target], bench=bench_options)
    result = edgepack.pack(parse_recipe(recipe), out=tmp_path / "run", quiet=True)
    for artifact in result.artifacts:
        assert [record["target"] for record in artifact["bench"]] == ["host", sshd.target]
        assert {record["runtime"] for record in artifact["bench"]} == {artifact["bench"][0]["runtime"]}
        assert artifact["bench"][1]["verification_on_target"]["passed"]  # random inputs: no data, no classes
    report = (tmp_path / "run" / "report.md").read_text()
    latency, on_targets = report.split("## Latency")[1], report.split("## Verification on the targets")[1]
    assert latency.count(f"| {sshd.target} |") == 2 and on_targets.count(f"| {sshd.target} |") >= 2


def test_the_command_line_reaches_the_ssh_target(sshd, tflite_model):
    flags = ["--identity-file", str(sshd.identity), "--known-hosts", str(sshd.known_hosts)]
    flags += ["--remote-python", sys.executable, "--runs", "3", "--min-seconds", "0", "--json"]
    done = edgepack_cli("bench", str(tflite_model), "--target", sshd.target, *flags)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["target"] == sshd.target


def test_ctrl_c_during_an_ssh_bench_stops_the_runner_on_the_device_and_removes_its_folder(sshd, onnx_model):
    # Our runner on the "device" is the process other than edgepack with this test's run count in its argv (runs that
    # would take minutes if left alone): python FOLDER/runner.py FOLDER/model.onnx --runs RUNS ...
    runs = str(900_000_000 + os.getpid())
    flags = ["--identity-file", str(sshd.identity), "--known-hosts", str(sshd.known_hosts)]
    flags += ["--remote-python", sys.executable, "--runs", runs, "--min-seconds", "0"]
    command = [sys.executable, "-m", "edgepack.cli", "bench", str(onnx_model), "--target", sshd.target, *flags]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    while not (runners := [pid for pid in processes_mentioning(f"\x00{runs}\x00") if pid != process.pid]):
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.1)
    argv = Path(f"/proc/{runners[0]}/cmdline").read_bytes().decode().split("\0")
    folder = Path(next(word for word in argv if word.endswith("/runner.py"))).parent
    while cpu_seconds(runners[0]) < 2:  # past its imports and the model's loading (the folder may go after that)
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the user's terminal: edgepack's process group, not the device
    stdout, stderr = process.communicate(timeout=120)
    assert (process.returncode, stderr) == (130, "interrupted during bench; re-run to resume\n")
    assert folder.name.startswith("edgepack-bench.") and not folder.exists()
    assert processes_mentioning(str(folder)) == []  # neither the runner nor the shell waiting for it
