"""Dotted keys (`model.n_layer`) over nested dicts: the one place a config section path is split or joined.

Configs are nested (`{"model": {"n_layer": 2}}`); overrides, grids, trial records, dataframe columns and W&B's
config are flat. Everything converts through these functions.
"""
from __future__ import annotations

_MISSING = object()


def flatten(nested: dict, prefix: str = "") -> dict:
    """`{"model": {"n_layer": 2}}` -> `{"model.n_layer": 2}`; an empty section leaves no key."""
    flat: dict = {}
    for key, value in nested.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def get_dotted(nested, dotted: str, default=None):
    """The value at `dotted`, or `default` where a part of the path is missing or not a section."""
    value = nested
    for part in dotted.split("."):
        value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            return default
    return value


def set_dotted(raw: dict, dotted: str, value) -> dict:
    """A copy of `raw` with `dotted` set, creating the sections on the way."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return {**raw, head: value}
    section = raw.get(head)
    return {**raw, head: set_dotted(section if isinstance(section, dict) else {}, rest, value)}


def first_difference(saved, current, prefix: str = "") -> str | None:
    """The dotted key where two nested values first differ (`prefix` before it), or None when they are equal."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in [*saved, *(k for k in current if k not in saved)]:
            found = first_difference(saved.get(key), current.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if saved == current else prefix.rstrip(".") or "top level"
