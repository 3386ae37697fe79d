"""Read-ahead for tar shards: aligned blocks of each shard, kept per process in a byte-bounded LRU.

Why: without it every sample is its own storage request (an ``os.pread``, or one range request
for an fsspec URL). The shard-local shuffle reads each open shard nearly front to back, so
fetching whole aligned blocks serves the following samples from memory: a remote shard costs
one request per block instead of one per sample. Blocks are aligned, so a sample read out of
order (the shuffle buffer permutes neighbours) finds its block instead of fetching an
overlapping range again.

What it costs: a block stays useful until the last sample in it is delivered, and a sample can
wait in the shuffle buffer for several buffer lengths, so the cache must hold about 2 * window
blocks plus 4 times the buffered samples' bytes (measured; docs/shards.md); evicting earlier
re-fetches a block for a lingering sample. Under a global shuffle neighbouring samples are
not read together, so a block is fetched per sample: read-ahead then multiplies the bytes read
by about block size / sample size.
"""

from __future__ import annotations

from collections.abc import Callable

from resumable_loader._lru import LRU

Fetch = Callable[[int, int], bytes]  # (offset, count) -> up to count bytes of the shard


class BlockCache:
    """Aligned ``block_size`` blocks of shards, least recently used out once past ``capacity``.

    Args:
        block_size: bytes per block (> 0); a block is fetched whole.
        capacity: bytes of blocks kept; blocks of the current read are evicted last.
    """

    def __init__(self, block_size: int, capacity: int) -> None:
        self.block_size, self.capacity = block_size, capacity
        self._blocks: LRU[tuple[int, int], bytes] = LRU(capacity)

    def read(self, shard: int, start: int, length: int, fetch: Fetch) -> bytes:
        """The ``length`` bytes of ``shard`` at ``start`` (fewer past the shard's end).

        Blocks not cached are fetched, each run of consecutive missing blocks with one
        ``fetch(offset, count)`` call.
        """
        size = self.block_size
        first, last = start // size, (start + max(length, 1) - 1) // size
        pieces = []
        block = first
        while block <= last:
            cached = self._blocks.get((shard, block))
            if cached is not None:
                pieces.append(cached)
                block += 1
                continue
            end = block + 1
            while end <= last and (shard, end) not in self._blocks:
                end += 1
            data = fetch(block * size, (end - block) * size)
            for i in range(block, end):
                piece = data[(i - block) * size : (i - block + 1) * size]
                self._blocks.put((shard, i), piece)
                pieces.append(piece)
            block = end
        offset = start - first * size
        if len(pieces) == 1:
            return pieces[0][offset : offset + length]
        tail = start + length - last * size  # bytes wanted from the last block
        return b"".join([pieces[0][offset:], *pieces[1:-1], pieces[-1][:tail]])

    def clear(self) -> None:
        """Drop every block (the next reads fetch again)."""
        self._blocks.pop_all()
