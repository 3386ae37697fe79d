"""The one integer validator: every size, seed, epoch and position argument goes through it."""

from __future__ import annotations

import operator

import numpy as np

from resumable_loader.errors import ConfigError


def check_int(name: str, value: object, *, low: int = 0, high: int | None = None) -> int:
    """``value`` as a Python int in [low, high) (no upper bound when ``high`` is None).

    Accepts anything with ``__index__`` (Python and numpy integers alike), refuses bools and
    floats, so every argument of the package is validated the same way.

    Raises:
        ConfigError: naming the argument, the accepted range and the value given.
    """
    bounds = f"in [{low}, {high})" if high is not None else f">= {low}"
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be an int {bounds}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be an int {bounds}, got {value!r}") from None
    if number < low or (high is not None and number >= high):
        raise ConfigError(f"{name} must be an int {bounds}, got {number}")
    return number
