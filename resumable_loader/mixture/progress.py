"""How far a mixture run is: per source draws and epochs, and the phase in force."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resumable_loader.mixture.schedule import POSITION_LIMIT

if TYPE_CHECKING:
    from resumable_loader.mixture.order import MixtureOrder


def mixture_progress(order: MixtureOrder, where: int) -> dict[str, Any]:
    """The progress after global position ``where`` (samples delivered over the whole run).

    Returns a plain dict: ``position``, ``phase`` (index), ``weights`` (the phase's reduced
    weights by name), ``next_phase_start`` (None in the last phase) and, per source name,
    ``draws`` (samples drawn so far), ``epochs_completed`` (of its own epochs),
    ``epoch_fraction`` (of its current epoch) and ``length``.
    """
    schedule = order.schedule
    index = schedule.phase_at(where)
    end = schedule.end(index)
    draws = order.draws_before(where)
    sources = {}
    for name, stream, count in zip(order.names, order.streams, draws, strict=True):
        epochs, into = divmod(count, stream.length)
        sources[name] = {
            "draws": count,
            "epochs_completed": epochs,
            "epoch_fraction": into / stream.length,
            "length": stream.length,
        }
    return {
        "position": where,
        "phase": index,
        "weights": schedule.phases[index].named(order.names),
        "next_phase_start": None if end == POSITION_LIMIT else end,
        "sources": sources,
    }
