"""reseed_globals="auto": a global generator is reseeded per sample once a sample is seen using it.

Reseeding Python's ``random``, numpy's legacy global RNG and torch's CPU generator before every
sample costs ~0.7 us, a quarter of a tiny sample's load; most datasets draw from one of them or
none. Under "auto", each generator is, for a loader in a process, *live* (reseeded before every
sample, as with ``reseed_globals=True``) or *idle*; all start idle. Per batch fetch,
:meth:`GeneratorsInUse.enter` gives every idle generator the entry state of the fetch's (seed,
epoch), the state a sample at a position no order reaches would get, and returns the live ones
for the per-sample reseed; after the batch (samples and collate_fn),
:meth:`GeneratorsInUse.went_live` compares the idle generators' states with that entry state in
one C++ call (every state word, the position, the cached normals). A generator that changed is
live from then on, and the fetch loads the whole batch again, so the batch is what
``reseed_globals=True`` loads: its samples are pure functions of (key, data). A draw moves a
generator's position, which no sequence of draws brings back; so every sample that draws sees
its own per-sample state, in any layout.

What is not seen: code that reads a generator's state without changing it, e.g. draws inside
``torch.random.fork_rng()`` (which puts the state back) or ``torch.initial_seed()``. While the
generator is idle, it reads the (seed, epoch) entry state, the same for every sample, in every
layout; once live, the sample's own. So such a read is exact across layouts only if no sample
of the loader ever changes that generator (if one does, the samples before it was seen read the
entry state, those after their own: where that falls depends on the layout). docs/design.md
says so; ``reseed_globals=True`` gives every read its per-sample state.
"""

from __future__ import annotations

from resumable_loader.rngs.process import ALL, this_process


class GeneratorsInUse:
    """The global generators one loader's samples were seen to change in this process (its
    main process, or one of an iteration's workers), as a set: bit g for generator g of
    :mod:`resumable_loader.rngs.process`.

    Kept per loader, not per process, so that one loader's draws never decide what another's
    samples read: a loader whose samples never change a generator reads its entry state in
    every process and layout.
    """

    __slots__ = ("live",)

    def __init__(self) -> None:
        self.live = 0

    def enter(self, seed: int, epoch: int) -> int:
        """Begin a batch fetch of (seed, epoch): give the idle generators the entry state and
        return the generators to reseed before each sample (every one where this process's
        generators cannot be watched: a layout that did not check out)."""
        reseeder = this_process().watchable
        idle = ALL & ~self.live
        if reseeder is None or (idle and not reseeder.enter(seed, epoch, idle)):
            return ALL
        return self.live

    def went_live(self) -> bool:
        """End the batch fetch :meth:`enter` began: whether a generator that was idle changed,
        which makes it live, and the batch must then be loaded again."""
        reseeder = this_process().watchable
        idle = ALL & ~self.live
        if reseeder is None or not idle:
            return False
        changed = reseeder.changed(idle)
        self.live |= changed
        return changed != 0
