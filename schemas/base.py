"""What every config class shares."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """A config section that refuses unknown keys (a typo is an error naming the key, never silently ignored)."""

    model_config = ConfigDict(extra="forbid")


def check_file_name(value: str) -> str:
    """``value`` when it is a plain file-name component (it is joined into paths: never a way out of the folder)."""
    if not value or value.startswith(".") or any(c in value for c in ("/", "\\", "\0")) or value != value.strip():
        raise ValueError(
            f"must be a plain file name (not empty, no '/', '\\', NUL, leading '.' or surrounding spaces), "
            f"got {value!r}"
        )
    return value


#: a config name that becomes a path component (a dataset's name, a split folder)
FileName = Annotated[str, AfterValidator(check_file_name)]
#: a size or count in pixels / items that must be at least 1
PositiveSize = Annotated[int, Field(gt=0)]
