"""Native output of TensorFlow and LiteRT is kept off the screen while a step runs, shown when the step fails, and
a native abort inside a step still names the Python call that crashed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from edgepack.running.progress import native_stderr_captured


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))  # fmt: skip


def test_native_output_of_a_step_that_works_is_not_shown():
    done = run_python("""
        import os
        from edgepack.running.progress import native_stderr_captured
        with native_stderr_captured():
            os.write(2, b"I0000 absl banner\\n")
        os.write(2, b"after the step\\n")
    """)
    assert done.returncode == 0 and done.stderr == "after the step\n"


def test_native_output_of_a_failing_step_is_shown_as_its_clue(capfd):
    with pytest.raises(RuntimeError, match="step failed"), native_stderr_captured():
        os.write(2, b"converter: op FOO has no kernel\n")
        raise RuntimeError("step failed")
    assert "converter: op FOO has no kernel" in capfd.readouterr().err


def test_a_native_abort_inside_a_step_names_the_python_call_that_crashed():
    done = run_python("""
        import os
        from edgepack.running.progress import native_stderr_captured

        def allocate_tensors():
            os.abort()  # what a failed CHECK in a kernel does

        with native_stderr_captured():
            os.write(2, b"I0000 absl banner\\n")
            allocate_tensors()
    """)
    assert done.returncode == -6  # SIGABRT
    assert "Fatal Python error: Aborted" in done.stderr and "in allocate_tensors" in done.stderr
    assert "absl banner" not in done.stderr
