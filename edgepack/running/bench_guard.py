"""Benchmarks that must not overlap: what a sweep wraps around the timing step of each pack run it starts.

A sweep runs several packs at once. Their compression and calibration may share the machine, but two benchmarks
timing at once on one host would each measure the other's load. While ``benches_serialised(lock_file)`` is active,
every host benchmark of this process holds an exclusive lock on ``lock_file`` (one file per machine: every process
that names it takes turns, whichever Ray node or worker it belongs to), and each benchmark's start and end are
recorded. A device target (ssh://, adb://) is not locked here: a sweep schedules it as a resource of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class BenchWindows:
    lock_file: Path | None
    windows: list[dict] = field(default_factory=list)  # {target, started, finished}: Unix seconds


_ACTIVE: list[BenchWindows] = []


@contextlib.contextmanager
def benches_serialised(lock_file: Path | None) -> Iterator[BenchWindows]:
    """Serialise host benchmarks on ``lock_file`` (None: only record their windows) until the block ends."""
    guard = BenchWindows(lock_file)
    _ACTIVE.append(guard)
    try:
        yield guard
    finally:
        _ACTIVE.remove(guard)


def guarded(target: str, compute: Callable[[], dict]) -> Callable[[], dict]:
    """``compute`` (one benchmark on ``target``), run under the active guard; unchanged when there is none."""
    if not _ACTIVE:
        return compute
    guard = _ACTIVE[-1]

    def run() -> dict:
        with _host_lock(guard.lock_file if target == "host" else None):
            started = time.time()
            try:
                return compute()
            finally:
                guard.windows.append({"target": target, "started": started, "finished": time.time()})

    return run


@contextlib.contextmanager
def _host_lock(lock_file: Path | None) -> Iterator[None]:
    if lock_file is None:
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:  # the lock goes with the open file: released when closed, even on a crash
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
