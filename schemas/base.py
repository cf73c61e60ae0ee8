"""What every config class shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A config section that refuses unknown keys (a typo is an error naming the key, never silently ignored)."""

    model_config = ConfigDict(extra="forbid")
