"""How to benchmark: the same options on every target, in a recipe's ``bench:`` section and on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class BenchOptions(BaseModel):
    """How long and how hard to benchmark, and how to reach a device; the same on every target."""

    model_config = ConfigDict(extra="forbid")
    runs: int = Field(50, ge=1, description="Least number of timed runs; more run until min_seconds passed.")
    warmup: int = Field(5, ge=0, description="Untimed runs after the first inference, before timing starts.")
    min_seconds: float = Field(1.0, ge=0, description="Least wall time of the timed runs, in seconds.")
    threads: int | list[int] = Field(
        1,
        description="CPU threads (LiteRT num_threads, ORT intra-op threads); a list like [1, 2, 4] or '1,2,4' "
        "gives one record per thread count.",
    )
    seed: int = Field(0, description="Seed of the random input data.")
    input_shapes: dict[str, list[int]] = Field(
        {},
        description="Input name -> shape in the file's own layout, for inputs with dynamic dimensions (a dynamic "
        "batch alone runs at 1; any other dynamic dimension must be given). A pack fills it from model.inputs.",
    )
    input_values: dict[str, Path] = Field(
        {},
        description="Input name -> .npy file fed as that input instead of random data (a sample rate, a state); "
        "an ssh or adb device gets a copy in the benchmark's folder. A pack fills it from model.inputs' 'value'.",
    )
    timeout_seconds: float = Field(300, gt=0, description="Seconds before the runner process is stopped.")
    remote_python: str = Field("python3", description="Python command on an ssh or adb device.")
    ssh_identity_file: Path | None = Field(
        None, description="Private key for ssh targets; default: ssh-agent and the keys in ~/.ssh."
    )
    ssh_known_hosts: Path | None = Field(
        None, description="known_hosts file an ssh target's host key must be in; default ~/.ssh/known_hosts."
    )
    connect_timeout_seconds: float = Field(15, gt=0, description="Seconds to reach and log in to an ssh device.")
    adb_device_dir: str = Field(
        "/data/local/tmp", description="Folder on an adb device under which a temporary folder is made."
    )
    benchmark_model: Path | None = Field(
        None,
        description="TFLite's prebuilt benchmark_model binary for the device: ssh and adb targets then run "
        "it on .tflite files instead of the Python runner.",
    )

    @field_validator("threads", mode="before")
    @classmethod
    def _thread_list(cls, value: Any) -> Any:
        """'1,2,4' (a command-line flag or a --set override) becomes [1, 2, 4]."""
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",")]
            if not all(part.isdigit() for part in parts):
                raise ValueError(
                    f"threads must be a count or a comma-separated list of counts like 1,2,4; got {value!r}"
                )
            return [int(part) for part in parts]
        return value

    @field_validator("threads")
    @classmethod
    def _positive_distinct(cls, value: int | list[int]) -> int | list[int]:
        counts = value if isinstance(value, list) else [value]
        if not counts or any(count < 1 for count in counts):
            raise ValueError(f"every thread count must be at least 1, got {value!r}")
        if len(set(counts)) != len(counts):
            raise ValueError(f"a thread count is listed twice in {value!r}")
        return value

    @property
    def thread_counts(self) -> list[int]:
        return self.threads if isinstance(self.threads, list) else [self.threads]

    def with_threads(self, threads: int) -> BenchOptions:
        """These options for one thread count: what a single benchmark (one record) runs with."""
        return self.model_copy(update={"threads": threads})
