"""Trace-time checks of static arguments shared by the public APIs."""
from __future__ import annotations

import operator


def static_int(value, name: str, minimum: int, maximum: int | None = None) -> int:
    """`value` as a Python int in [minimum, maximum]; TypeError/ValueError
    naming the argument otherwise."""
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a Python int, got {type(value).__name__}") from None
    if maximum is None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and not minimum <= value <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
    return value
