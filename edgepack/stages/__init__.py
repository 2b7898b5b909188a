"""Stage registry and the built-in stages. A new stage is a module here that calls ``register_stage``."""

from edgepack.stages.base import StageConfig
from edgepack.stages.registry import STAGES, StageEntry, get_stage, register_stage

# Built-in stages register on import; keep this list in pipeline order.
from edgepack.stages import prune as _prune  # noqa: E402,F401  isort: skip
from edgepack.stages import low_rank as _low_rank  # noqa: E402,F401  isort: skip
from edgepack.stages import finetune as _finetune  # noqa: E402,F401  isort: skip
from edgepack.stages import qat as _qat  # noqa: E402,F401  isort: skip
from edgepack.stages import export as _export  # noqa: E402,F401  isort: skip
from edgepack.stages import convert as _convert  # noqa: E402,F401  isort: skip
from edgepack.stages import quantize as _quantize  # noqa: E402,F401  isort: skip

__all__ = ["STAGES", "StageConfig", "StageEntry", "get_stage", "register_stage"]
