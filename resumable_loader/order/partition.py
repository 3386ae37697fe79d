"""Which epoch positions each rank's batches cover: the fixed split of the global stream.

With world size W and per-rank batch size B, global batch k of an iteration that starts at
epoch position g covers positions [g + kWB, g + (k+1)WB) and rank r takes
[g + kWB + rB, g + kWB + (r+1)B). Positions are counted in the epoch's global stream, so the split
never changes which sample sits at which position; only who loads it.

The last global batch of an epoch may be short (R < WB positions left). With drop_last it is
dropped. Without it, every rank still gets one batch (DDP hangs if ranks disagree on the number
of batches): each takes ceil(R / W) positions, and positions past the epoch's end wrap around to
its start, as torch's DistributedSampler pads. With W = 1 nothing wraps and the last batch is
simply shorter, as in torch's DataLoader. With ``trim`` (a ``DistributedSampler(drop_last=True)``
in the loader) it is cut to a multiple of W instead: each rank takes floor(R / W) positions, the
rest are dropped, and a rank's batches are those torch gives it (floor(N / W) samples each).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from resumable_loader._checks import check_int


@dataclasses.dataclass(frozen=True)
class RankBatch:
    """One batch of one rank: virtual positions [start, stop) of the epoch's global stream.

    Positions at or beyond the epoch length are padding: they load the sample at
    ``position % length``. ``global_size`` counts the real (non-padding) positions of the whole
    global batch, which is how far the cursor advances once this batch is delivered.
    """

    start: int
    stop: int
    global_size: int


@dataclasses.dataclass(frozen=True)
class Partition:
    """Splits an epoch of ``length`` positions into per-rank batches.

    Args:
        length: positions in an epoch (the dataset length).
        batch_size: samples per rank per batch (1 when torch's auto-batching is off).
        world_size: number of ranks sharing each global batch.
        rank: this process's rank in [0, world_size).
        drop_last: drop the short last global batch instead of padding it.
        trim: cut the short last global batch to a multiple of ``world_size`` instead of
            padding it (``drop_last`` wins when both are set).
    """

    length: int
    batch_size: int
    world_size: int = 1
    rank: int = 0
    drop_last: bool = False
    trim: bool = False

    def __post_init__(self) -> None:
        # A frozen dataclass: normalised values (numpy ints become ints) go in via object.
        object.__setattr__(self, "length", check_int("length", self.length))
        object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size, low=1))
        object.__setattr__(self, "world_size", check_int("world_size", self.world_size, low=1))
        object.__setattr__(self, "rank", check_int("rank", self.rank, high=self.world_size))

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def end(self, start: int = 0) -> int:
        """The position at which an iteration begun at ``start`` stops delivering samples."""
        if self.drop_last:
            full = (self.length - start) // self.global_batch_size
            return start + full * self.global_batch_size
        if self.trim:
            return self.length - max(self.length - start, 0) % self.world_size
        return self.length

    def num_batches(self, start: int = 0) -> int:
        """How many batches each rank gets in an iteration begun at position ``start``."""
        remaining = max(self.length - start, 0)
        full, rest = divmod(remaining, self.global_batch_size)
        if self.trim:
            rest -= rest % self.world_size
        return full + (1 if rest and not self.drop_last else 0)

    def batches(self, start: int = 0) -> Iterator[RankBatch]:
        """This rank's batches, in order, for an iteration begun at epoch position ``start``."""
        wb = self.global_batch_size
        position = start
        while position < self.length:
            remaining = self.length - position
            if remaining >= wb:
                size, real = self.batch_size, wb
            elif self.drop_last:
                return
            elif self.trim:
                size = remaining // self.world_size
                if size == 0:
                    return
                real = size * self.world_size
            else:
                size, real = -(-remaining // self.world_size), remaining
            first = position + self.rank * size
            yield RankBatch(first, first + size, real)
            position += real
