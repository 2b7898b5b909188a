"""Typed records one stage hands a later one, beside the artifacts it made (``StageOutput.handoffs``).

They are part of the stage's cached output and are read back with ``StageContext.handoff(kind, artifact)``, which
finds the record on the artifact or its nearest ancestor. Stages share these types, never each other's code.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class QatRanges(BaseModel):
    """What a qat stage trained, for the quantize stage after it: the scheme it simulated and the activation ranges,
    keyed by the tensor names of the QAT model's ONNX export (exported with the recipe's export settings)."""

    model_config = ConfigDict(extra="forbid")
    scheme: dict  # calibration.ptq.QuantScheme as JSON
    ranges: dict[str, tuple[float, float]]


HANDOFF_KINDS: dict[str, type[BaseModel]] = {"QatRanges": QatRanges}  # how the cache reads them back
