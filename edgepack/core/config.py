"""The base of every config: data only (no callables), unknown keys refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Config is data: unknown keys are refused, enums serialise as their values (the recipe uses it too)."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)
