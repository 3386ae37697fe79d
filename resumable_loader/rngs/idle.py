"""reseed_globals="auto": a global generator is reseeded per sample once its process saw it used.

Reseeding Python's ``random``, numpy's legacy global RNG and torch's CPU generator before every
sample costs ~0.7 us, a quarter of a tiny sample's load; most datasets draw from one of them or
none. Under "auto", each generator of a process is *live* (reseeded before every sample, as
with ``reseed_globals=True``) or *idle*; all start idle. Per batch fetch, :func:`enter` gives
every idle generator the entry state of the fetch's (seed, epoch), the state a sample at a
position no order reaches would get, and returns the live ones for the per-sample reseed;
after the batch (samples and collate_fn) :func:`went_live` compares the idle generators'
states with that entry state in one C++ call (every state word, the position, the cached
normals). A generator that changed is live from then on, and the fetch loads the whole batch
again, so the batch is what ``reseed_globals=True`` loads: its samples are pure functions of
(key, data). A sample that draws from a generator moves its position, which no sequence of
draws brings back; so every sample that draws sees its own per-sample state, in any layout.

What is not seen: code that reads a generator's state without changing it, e.g. draws inside
``torch.random.fork_rng()`` (which puts the state back) or ``torch.initial_seed()``. While the
generator is idle, it reads the (seed, epoch) entry state, the same for every sample; once
live, the sample's own. docs/design.md says what that means and when to pass True.
"""

from __future__ import annotations

from typing import Any

from resumable_loader.rngs.process import ALL, this_process

_live = 0  # the generators this process's samples were seen to change (bit g: generator g)
_watched: Any = None  # the reseeder that gave the idle ones their entry state, in a fetch


def enter(seed: int, epoch: int) -> int:
    """Begin a batch fetch of (seed, epoch) under "auto": give the idle generators the entry
    state and return the generators to reseed before each sample (every one where this
    process's generators cannot be watched: a layout that did not check out)."""
    global _watched
    reseeder = this_process().watchable
    idle = ALL & ~_live
    if reseeder is None or (idle and not reseeder.enter(seed, epoch, idle)):
        _watched = None
        return ALL
    _watched = reseeder
    return _live


def went_live() -> bool:
    """End the batch fetch :func:`enter` began: whether a generator that was idle changed,
    which makes it live, and the batch must then be loaded again."""
    global _live, _watched
    reseeder, _watched = _watched, None
    idle = ALL & ~_live
    if reseeder is None or not idle:
        return False
    changed = reseeder.changed(idle)
    _live |= changed
    return changed != 0


def live() -> int:
    """The generators this process reseeds before each sample under "auto" (bit g: generator
    g, as :mod:`resumable_loader.rngs.process` numbers them)."""
    return _live
