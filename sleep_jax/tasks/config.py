"""Reading and validating a task's config block: defaults, unknown keys, integer ranges.

Every error is a ValueError that names the key as `task.<key>`, e.g.
`task.bits must be >= 5, got 0`.
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections
import numpy as np


def to_dict(config: Mapping[str, Any] | ml_collections.ConfigDict) -> dict[str, Any]:
    """A plain dict of a ConfigDict or any mapping."""
    if isinstance(config, ml_collections.ConfigDict):
        return config.to_dict()
    if not isinstance(config, Mapping):
        raise ValueError(f"task config must be a mapping or ConfigDict, got {type(config).__name__}")
    return dict(config)


def merge(name: str, config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`config` laid over `defaults`; ValueError on a key that `defaults` does not have."""
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(f"task.{unknown[0]} is not an option of task {name!r}; "
                         f"known: {', '.join(sorted(defaults))}")
    return {**defaults, **config}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_range(key: str, value: int, low: int | None, high: int | None) -> None:
    if low is not None and value < low:
        raise ValueError(f"task.{key} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"task.{key} must be <= {high}, got {value}")


def int_value(config: Mapping[str, Any], key: str, *, low: int | None = None,
              high: int | None = None) -> int:
    """`config[key]` as an int in `[low, high]` (either bound optional)."""
    value = config[key]
    if not _is_int(value):
        raise ValueError(f"task.{key} must be an int, got {value!r}")
    _check_range(key, int(value), low, high)
    return int(value)


def int_tuple(config: Mapping[str, Any], key: str, *, low: int | None = None,
              high: int | None = None, length: int | None = None) -> tuple[int, ...]:
    """`config[key]` as a non-empty tuple of ints in `[low, high]` (of `length` items if given)."""
    value = config[key]
    if not isinstance(value, (tuple, list)) or not value:
        raise ValueError(f"task.{key} must be a non-empty tuple of ints, got {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"task.{key} must have {length} items, got {value!r}")
    for item in value:
        if not _is_int(item):
            raise ValueError(f"task.{key} must be a non-empty tuple of ints, got {value!r}")
        _check_range(key, int(item), low, high)
    return tuple(int(item) for item in value)


def multiple_of(key: str, value: int, divisor: int, why: str) -> None:
    """ValueError unless `value % divisor == 0`; `why` says where the divisor comes from."""
    if value % divisor:
        raise ValueError(f"task.{key} must be a multiple of {divisor} ({why}), got {value}")
