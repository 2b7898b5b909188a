"""edgepack sweep --address on a real two-node Ray cluster on this machine (head and worker on 127.0.0.1, each with
one CPU, its own temp folder and its own resource): the variants spread over both nodes, their inputs shipped by
content and their run folders brought back, with the results of packing each alone. Both nodes are stopped at the
end by killing the process groups this test started (never `ray stop`, which stops every Ray of the user). And Ctrl-C
on a local sweep, in a process of its own.

Marker ray_cluster: deselected by default; `./dev.sh test -m ray_cluster` (and .ci/run, bounded) runs it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.edgepack.sweep_helpers import SCALES, hashes, packed_alone, sweep_inputs

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray_cluster

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
# A cluster on the loopback address that this test alone uses: no token to share between the nodes and the driver.
NO_TOKEN = {"RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(args: list[str], log: Path) -> subprocess.Popen:
    """`ray start --block` in a process group of its own: killing the group stops that node and nothing else."""
    # The workers import this checkout (edgepack and the tests' model factories), as the driver does.
    env = os.environ | {"PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"} | NO_TOKEN
    command = [str(RAY), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", *args]  # fmt: skip
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def _stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
            return


def _wait_for_nodes(address: str, count: int, nodes: list[subprocess.Popen], logs: list[Path]) -> None:
    ray.init(address=address, log_to_driver=False)
    try:
        deadline = time.monotonic() + 120
        while len([n for n in ray.nodes() if n["Alive"]]) < count:
            dead = [log.read_text()[-2000:] for node, log in zip(nodes, logs, strict=True) if node.poll() is not None]
            assert not dead and time.monotonic() < deadline, f"the Ray nodes did not start: {dead}"
            time.sleep(1)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The address of a head node and a worker node; both stopped at the end, whatever happened."""
    patch = pytest.MonkeyPatch()
    patch.setattr(os, "environ", os.environ | NO_TOKEN)
    temp = Path(tempfile.mkdtemp(prefix="epc-", dir="/tmp"))  # Ray's socket paths must stay under 107 characters
    logs = tmp_path_factory.mktemp("ray_logs")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = ["--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
            '--resources={"sweep_test_head": 1}']  # fmt: skip
    nodes = [_start_node(head, logs / "head")]
    try:
        _wait_for_nodes(address, 1, nodes, [logs / "head"])
        worker = [f"--address={address}", '--resources={"sweep_test_worker": 1}']
        nodes.append(_start_node(worker, logs / "worker"))
        _wait_for_nodes(address, 2, nodes, [logs / "head", logs / "worker"])
        yield address
    finally:
        for node in reversed(nodes):
            _stop(node)
        subprocess.run(["rm", "-rf", str(temp)], check=False)
        patch.undo()


def test_sweep_on_a_two_node_cluster_spreads_the_variants_and_gets_the_same_results(cluster, tmp_path,
                                                                                     trained_weights):  # fmt: skip
    recipe, grid = sweep_inputs(tmp_path, trained_weights("conv_net"))
    out = tmp_path / "out"
    env = os.environ | {"PYTHONPATH": str(REPO)} | NO_TOKEN
    command = [sys.executable, "-m", "edgepack.cli", "sweep", str(recipe), "--grid", grid, "--address", cluster,
               "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stderr  # the broken variant fails the command, after the others finished
    assert done.stdout.startswith("3 of 4 variants finished, 1 failed")
    summary = json.loads((out / "sweep.json").read_text())
    rows = summary["variants"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"] and "broken.pt" in rows[3]["error"]
    assert len({r["node_id"] for r in rows}) == 2  # both nodes ran variants
    assert all(r["node_ip"] for r in rows)  # the address Ray knows the node by
    for row, scale in zip(rows, SCALES, strict=False):  # shipped inputs, run folders brought back, same artifacts
        assert (out / row["run_dir"] / "results.json").is_file() and (out / row["run_dir"] / "report.html").is_file()
        alone = packed_alone(recipe, f"model.weights={tmp_path / f'w{scale}.pt'}", tmp_path / f"alone{scale}")
        assert hashes(row["artifacts"]) == alone


def test_ctrl_c_cancels_the_running_variants_and_records_what_finished(tmp_path, trained_weights):
    """SIGINT once the first variant has started: the running tasks are cancelled (ray.cancel), sweep.json says
    which variants were cancelled, one line says how to resume, and the local Ray is gone."""
    recipe, grid = sweep_inputs(tmp_path, trained_weights("conv_net"))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "edgepack.cli", "sweep", str(recipe), "--grid", grid, "--out", str(out)]
    env = os.environ | {"PYTHONPATH": str(REPO)} | NO_TOKEN
    sweep = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 300
    while not any((out / "variants").glob("*/.cache")) and time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(0.2)
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=300)
    # Every command ends a Ctrl-C alike (edgepack/running/interrupts.py): one line, exit 130.
    assert sweep.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted during sweep; re-run to resume", stderr
    rows = json.loads((out / "sweep.json").read_text())["variants"]
    assert len(rows) == 4 and "cancelled" in {r["status"] for r in rows}
