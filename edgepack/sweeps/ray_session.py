"""Ray, imported only here and in the task: the local instance or the cluster a sweep runs on."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgepack.core.errors import UserError
from edgepack.running.on_target import is_remote

INSTALL_HINT = "pip install 'edgepack[ray]'"


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise UserError(f"edgepack sweep runs its variants on Ray, which is not installed here; install it with "
                        f"{INSTALL_HINT} (or pip install 'ray>=2.40,<3')") from e  # fmt: skip
    return ray


def device_resource(target: str) -> str:
    """The Ray resource (capacity 1) that stands for one device: two variants never time on it at once."""
    return "edgepack_device_" + re.sub(r"[^A-Za-z0-9]", "_", target)


def device_resources(targets: list[str]) -> dict[str, float]:
    return {device_resource(t): 1.0 for t in targets if is_remote(t)}


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None, devices: dict[str, float]) -> Iterator[object]:
    """Without an address: a local Ray instance with ``num_cpus`` (default: this machine's) and one resource per
    device the recipes name. With one (auto, HOST:PORT, ray://HOST:PORT): the user's cluster, which must declare
    those device resources on the nodes that reach the devices."""
    ray = import_ray()
    temp = None
    try:
        if address is None:
            # Ray's socket paths must stay under 107 characters: a short folder of its own in /tmp.
            temp = Path(tempfile.mkdtemp(prefix="epray-", dir="/tmp"))
            ray.init(num_cpus=num_cpus or os.cpu_count(), resources=devices or None, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING, _temp_dir=str(temp),
                     object_store_memory=256 * 1024 * 1024)  # fmt: skip
        else:
            _join(ray, address)
            _check_devices(ray, address, devices)
        yield ray
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _join(ray, address: str) -> None:
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError(f"--address {address}: cannot join a Ray cluster there ({str(e).splitlines()[0]}); give "
                        "auto, HOST:PORT of a running head node, or ray://HOST:PORT (Ray Client)") from e  # fmt: skip


def _check_devices(ray, address: str, devices: dict[str, float]) -> None:
    available = ray.cluster_resources()
    missing = [name for name in devices if available.get(name, 0) < 1]
    if missing:
        example = ", ".join(f'"{name}": 1' for name in missing)
        raise UserError(f"the Ray cluster at {address} has no node with the device resource(s) {', '.join(missing)} "
                        f"that the recipes' targets need; start the node that reaches each device with "
                        f"ray start ... --resources='{{{example}}}'")  # fmt: skip
