"""Progress on stderr: a spinner while a step runs, one line when it ends (with its time, or 'cached'); a long step
(fine-tuning) also reports where it is: a bar with an ETA on a terminal, plain lines in a CI log."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.status import Status

from edgepack.running import interrupts

# Without a terminal (a CI log), a long step prints a plain progress line at most this often (and at every
# milestone, e.g. an epoch's end, at most once a second), so a log shows it is alive without filling up.
PLAIN_LINE_SECONDS = 10.0
MILESTONE_LINE_SECONDS = 1.0


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
    _active: StepProgress | None = None

    @contextlib.contextmanager
    def step(self, name: str, description: str, cached: bool = False) -> Iterator[StepRecord]:
        record = StepRecord(name, cached)
        started = time.perf_counter()
        status = None if self.quiet or cached else self.console.status(description + " ...")
        self._active = None if status is None else StepProgress(self.console, name, status)
        try:
            with status or contextlib.nullcontext(), native_stderr_captured(), interrupts.running(name):
                try:
                    yield record
                finally:
                    if self._active is not None:
                        self._active.close()
                    self._active = None
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

    def progress(self, done: int, total: int, text: str, milestone: bool = False) -> None:
        """Where the running step is: ``done`` of ``total`` units, ``text`` saying it ('epoch 2/5, loss 0.31')."""
        if self._active is not None:
            self._active.update(done, total, text, milestone)

    def all_cached(self) -> bool:
        return all(r.cached for r in self.records if r.name != "load")


class StepProgress:
    """A running step's progress: on a terminal a rich bar (steps done, ETA) in place of the spinner while it
    lasts; otherwise plain lines ('prune: epoch 2/5, loss 0.31, ETA 40 s') at a bounded rate: the first and the
    last milestone always, others a second apart, and between milestones one line every PLAIN_LINE_SECONDS."""

    def __init__(self, console: Console, label: str, status: Status):
        self.console, self.label, self.status = console, label, status
        self.started: float | None = None  # at the first report: a stage's setup before training is no part of the ETA
        self.last_line: float | None = None
        self.bar: Progress | None = None

    def update(self, done: int, total: int, text: str, milestone: bool) -> None:
        if self.console.is_terminal:
            self._update_bar(done, total, text)
            return
        now = time.perf_counter()
        self.started = now if self.started is None else self.started
        since_line = now - (self.last_line if self.last_line is not None else self.started)
        wanted = since_line >= PLAIN_LINE_SECONDS
        wanted |= milestone and (self.last_line is None or since_line >= MILESTONE_LINE_SECONDS or done >= total)
        if done > 0 and wanted:
            self.last_line = now
            eta = (now - self.started) / done * max(total - done, 0)
            self.console.print(f"{self.label}: {text}, ETA {eta:.0f} s", markup=False, soft_wrap=True)

    def _update_bar(self, done: int, total: int, text: str) -> None:
        if self.bar is None and done >= total:  # the milestone after the last step: the bar is done already
            return
        if self.bar is None:
            self.status.stop()  # rich shows one live display at a time: the bar takes the spinner's place
            self.bar = Progress(TextColumn(f"{self.label}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[text]}"), TimeRemainingColumn(),
                                console=self.console, transient=True)  # fmt: skip
            self.task = self.bar.add_task(self.label, total=total, text="")
            self.bar.start()
        self.bar.update(self.task, completed=done, total=total, text=text)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            self.status.start()  # the rest of the step (export, scoring) under the spinner again


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
            tail = readable_tail(capture.read().decode(errors="replace"))
            if tail:
                sys.stderr.write(tail + "\n")
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# TensorFlow's info/warning lines (glog: I or W, then MMDD) and its start-up banners: never the clue to a failure.
_ROUTINE_LOG_LINE = re.compile(r"^[IW]\d{4} |^WARNING: All log messages before absl|^To enable the following instr")


def readable_tail(log: str, lines: int = 20, width: int = 300) -> str:
    """The last lines of a native log worth reading after a failure, each cut to ``width``: without TensorFlow's
    routine lines and the TFLite converter's MLIR source locations (kilobytes of 'callsite(...)' chains through
    Python files per failing op; the error itself is on its own line, and in edgepack's message)."""
    kept = [line[:width] for line in log.splitlines()
            if line.strip() and "callsite(" not in line and not _ROUTINE_LOG_LINE.match(line)]  # fmt: skip
    return "\n".join(kept[-lines:])


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
