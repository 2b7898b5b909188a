"""Progress on stderr: a spinner while a step runs, one line when it ends (with its time, or 'cached')."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from rich.console import Console

from edgepack.running import interrupts


@dataclass
class StepRecord:
    name: str
    cached: bool
    seconds: float = 0.0


@dataclass
class Steps:
    quiet: bool = False
    records: list[StepRecord] = field(default_factory=list)
    failed_step: str | None = None  # the step a failed run stopped in
    # The console writes to its own copy of stderr, so it keeps working while a step's native output is captured.
    console: Console = field(default_factory=lambda: Console(file=_own_stderr(), highlight=False))

    @contextlib.contextmanager
    def step(self, name: str, description: str, cached: bool = False) -> Iterator[StepRecord]:
        record = StepRecord(name, cached)
        started = time.perf_counter()
        status = contextlib.nullcontext() if self.quiet or cached else self.console.status(description + " ...")
        try:
            with status, native_stderr_captured(), interrupts.running(name):
                yield record
        except BaseException:
            self.failed_step = name
            raise
        record.seconds = round(time.perf_counter() - started, 3)
        self.records.append(record)
        self._say(description, record)

    def _say(self, description: str, record: StepRecord) -> None:
        if self.quiet:
            return
        done = "[dim]cached[/dim]" if record.cached else f"{record.seconds:.2f} s"
        self.console.print(f"  [green]✓[/green] {description}  {done}")

    def all_cached(self) -> bool:
        return all(r.cached for r in self.records if r.name != "load")


def _own_stderr():
    try:
        raw = os.fdopen(os.dup(sys.stderr.fileno()), "wb", buffering=0)
        return io.TextIOWrapper(raw, encoding=sys.stderr.encoding or "utf-8", write_through=True)
    except (OSError, ValueError, io.UnsupportedOperation):  # stderr without a file descriptor (some test runners)
        return sys.stderr


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """TensorFlow and LiteRT log from C++ straight to file descriptor 2 (absl and oneDNN banners, 'Created
    TensorFlow Lite XNNPACK delegate'), past any Python logging setting. Keep that off the user's screen while a
    step runs, and show its tail if the step fails: then it may be the clue."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture, _crashes_reported_to(saved):
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            if interrupts.interrupted():  # the user stopped it: a library's log is no clue to anything
                raise
            capture.seek(0)
            tail = capture.read().decode(errors="replace")[-3000:]
            if tail.strip():
                sys.stderr.write(tail if tail.endswith("\n") else tail + "\n")
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def _crashes_reported_to(fd: int) -> Iterator[None]:
    """A native abort (a converter or kernel CHECK failing) kills the process before Python can say anything, and
    its own message goes to the captured file that dies with it; faulthandler then still prints which Python call
    crashed, on the real stderr, instead of a bare 'Aborted'."""
    was_enabled = faulthandler.is_enabled()
    with os.fdopen(os.dup(fd), "w") as stream:
        faulthandler.enable(file=stream)
        try:
            yield
        finally:
            if was_enabled:
                faulthandler.enable()
            else:
                faulthandler.disable()
