"""The one least-recently-used cache: bounded by a total cost (bytes, or a count of handles)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """Keeps values while their total ``cost`` is at most ``capacity``; least recent out first.

    Args:
        capacity: the bound on the total cost of the kept values.
        cost: a value's cost (default ``len``: bytes of a bytes value).
        keep: how many of the most recent values stay even past ``capacity`` (1: the value
            just read stays, so a value larger than the whole cache is not read twice).
        evicted: called with each value put out (e.g. to close a file handle).
    """

    def __init__(
        self,
        capacity: int,
        *,
        cost: Callable[[V], int] = len,  # type: ignore[assignment]
        keep: int = 0,
        evicted: Callable[[V], None] | None = None,
    ) -> None:
        self.capacity = capacity
        self._cost, self._keep, self._evicted = cost, keep, evicted
        self._values: OrderedDict[K, V] = OrderedDict()
        self.total = 0

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recent), or None."""
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def __contains__(self, key: K) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[K]:
        """The keys, least recent first."""
        return iter(self._values)

    def values(self) -> list[V]:
        """The values, least recent first (reading them does not make them recent)."""
        return list(self._values.values())

    def __len__(self) -> int:
        return len(self._values)

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` as the most recent; put out the least recent ones past capacity."""
        if key in self._values:
            self.total -= self._cost(self._values.pop(key))
        self._values[key] = value
        self.total += self._cost(value)
        while self.total > self.capacity and len(self._values) > self._keep:
            _, old = self._values.popitem(last=False)
            self.total -= self._cost(old)
            if self._evicted is not None:
                self._evicted(old)

    def pop_all(self) -> list[V]:
        """Forget every value; return them (the caller may close them), least recent first."""
        values = self.values()
        self._values.clear()
        self.total = 0
        return values

    def __repr__(self) -> str:
        return f"LRU(capacity={self.capacity}, values={len(self._values)}, total={self.total})"
