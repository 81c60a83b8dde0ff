"""Configs as flat records `{"block.key": value}`, and the keys where two of them differ.

The run record (`train.record`: resume and eval tags) and the engine's session snapshots
(`infer.snapshot`) compare configs with these. No project imports.
"""
from typing import Any

ABSENT = "<absent>"


def flatten(config) -> dict[str, Any]:
    """`{"block.key": value}` of a two-level config (an `ml_collections.ConfigDict` or a dict of
    dicts), with tuples as lists (as they come back from JSON)."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    tree = config.to_dict() if hasattr(config, "to_dict") else config
    return {f"{block}.{key}": plain(value) for block, keys in tree.items() for key, value in keys.items()}


def differences(old, new) -> dict[str, tuple[Any, Any]]:
    """`{"block.key": (old value, new value)}` for every key whose value differs between two
    two-level configs, in key order (a key only one side has reads `ABSENT` on the other)."""
    old, new = flatten(old), flatten(new)
    return {key: (old.get(key, ABSENT), new.get(key, ABSENT))
            for key in sorted(set(old) | set(new)) if old.get(key, ABSENT) != new.get(key, ABSENT)}
