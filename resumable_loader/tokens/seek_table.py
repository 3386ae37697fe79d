"""An epoch's shuffled document order and its seek table, built once per (seed, epoch) and process.

The order is the Feistel permutation of the documents keyed by (seed, epoch) under
``Purpose.DOCUMENT_ORDER``, computed for any slot directly; the seek table is where each slot's
document begins in the epoch's shuffled stream (documents + 1 int64 values), built in C++ with
the GIL released (``csrc/document_order.cc``: 0.2 s for 10^7 documents on the 2-core machine).
A window of that stream is then two binary searches and a fill of the slots it spans, so a
window at position 10^9 costs what one at 0 costs.

Where the table lives: in the memory of each process that reads windows of that epoch (each
worker builds its own, once per epoch, 8 bytes a document). Measured against a table written
to disk and memory-mapped by all workers: building is as fast as reading a cold 80 MB file, and
no file is left to go stale; see docs/tokens.md.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from resumable_loader import _core
from resumable_loader.order.permutation import Permutation
from resumable_loader.order.philox import Purpose, check_epoch, check_seed

# Tables kept per process: the epoch being read and the one before it (prefetching workers
# can straddle an epoch boundary).
TABLES_KEPT = 2


class SeekTable:
    """Epoch ``epoch``'s document order under ``seed`` and where each slot starts.

    Args:
        offsets: int64 document offsets of the unshuffled stream (documents + 1 values).
        seed, epoch: the order's key.

    Attributes:
        order: the permutation: slot j holds document ``order[j]``.
        starts: int64, ``starts[j]`` is the offset of slot j's document in the shuffled stream;
            ``starts[-1]`` the token count.
    """

    def __init__(self, offsets: np.ndarray, *, seed: int, epoch: int) -> None:
        self.seed, self.epoch = check_seed(seed), check_epoch(epoch)
        self.order = Permutation(
            len(offsets) - 1, seed=self.seed, epoch=self.epoch, purpose=Purpose.DOCUMENT_ORDER
        )
        self.starts = np.empty(len(offsets), dtype=np.int64)
        _core.build_seek_table(offsets, self.seed, self.epoch, self.starts)

    def documents(self, first: int, last: int) -> np.ndarray:
        """The documents (int64 ids) at slots [first, last)."""
        return self.order.fill(first, last)

    def __repr__(self) -> str:
        return f"SeekTable(documents={len(self.order)}, seed={self.seed}, epoch={self.epoch})"


class SeekTables:
    """The tables this process has built for a dataset, the ``TABLES_KEPT`` latest of them."""

    def __init__(self, offsets: np.ndarray) -> None:
        self.offsets = offsets
        self._tables: OrderedDict[tuple[int, int], SeekTable] = OrderedDict()

    def get(self, *, seed: int, epoch: int) -> SeekTable:
        """The table of (seed, epoch), built on first use."""
        key = (seed, epoch)
        table = self._tables.get(key)
        if table is None:
            table = SeekTable(self.offsets, seed=seed, epoch=epoch)
            self._tables[key] = table
            while len(self._tables) > TABLES_KEPT:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(key)
        return table

    def __repr__(self) -> str:
        return f"SeekTables(documents={len(self.offsets) - 1}, built={list(self._tables)})"
