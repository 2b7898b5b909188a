"""One bar for the whole sweep on stderr, advancing as variants finish, with how many run on each node; plain
lines when stderr is not a terminal (CI logs, pipes)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class SweepProgress:
    def __init__(self, total: int, quiet: bool = False, console: Console | None = None):
        self.console = console or Console(stderr=True, highlight=False)
        self.quiet, self.done, self.total = quiet, 0, total
        self.live = not quiet and self.console.is_terminal
        self.bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.description}"), console=self.console, transient=False)  # fmt: skip
        self.task = self.bar.add_task("", total=total)

    def __enter__(self) -> SweepProgress:
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.bar.stop()

    def running(self, per_node: dict[str, int]) -> None:
        """How many variants run on each node now (node names shortened)."""
        text = ", ".join(f"{node[:8]}: {count}" for node, count in sorted(per_node.items()))
        self.bar.update(self.task, description=f"running {text}" if text else "")

    def finished(self, row: dict) -> None:
        self.done += 1
        self.bar.update(self.task, completed=self.done)
        if self.quiet:
            return
        line = f"[{self.done}/{self.total}] {row['name']}: {_outcome(row)}"
        if self.live:
            self.bar.console.print(line, soft_wrap=True, markup=False)
        else:
            print(line, file=sys.stderr, flush=True)


def _outcome(row: dict) -> str:
    if row["status"] == "ok":
        where = "done before (skipped)" if row.get("skipped") else f"on node {(row.get('node_id') or '')[:8]}"
        return f"ok, {where}"
    return f"{row['status']}: {row.get('error', '')}"
