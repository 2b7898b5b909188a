"""Where data comes from and how raw samples become model inputs: one typed block, used for evaluation data in
the recipe and for calibration data in the quantize stage. The preprocessing goes into the manifest unchanged,
so an app can reproduce it."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edgepack.core.config import Strict


class DataSourceKind(StrEnum):
    DIGITS = "digits"
    NPZ = "npz"
    IMAGES = "images"
    CALLABLE = "callable"


class Preprocessing(Strict):
    """x = (raw * scale - mean) / std per channel, after resizing, in the color order named."""

    description: str | None = Field(None, description="Free text for the app developer (where the data comes from).")
    resize: list[int] | None = Field(None, min_length=2, max_length=2, description="[height, width]; null: as is.")
    color: Literal["rgb", "bgr", "grayscale"] | None = Field(None, description="Channel order the model expects.")
    scale: float = Field(1.0, description="Raw values (e.g. 0..255 pixels) are multiplied by this first.")
    mean: list[float] = Field([0.0], min_length=1, description="Subtracted per channel after scaling.")
    std: list[float] = Field([1.0], min_length=1, description="Divided per channel last.")


class DataConfig(Strict):
    source: DataSourceKind = Field(
        description="'digits' (scikit-learn's, bundled), 'npz' (arrays in a file), 'images' (a folder; class "
        "subfolders give labels) or 'callable' (a Python function returning arrays)."
    )
    path: Path | None = Field(None, description="For 'npz': the .npz (one array per input, optional 'labels'); for "
                                                "'images': the folder.")  # fmt: skip
    function: str | None = Field(None, description="For 'callable': 'package.module:function' returning a mapping "
                                                   "{input_name: array (N, ...), 'labels': optional}.")  # fmt: skip
    max_samples: int | None = Field(None, gt=0, description="Use at most this many samples.")
    preprocessing: Preprocessing | None = Field(
        None, description="How raw images become inputs ('images' needs it for resize/scale; goes to the manifest)."
    )

    @model_validator(mode="after")
    def _what_each_source_needs(self) -> DataConfig:
        if self.source in (DataSourceKind.NPZ, DataSourceKind.IMAGES) and self.path is None:
            raise ValueError(f"data source '{self.source}' needs 'path'")
        if self.source == DataSourceKind.CALLABLE and not self.function:
            raise ValueError("data source 'callable' needs 'function: package.module:function'")
        return self
