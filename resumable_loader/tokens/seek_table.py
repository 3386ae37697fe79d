"""An epoch's shuffled document order and its seek table, built once per (seed, epoch) and process.

The order is the Feistel permutation of the documents keyed by (seed, epoch) under
``Purpose.DOCUMENT_ORDER``, computed for any slot directly; the seek table is where each slot's
document begins in the epoch's shuffled stream (documents + 1 int64 values), built in C++ with
the GIL released (``csrc/document_order.cc``: 0.17-0.5 s for 10^7 documents on the 2-core
machine). A window of that stream is then two binary searches and a fill of the slots it spans,
so a window at position 10^9 costs what one at 0 costs.

Where the table lives: by default in the memory of each process that reads windows of that
epoch (each worker builds its own, once per epoch: 0.17-0.5 s and 80 MB for 10^7 documents).
With a cache directory, the first process to need a table writes it there (atomically) and
every process memory-maps it, so workers share one copy in the page cache and a restart reads
it (measured: a warm 80 MB table maps in ~2 ms). Files are named by the dataset's fingerprint
and a digest of its document offsets, so a table is read only by a corpus of the same
document lengths; a file that does not fit is rebuilt.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import xxhash

from resumable_loader import _core
from resumable_loader.index.atomic import atomic_write
from resumable_loader.order.permutation import PERMUTATION_ALGORITHM, Permutation
from resumable_loader.order.philox import Purpose, check_epoch, check_seed

# Tables kept per process: the epoch being read and the one before it (prefetching workers
# can straddle an epoch boundary).
TABLES_KEPT = 2


class SeekTable:
    """Epoch ``epoch``'s document order under ``seed`` and where each slot starts.

    Args:
        offsets: int64 document offsets of the unshuffled stream (documents + 1 values).
        seed, epoch: the order's key.
        cache: a file to read the table from (memory-mapped) when it holds it, else to write
            it to (atomically) once built; None keeps it in this process only.

    Attributes:
        order: the permutation: slot j holds document ``order[j]``.
        starts: int64, ``starts[j]`` is the offset of slot j's document in the shuffled stream;
            ``starts[-1]`` the token count.
    """

    def __init__(
        self, offsets: np.ndarray, *, seed: int, epoch: int, cache: str | None = None
    ) -> None:
        self.seed, self.epoch = check_seed(seed), check_epoch(epoch)
        self.order = Permutation(
            len(offsets) - 1, seed=self.seed, epoch=self.epoch, purpose=Purpose.DOCUMENT_ORDER
        )
        starts = _read(cache, offsets) if cache is not None else None
        if starts is None:
            starts = np.empty(len(offsets), dtype=np.int64)
            _core.build_seek_table(offsets, self.seed, self.epoch, starts)
            if cache is not None:
                with atomic_write(cache) as f:
                    np.save(f, starts)
        self.starts = starts

    def documents(self, first: int, last: int) -> np.ndarray:
        """The documents (int64 ids) at slots [first, last)."""
        return self.order.fill(first, last)

    def __repr__(self) -> str:
        return f"SeekTable(documents={len(self.order)}, seed={self.seed}, epoch={self.epoch})"


def _read(path: str, offsets: np.ndarray) -> np.ndarray | None:
    """The table in ``path`` if it is one for these offsets (else None: it is rebuilt)."""
    try:
        starts = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    fits = starts.dtype == np.int64 and starts.shape == offsets.shape
    return starts if fits and starts[0] == 0 and starts[-1] == offsets[-1] else None


class SeekTables:
    """The tables this process has built for a dataset, the ``TABLES_KEPT`` latest of them.

    Args:
        offsets: the dataset's document offsets.
        cache_dir: where to keep tables as files shared by every process (None: in memory).
        name: what names this dataset's files there (its fingerprint).
    """

    def __init__(
        self, offsets: np.ndarray, *, cache_dir: str | os.PathLike | None, name: str
    ) -> None:
        self.offsets = offsets
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        # The dataset's fingerprint counts documents and tokens, not their lengths: the
        # offsets' digest names the file too, so a corpus of other lengths (a shard rewritten
        # to the same size, another folder's files of the same names) never reads this one's.
        digest = "" if cache_dir is None else xxhash.xxh3_64_hexdigest(offsets)
        self.name = f"{name}.{digest}" if digest else name
        self._tables: OrderedDict[tuple[int, int], SeekTable] = OrderedDict()

    def get(self, *, seed: int, epoch: int) -> SeekTable:
        """The table of (seed, epoch), built (or read from the cache directory) on first use."""
        key = (seed, epoch)
        table = self._tables.get(key)
        if table is None:
            table = SeekTable(self.offsets, seed=seed, epoch=epoch, cache=self.path(seed, epoch))
            self._tables[key] = table
            while len(self._tables) > TABLES_KEPT:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(key)
        return table

    def path(self, seed: int, epoch: int) -> str | None:
        """The cache file of (seed, epoch), named by the dataset, its document offsets and the
        order's algorithm."""
        if self.cache_dir is None:
            return None
        name = f"{self.name}.{PERMUTATION_ALGORITHM}.seed-{seed}.epoch-{epoch}.seek.npy"
        return os.path.join(self.cache_dir, name)

    def __repr__(self) -> str:
        return (
            f"SeekTables(documents={len(self.offsets) - 1}, cache_dir={self.cache_dir!r}, "
            f"built={list(self._tables)})"
        )
