"""The packing strategies in plain Python: the reference the C++ plan (csrc/packing.h,
window_pack_bins and window_pack_plan) is checked against, rule by rule; every packed stream
depends on it."""

from __future__ import annotations

import bisect

import numpy as np


def reference_bins(length: np.ndarray, capacity: int, strategy: str) -> np.ndarray:
    """The bin (numbered in order of opening) of each piece under ``strategy``."""
    length = np.asarray(length, dtype=np.int64)
    if strategy == "next_fit":
        return _next_fit(length, capacity)
    decreasing = np.argsort(-length, kind="stable")  # ties: in order of position
    return {"ffd": _first_fit, "bfd": _best_fit, "pad": _padded}[strategy](
        length, decreasing, capacity
    )


def reference_order(bins: np.ndarray) -> tuple[list[int], list[int]]:
    """The pieces in pack order (packs by their first piece, each pack's pieces in order of
    position) and the packs' bounds in that order."""
    first: dict[int, int] = {}
    for piece, b in enumerate(bins.tolist()):
        first.setdefault(b, piece)
    packs = sorted(first, key=first.__getitem__)
    members = [[i for i, b in enumerate(bins.tolist()) if b == pack] for pack in packs]
    bounds = [0]
    for pieces in members:
        bounds.append(bounds[-1] + len(pieces))
    return [i for pieces in members for i in pieces], bounds


def _next_fit(length: np.ndarray, capacity: int) -> np.ndarray:
    bins = np.empty(len(length), dtype=np.int64)
    current, used = -1, capacity + 1
    for index, size in enumerate(length.tolist()):
        if used + size > capacity:
            current, used = current + 1, 0
        used += size
        bins[index] = current
    return bins


def _first_fit(length: np.ndarray, decreasing: np.ndarray, capacity: int) -> np.ndarray:
    bins = np.empty(len(length), dtype=np.int64)
    room = np.empty(len(length), dtype=np.int64)
    opened = 0
    for index in decreasing.tolist():
        size = length[index]
        fits = np.flatnonzero(room[:opened] >= size)
        if len(fits):
            target = int(fits[0])
        else:
            target, opened = opened, opened + 1
            room[target] = capacity
        room[target] -= size
        bins[index] = target
    return bins


def _best_fit(length: np.ndarray, decreasing: np.ndarray, capacity: int) -> np.ndarray:
    """Rooms kept sorted as (room, bin): the fullest bin that fits is one bisect away."""
    bins = np.empty(len(length), dtype=np.int64)
    rooms: list[tuple[int, int]] = []
    opened = 0
    for index in decreasing.tolist():
        size = int(length[index])
        at = bisect.bisect_left(rooms, (size, -1))
        if at < len(rooms):
            room, target = rooms.pop(at)
        else:
            room, target, opened = capacity, opened, opened + 1
        bisect.insort(rooms, (room - size, target))
        bins[index] = target
    return bins


def _padded(length: np.ndarray, decreasing: np.ndarray, budget: int) -> np.ndarray:
    """Consecutive groups of the decreasing pieces, each as many as fit once padded."""
    bins = np.empty(len(length), dtype=np.int64)
    group, count, longest = -1, 0, 0
    for index in decreasing.tolist():
        size = int(length[index])
        if group < 0 or (count + 1) * longest > budget:
            group, count, longest = group + 1, 0, size
        count += 1
        bins[index] = group
    return bins
