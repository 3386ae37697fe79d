"""A mixture's schedule: phases of exact integer weights, validated once, compared on resume.

Weights are ints or ``fractions.Fraction``s, never floats: a float such as 0.1 is not the
number it prints, so its share of a long run would drift from what the user wrote. Each phase's
weights are reduced to coprime integers over the mixture's sources (a source a phase does not
name has weight 0 there), which is what the allocation interleaves and what the cursor records.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from resumable_loader._checks import check_int
from resumable_loader.errors import ConfigError

# The allocation interleaves one period of W = sum of a phase's reduced weights positions; its
# table takes W bytes, built once per distinct weights (about 2 us a position).
MAX_TOTAL_WEIGHT = 2**16
MAX_SOURCES = 255  # a position's source is one byte of the period table
POSITION_LIMIT = 2**63


@dataclasses.dataclass(frozen=True)
class Phase:
    """Positions [start, next phase's start) draw from the sources in proportion to ``weights``.

    Args:
        start: the first global position of the phase (phase 0 starts at 0).
        weights: reduced integer weights, one per source in the mixture's source order.
    """

    start: int
    weights: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.weights)

    def named(self, names: Sequence[str]) -> dict[str, int]:
        """The weights by source name (zero weights left out)."""
        return {name: w for name, w in zip(names, self.weights, strict=True) if w}


class Schedule:
    """The phases of a mixture over the named sources, from global position 0 on.

    Args:
        names: the sources' names, in the mixture's order.
        weights: the first phase's weights by name (ints or Fractions >= 0, one at least > 0).
        phases: further ``(start, weights)`` pairs, starts increasing and > 0.
    """

    def __init__(
        self,
        names: Sequence[str],
        weights: Mapping[str, int | Fraction],
        phases: Sequence[tuple[int, Mapping[str, int | Fraction]]] = (),
    ) -> None:
        self.names = tuple(names)
        if not 1 <= len(self.names) <= MAX_SOURCES:
            raise ConfigError(f"a Mixture needs 1 to {MAX_SOURCES} sources, got {len(names)}")
        built = [Phase(0, reduce_weights(self.names, weights, where="weights"))]
        if isinstance(phases, Mapping) or not isinstance(phases, Sequence):
            raise ConfigError(
                f"phases must be a sequence of (start, weights) pairs, got {type(phases).__name__}"
            )
        for index, entry in enumerate(phases, start=1):
            if not isinstance(entry, Sequence) or len(entry) != 2:
                raise ConfigError(
                    f"phases[{index - 1}] must be a (start, weights) pair, got {entry!r}"
                )
            start = check_int(f"phases[{index - 1}] start", entry[0], low=1, high=POSITION_LIMIT)
            if start <= built[-1].start:
                raise ConfigError(
                    f"phases[{index - 1}] starts at {start}, not after the previous phase's start "
                    f"{built[-1].start}; give phase starts (global positions) in increasing order"
                )
            built.append(Phase(start, reduce_weights(self.names, entry[1], where=f"phase {index}")))
        self.phases = tuple(built)

    def phase_at(self, position: int) -> int:
        """The index of the phase that global ``position`` falls in."""
        index = 0
        for candidate, phase in enumerate(self.phases):
            if phase.start <= position:
                index = candidate
        return index

    def end(self, index: int) -> int:
        """The position after phase ``index``'s last (the next start, or 2**63)."""
        return self.phases[index + 1].start if index + 1 < len(self.phases) else POSITION_LIMIT

    def described(self) -> list[list[Any]]:
        """Every phase as ``[start, {name: reduced weight}]``: plain values, for a manifest."""
        return [[phase.start, phase.named(self.names)] for phase in self.phases]

    def __repr__(self) -> str:
        parts = ", ".join(f"({p.start}, {p.named(self.names)})" for p in self.phases)
        return f"Schedule([{parts}])"


def reduce_weights(
    names: Sequence[str], weights: Mapping[str, int | Fraction], *, where: str
) -> tuple[int, ...]:
    """``weights`` as coprime ints in ``names`` order (absent names: 0), or ConfigError."""
    if not isinstance(weights, Mapping):
        raise ConfigError(
            f"{where} must map source names to ints or Fractions, got {type(weights).__name__}"
        )
    unknown = [name for name in weights if name not in names]
    if unknown:
        raise ConfigError(
            f"{where} names {unknown!r}, which are not sources of this Mixture "
            f"(sources: {list(names)!r}); add them to sources or fix the name"
        )
    exact = [_exact(weights.get(name, 0), f"{where}[{name!r}]") for name in names]
    if not any(exact):
        raise ConfigError(f"{where}: every weight is 0; give at least one source a weight > 0")
    scale = math.lcm(*(w.denominator for w in exact))
    integers = [int(w * scale) for w in exact]
    divisor = math.gcd(*integers)
    reduced = tuple(w // divisor for w in integers)
    total = sum(reduced)
    if total > MAX_TOTAL_WEIGHT:
        # the nearest ints within the period, every source drawn from still drawn from (the
        # room left for the 1s keeps the sum within it): passable as written
        room = MAX_TOTAL_WEIGHT - len(names)
        simpler = {
            name: max(1, round(Fraction(w * room, total)))
            for name, w in zip(names, reduced, strict=True)
            if w
        }
        raise ConfigError(
            f"{where}: the weights reduce to integers summing to {total}, more than "
            f"{MAX_TOTAL_WEIGHT} (the exact interleaving's period); pass simpler ones, e.g. "
            f"{simpler} (the nearest within it)"
        )
    return reduced


def _exact(value: object, where: str) -> Fraction:
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Rational):  # numpy too
        number = float(value)
        simplest = _simplest(number) if math.isfinite(number) else None
        instead = (
            f"Fraction({simplest.numerator}, {simplest.denominator})" if simplest else "a Fraction"
        )
        raise ConfigError(
            f"{where} is the float {value!r}, whose share would not be exact; pass {instead} "
            "(from fractions import Fraction) or an int"
        )
    number = value if isinstance(value, Fraction) else Fraction(check_int(where, value))
    if number < 0:
        raise ConfigError(f"{where} must be >= 0, got {value!r}")
    return number


def _simplest(number: float) -> Fraction:
    """The fraction with the smallest denominator that is ``number`` as a float (1/3 for
    0.3333333333333333, 3/10 for 0.3), so that the weights it suggests stay within the
    period's limit; else (a float32's 0.30000001192092896) the nearest with a denominator up
    to 1,000, what the user meant."""
    exact = Fraction(number)
    for bound in (10, 100, 1000, 10_000, MAX_TOTAL_WEIGHT):
        candidate = exact.limit_denominator(bound)
        if float(candidate) == number:
            return candidate
    return exact.limit_denominator(1000)
