"""The base of every config model (unknown keys are errors, values frozen) and the YAML loader
that names the file and the field on any error."""

from __future__ import annotations

from collections.abc import Callable
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


def choice_or_pattern(
    choices: list[str], pattern: str, pattern_title: str
) -> Callable[[dict[str, Any]], None]:
    """The JSON schema of a string that is one of `choices` or matches `pattern` (`hidden:i`):
    a deployment form offers the choices as a list and the pattern as a text box. Validation in
    Python stays one pattern over both, so its error is one line."""

    def replace(schema: dict[str, Any]) -> None:
        schema.pop("type", None)
        schema.pop("pattern", None)
        schema["anyOf"] = [
            {"type": "string", "enum": choices, "title": "one of"},
            {"type": "string", "pattern": pattern, "title": pattern_title},
        ]

    return replace


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (plain YAML
    keeps the last value silently, so a typo'd second `rate:` would win unnoticed)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(model: type[C], path: str | Path, section: str | None = None) -> C:
    """Read YAML (or JSON) from `path` into `model`, naming the file and field on any error."""
    path = Path(path)
    try:
        data: Any = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except OSError as error:
        raise ConfigFileError(f"{path}: cannot read config: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigFileError(
            f"{path}: not UTF-8 text (byte {error.start}: {error.object[error.start]:#04x}); "
            "save the config as UTF-8"
        ) from None
    except yaml.YAMLError as error:
        # One line: PyYAML's message spans several, with a caret under the offending spot.
        where = error.problem_mark if isinstance(error, yaml.MarkedYAMLError) else None
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        what = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigFileError(f"{path}: not valid YAML{at}: {what}") from None
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
