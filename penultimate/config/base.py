"""The base of every config model (unknown keys are errors, values frozen) and the YAML loader
that names the file and the field on any error."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from penultimate.errors import InputError


class _Config(BaseModel):
    # Unknown keys are typos until proven otherwise.
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)


class ConfigFileError(InputError):
    """A config file that cannot be read or does not validate; the message names file and field."""


C = TypeVar("C", bound=BaseModel)


def load_config(model: type[C], path: str | Path, section: str | None = None) -> C:
    """Read YAML (or JSON) from `path` into `model`, naming the file and field on any error."""
    path = Path(path)
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigFileError(f"{path}: cannot read config: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigFileError(f"{path}: not valid YAML: {error}") from None
    if section is not None:
        data = (data or {}).get(section, {})
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a mapping of {model.__name__} fields")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in error.errors()
        )
        raise ConfigFileError(f"{path}: invalid {model.__name__}: {problems}") from None
