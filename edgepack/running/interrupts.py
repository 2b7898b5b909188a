"""Ctrl-C: one line, "interrupted during STEP; re-run to resume", and exit 130, wherever the interrupt lands.

Libraries do not always let a KeyboardInterrupt through: the dynamo exporter can turn it into an AttributeError
that the export stage then wraps as an exporter failure, and a C++ library's log is replayed when a step fails.
So the SIGINT handler records that the user interrupted (and in which step) before raising, and the CLI asks
``interrupted()`` first, whatever exception reached it. A step that swallowed the interrupt is stopped when it
ends (``Steps.step`` calls ``raise_if_interrupted``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
_state: dict = {"interrupted_in": None, "steps": [], "command": "start-up"}


def install() -> None:
    """Route SIGINT through ``_on_sigint`` (the CLI calls this once, first)."""
    signal.signal(signal.SIGINT, _on_sigint)


def _on_sigint(signum, frame) -> None:
    if _state["interrupted_in"] is None:  # a second Ctrl-C during clean-up keeps the first step's name
        _state["interrupted_in"] = current_step()
    raise KeyboardInterrupt


def interrupted() -> bool:
    return _state["interrupted_in"] is not None


def message() -> str:
    return f"interrupted during {_state['interrupted_in']}; re-run to resume"


def name_command(command: str | None) -> None:
    _state["command"] = command or "start-up"


def current_step() -> str:
    return _state["steps"][-1] if _state["steps"] else _state["command"]


def raise_if_interrupted() -> None:
    if interrupted():
        raise KeyboardInterrupt


@contextlib.contextmanager
def running(step: str) -> Iterator[None]:
    """Name the step an interrupt would land in (nested steps: the innermost)."""
    _state["steps"].append(step)
    try:
        _pause_for_tests(step)
        yield
    finally:
        _state["steps"].pop()
    raise_if_interrupted()


def _pause_for_tests(step: str) -> None:
    """Test hook: with EDGEPACK_TEST_PAUSE_AT=STEP and EDGEPACK_TEST_PAUSE_FILE=PATH, touch PATH on entering STEP and
    wait there, so a kill test knows which step its signal lands in. Unset (always, outside tests) it does nothing."""
    if os.environ.get("EDGEPACK_TEST_PAUSE_AT") != step or "EDGEPACK_TEST_PAUSE_FILE" not in os.environ:
        return
    Path(os.environ["EDGEPACK_TEST_PAUSE_FILE"]).touch()
    time.sleep(120)
