"""Checking a saved mixture schedule against the current one: the past is fixed, the future free.

The cursor's ``order_state`` holds what a resume must check: every phase that started before
the saved position (its start and weights) and each source's fingerprint and draws so far; and,
for the resume's log line alone (what changed), the phases after it. A
schedule that keeps that past may change everything after it (new phases, a later phase's
weights or start, new sources); one that rewrites it is refused, naming phase, source and both
values, since the draws already delivered would no longer be the ones the schedule describes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from resumable_loader.errors import StateDictError
from resumable_loader.mixture.schedule import Phase

if TYPE_CHECKING:
    from resumable_loader.mixture.order import MixtureOrder

SOURCES_KEY = "sources"  # [[name, fingerprint, draws before the position], ...]
PHASES_KEY = "phases"  # [[start, [reduced weight per source, in SOURCES order]], ...]
# The phases from the position on, as PHASES_KEY: free to change, and only compared to say in
# the resume's log line what changed (absent from cursors of earlier releases).
FUTURE_KEY = "future"
logger = logging.getLogger("resumable_loader")


def order_state(order: MixtureOrder, where: int) -> dict[str, Any]:
    """The ``order_state`` of a cursor at global position ``where``: plain ints and strings."""
    draws = order.draws_before(where)
    fingerprints = order.source_fingerprints()
    return {
        SOURCES_KEY: [
            [name, fp, count]
            for name, fp, count in zip(order.names, fingerprints, draws, strict=True)
        ],
        PHASES_KEY: [[p.start, list(p.weights)] for p in order.schedule.phases if p.start < where],
        FUTURE_KEY: [[p.start, list(p.weights)] for p in order.schedule.phases if p.start >= where],
    }


def saved_source_names(saved: object) -> list[str] | None:
    """The names of a saved ``order_state``'s sources, in the saved mixture's order; None if
    the state is malformed (:func:`check_order_state` then says how)."""
    try:
        sources, _, _ = _parse(saved)
    except StateDictError:
        return None
    return [name for name, _, _ in sources]


def check_order_state(order: MixtureOrder, saved: object, where: int, *, log: bool) -> None:
    """Refuse ``saved`` if ``order``'s schedule rewrites its past; if ``log``, log what the
    resume does.

    Raises:
        StateDictError: malformed state, or a started phase's start or weights, a drawn-from
            source's presence or fingerprint, or the draws so far differ, or the sources the
            saved run had are listed in another order.
    """
    sources, phases, saved_future = _parse(saved)
    names = [name for name, _, _ in sources]
    current = [phase for phase in order.schedule.phases if phase.start < where]
    fix = (
        f"keep every phase that started before the saved position {where} as it was (start "
        f"and weights) and every source drawn from; change only what comes at or after {where}"
    )
    fingerprints = dict(zip(order.names, order.source_fingerprints(), strict=True))
    for name, _, count in sources:  # first: a missing source would read as a weight now 0
        if count and name not in fingerprints:
            raise StateDictError(
                f"field 'order_state.sources', source {name!r}: saved with {count} draws, but "
                f"the current mixture has no such source (removed or renamed; sources now: "
                f"{list(order.names)!r}); " + fix
            )
    kept = [name for name in order.names if name in names]
    if kept != [name for name in names if name in fingerprints]:
        # the sources' order decides which source a position draws from: a reorder rewrites
        # the interleaving, past (caught below, at some positions only) and future alike
        raise StateDictError(
            f"field 'order_state.sources': the saved run's mixture listed its sources as "
            f"{names!r}, the current one as {list(order.names)!r}; the order of a Mixture's "
            "sources decides its interleaving: list the saved run's sources in their saved "
            "order (a new source may go anywhere among them)"
        )
    for index in range(max(len(phases), len(current))):
        saved_start = phases[index][0] if index < len(phases) else None
        current_start = current[index].start if index < len(current) else None
        if saved_start != current_start:
            raise StateDictError(
                f"field 'order_state.phases[{index}].start': saved {saved_start}, current "
                f"{current_start} (a phase the saved run had begun before position {where}); " + fix
            )
        saved_weights = dict(zip(names, phases[index][1], strict=True))
        current_weights = current[index].named(order.names)
        for name in [*names, *(n for n in current_weights if n not in names)]:
            before, now = saved_weights.get(name, 0), current_weights.get(name, 0)
            if before != now:
                raise StateDictError(
                    f"field 'order_state.phases[{index}]' (start {saved_start}), source "
                    f"{name!r}: saved weight {before}, current {now} (weights reduced to "
                    f"coprime integers); " + fix
                )
    draws = dict(zip(order.names, order.draws_before(where), strict=True))
    for name, fingerprint, count in sources:
        if count and fingerprints[name] != fingerprint:
            raise StateDictError(
                f"field 'order_state.sources', source {name!r}: saved fingerprint {fingerprint}, "
                f"current {fingerprints[name]} (its dataset or order settings changed after "
                f"{count} draws, or a release changed how it is read); resume with the source "
                "(and the release) as they were, or start afresh"
            )
        if count and draws[name] != count:
            raise StateDictError(
                f"field 'order_state.sources', source {name!r}: saved {count} draws, but the "
                f"current schedule gives {draws[name]} at position {where}; pass an unmodified "
                "state_dict() from this release"
            )
    if log:
        _log_resume(order, where, names, draws, saved_future)


def _log_resume(
    order: MixtureOrder,
    where: int,
    saved_names: list[str],
    draws: dict,
    saved_future: list[tuple[int, list[int]]] | None,
) -> None:
    if not logger.isEnabledFor(logging.INFO):  # the line's parts cost more than the check
        return
    schedule = order.schedule
    index = schedule.phase_at(where)
    added = [name for name in order.names if name not in saved_names]
    dropped = [name for name in saved_names if name not in order.names]
    future = [(p.start, p.named(order.names)) for p in schedule.phases if p.start >= where]
    if saved_future is None:
        change = f"phases from here on {future} (the cursor predates recording the saved ones)"
    else:
        saved = [(start, Phase(start, tuple(w)).named(saved_names)) for start, w in saved_future]
        if saved == future:
            change = f"phases from here on as saved: {future}"
        else:
            change = f"phases from here on changed: saved {saved}, now {future}"
    logger.info(
        "mixture: resuming at position %d in phase %d (weights %s); draws so far %s; "
        "past schedule unchanged; sources added %s, dropped (never drawn) %s; %s",
        where,
        index,
        schedule.phases[index].named(order.names),
        draws,
        added,
        dropped,
        change,
    )


def _parse(
    saved: object,
) -> tuple[
    list[tuple[str, str, int]], list[tuple[int, list[int]]], list[tuple[int, list[int]]] | None
]:
    def bad(detail: str) -> StateDictError:
        return StateDictError(
            f"field 'order_state': {detail}; a Mixture loader's state_dict() carries it, so "
            "pass an unmodified state_dict() of a loader over a Mixture"
        )

    if not isinstance(saved, Mapping):
        raise bad(f"saved {saved!r}, expected a dict with {SOURCES_KEY!r} and {PHASES_KEY!r}")
    sources, phases, future = (saved.get(k) for k in (SOURCES_KEY, PHASES_KEY, FUTURE_KEY))
    if not _rows(sources, (str, str, int)):
        raise bad(f"{SOURCES_KEY!r} is {sources!r}, expected [[name, fingerprint, draws], ...]")
    for key, rows in ((PHASES_KEY, phases), (FUTURE_KEY, future)):
        if (key == PHASES_KEY or rows is not None) and not _phase_rows(rows, len(sources)):
            raise bad(f"{key!r} is {rows!r}, expected [[start, [weight per source]], ...]")
    return (
        [tuple(row) for row in sources],
        [(p[0], list(p[1])) for p in phases],
        None if future is None else [(p[0], list(p[1])) for p in future],
    )


def _phase_rows(value: object, width: int) -> bool:
    return _is_sequence(value) and all(
        _is_sequence(p)
        and len(p) == 2
        and _is_int(p[0])
        and _is_sequence(p[1])
        and len(p[1]) == width
        and all(_is_int(w) for w in p[1])
        for p in value
    )


def _rows(value: object, kinds: tuple[type, ...]) -> bool:
    return _is_sequence(value) and all(
        _is_sequence(row)
        and len(row) == len(kinds)
        and all(
            _is_int(v) if k is int else isinstance(v, k) for v, k in zip(row, kinds, strict=True)
        )
        for row in value
    )


def _is_sequence(value: object) -> bool:
    """A list or tuple (what every transport gives back) first: the ABC check is slower."""
    return type(value) in (list, tuple) or isinstance(value, Sequence)


def _is_int(value: object) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))
