"""Progress on stderr: a spinner while a step runs, one line when it ends (with its time, or 'cached')."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from rich.console import Console


@dataclass
class StepRecord:
    name: str
    cached: bool
    seconds: float = 0.0


@dataclass
class Steps:
    quiet: bool = False
    records: list[StepRecord] = field(default_factory=list)
    console: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))

    @contextlib.contextmanager
    def step(self, name: str, description: str, cached: bool = False) -> Iterator[StepRecord]:
        record = StepRecord(name, cached)
        started = time.perf_counter()
        status = contextlib.nullcontext() if self.quiet or cached else self.console.status(description + " ...")
        with status:
            yield record
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
