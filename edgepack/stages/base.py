"""The config every stage config extends: data only, unknown keys rejected."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)
    stage: str = Field(description="Which registered stage this entry configures.")
