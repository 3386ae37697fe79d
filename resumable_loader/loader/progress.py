"""Where a loader is in its stream, and the only transitions that move it.

A loader's place is (epoch, position, complete): the epoch in progress, the samples of it
delivered to the training loop (across all ranks) and whether its iteration ran to its end. A
loaded state or a ``set_epoch`` does not move the place at once: it is pending until the next
``iter()`` (as in torchdata's stateful loader), and ``state_dict()`` in between reports what that
``iter()`` will run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from resumable_loader.errors import ResumeWarning


class Progress:
    """The place in the stream (``epoch``, ``position``, ``complete``) and what is pending.

    Args:
        epoch_complete: whether an iteration begun at a position of an epoch has no batch
            left (our orders know; a user's sampler never says, so it answers False).
    """

    def __init__(self, epoch_complete: Callable[[int], bool]) -> None:
        self._epoch_complete = epoch_complete
        self.epoch = 0
        self.position = 0
        self.complete = False  # the latest iteration ran to its end
        self.exhausted = False  # ... and its iterator raised StopIteration
        self.started = False  # an iteration has begun
        self._pending: tuple[int, int] | None = None  # (epoch, position) of a loaded state
        self._requested_epoch: int | None = None  # from set_epoch()
        self._begun_at = 0  # the position the latest iteration began at
        # the loaded (epoch, position) the latest begin() went past: no batch of it was left
        self.passed: tuple[int, int] | None = None

    def load(self, epoch: int, position: int) -> None:
        """A loaded state: the next iteration continues (epoch, position)."""
        self._pending, self._requested_epoch = (epoch, position), None

    def request_epoch(self, epoch: int) -> bool:
        """set_epoch(): the next iteration runs ``epoch`` (a loaded state's place if the same).

        An iteration begun and not yet delivering takes the request itself: Lightning sets
        the epoch just after creating the epoch's iterator (which torch's lazily started
        samplers allow), and then iterates that iterator. Returns whether that iteration must
        be begun again for it (it runs another epoch); False if it runs ``epoch`` already.
        """
        untouched = self.started and not self.complete and self.position == self._begun_at
        if untouched and epoch == self.epoch and self._pending is None:
            self._requested_epoch = None
            return False
        self._requested_epoch = epoch
        return untouched and self._pending is None

    def begin(self) -> tuple[int, int]:
        """Start the next iteration: consume what is pending; return its (epoch, position)."""
        requested, pending = self._requested_epoch, self._pending
        epoch, position = self.upcoming()
        discards = pending is not None and epoch != pending[0] and pending[1] > 0
        if discards and not self._epoch_complete(pending[1]):
            warnings.warn(
                f"set_epoch({requested}) discards the loaded state's unfinished epoch "
                f"{pending[0]} (position {pending[1]}); its remaining samples are not "
                "delivered",
                ResumeWarning,
                stacklevel=4,  # begin(), the loader's _begin_iteration and __iter__
            )
        self.passed = pending if requested is None and pending and epoch != pending[0] else None
        self._requested_epoch = self._pending = None
        self.epoch, self.position, self.started = epoch, position, True
        self.complete = self.exhausted = False
        self._begun_at = position
        return epoch, position

    def upcoming(self) -> tuple[int, int]:
        """The (epoch, position) the next ``begin()`` starts, consuming nothing."""
        requested, pending = self._requested_epoch, self._pending
        if pending is None and requested is None:
            return (self.epoch + 1, 0) if self.started else (self.epoch, 0)
        epoch, position = self._start(requested, pending)
        if requested is None and position and self._epoch_complete(position):
            return epoch + 1, 0  # a state taken after an epoch's last batch (0: before it)
        return epoch, position

    def sized_epoch(self) -> int:
        """The epoch ``len()`` counts: the one being iterated until its iterator is exhausted
        (so ``i == len(loader) - 1`` still holds at its last batch), else the one the next
        ``begin()`` starts."""
        iterating = self.started and not self.exhausted
        if iterating and self._pending is None and self._requested_epoch is None:
            return self.epoch
        return self.upcoming()[0]

    def snapshot(self) -> dict[str, object]:
        """Everything ``begin()`` changes, for :meth:`rollback`."""
        return dict(vars(self))

    def rollback(self, snapshot: dict[str, object]) -> None:
        """Undo the ``begin()`` since ``snapshot()``: its iteration failed before its iterator
        was handed out (persistent workers that died between epochs, say), so it delivered
        nothing and the next ``begin()`` must start it again, not the epoch after it."""
        vars(self).update(snapshot)

    def advance(self, samples: int, *, last: bool, epoch_length: int | None) -> None:
        """A batch of ``samples`` was delivered (``last``: the iteration is done; our orders
        then stand at ``epoch_length``, padding and dropped tails included); ``samples`` 0
        with ``last``: the iterator is exhausted (StopIteration, after the last batch)."""
        self.position += samples
        if last:
            self.complete = True
            self.exhausted = samples == 0
            if epoch_length is not None:
                self.position = epoch_length

    def place(self) -> tuple[int, int, bool]:
        """(epoch, position, complete) as ``state_dict()`` reports it, pending changes included."""
        if self._pending is not None or self._requested_epoch is not None:
            epoch, position = self._start(self._requested_epoch, self._pending)
            return epoch, position, bool(position) and self._epoch_complete(position)
        # Not started: position 0 of the first epoch, even one with no batch (else the cursor
        # would name its end, and a loader given it would skip to the epoch after).
        ended = self.started and self._epoch_complete(self.position)
        return self.epoch, self.position, self.complete or ended

    @staticmethod
    def _start(requested: int | None, pending: tuple[int, int] | None) -> tuple[int, int]:
        """Where a loaded state and/or set_epoch() place the next iteration."""
        if pending is not None and (requested is None or requested == pending[0]):
            return pending
        assert requested is not None
        return requested, 0

    def __repr__(self) -> str:
        return (
            f"Progress(epoch={self.epoch}, position={self.position}, complete={self.complete}, "
            f"pending={self._pending}, requested_epoch={self._requested_epoch})"
        )
