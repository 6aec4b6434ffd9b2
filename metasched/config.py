"""Reading the TOML configuration files of metaschedd and metasched-agent.

A config error is a one-line message naming the file and the key, raised as ConfigError,
which the programs print before exiting non-zero.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    pass


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None


def get(table: dict[str, Any], key: str, kind: type[T], default: T, where: str) -> T:
    """table[key] checked to be of `kind` (ints are accepted for floats)."""
    if key not in table:
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key} must be a {kind.__name__}, not {value!r}")
    return value  # type: ignore[no-any-return]
