"""The run folder is one pack's at a time: a lock held for the whole run, and the temp files a killed run left."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from edgepack.core.errors import UserError

LOCK_FILE = ".lock"
TEMP_PATTERN = ".*.tmp"  # what core.artifacts.atomic_path (and the qat stage's scratch folder) names its temp files


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Two packs into one folder would overwrite each other's files and cache each other's benchmarks (taken while
    both ran) as valid: the second one stops at once, naming the first. The lock is the kernel's (flock), so a killed
    run never leaves it held; the file stays (removing it would let a third run lock a different file)."""
    lock_path = run_dir / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"the run folder {run_dir} is in use by another edgepack pack (pid {holder}); wait for it to end, "
                "or give this run another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_stale_temp_files(run_dir: Path) -> None:
    """A run killed outright (SIGKILL, power loss) cannot remove its temp files: the next, holding the lock, does."""
    for path in sorted(run_dir.rglob(TEMP_PATTERN), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
