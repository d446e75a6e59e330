"""The building blocks of configuration files: durations, strict models, errors that name the file.

A leaf module (it imports nothing of citywatch), so that the registry and the detectors, whose option
models `citywatch.config` gathers, can build on it without import cycles.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

T = TypeVar("T")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as "500ms", "30s", "5m", "2h", "1d"."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"not a duration: {value!r} (use seconds or a string like '30s', '5m', '2h')")


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _false_is_none(value: Any) -> Any:
    return None if value is False else value


# A detector's config section: a mapping of its options, or null/false to turn the detector off.
Section = Annotated[T | None, BeforeValidator(_false_is_none)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ConfigError(Exception):
    """A config or registry file is invalid: the message names the file, the key path and the reason."""


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: {err.error_count()} error(s)"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {source}: {path}: {e['msg']}")
    return "\n".join(lines)


def read_yaml(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
