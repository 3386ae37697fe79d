"""The buffers batches of packs are written into: shared memory in a worker, reused memory in
the main process.

A fresh buffer of a batch's size (~800 KB for 8 packs of 4096 tokens) is mapped anew by the
allocator, and writing it first costs page faults and the kernel's zeroing: ~50 us a batch here,
a quarter of all the work of a batch of packs (measured against writing a buffer used before).
So in the main process (num_workers=0) a few buffers are kept and reused once nothing refers to
them: every tensor viewing a buffer keeps a reference to its array, so a buffer whose only
references are the pool's is free. In a worker every batch gets fresh shared memory, as torch's
own collate allocates it: the main process maps those pages, so the worker may not reuse them.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import torch
from torch.utils.data import get_worker_info

KEPT = 4  # buffers kept (a loop holds a batch or two; more are allocated while it holds more)
GRAIN = 1 << 15  # words a buffer's size is rounded up to, so that the next batch fits it too
LARGEST = 1 << 22  # words (32 MiB): a larger batch's buffer is not kept (4 would hold 128 MiB)


class BufferPool:
    """Int64 buffers of the main process, each handed out again once nothing refers to it."""

    def __init__(self) -> None:
        self._kept: list[np.ndarray] = []
        self._lock = threading.Lock()  # two loaders' threads must not take one buffer

    def take(self, size: int) -> np.ndarray:
        """An int64 array of ``size`` words, its contents undefined."""
        with self._lock:
            for array in self._kept:
                # references: the list's, this loop's and getrefcount's argument; an array or
                # tensor viewing the buffer still in use adds its own (numpy views and
                # torch.from_numpy's tensors hold the array itself as their base)
                if len(array) >= size and sys.getrefcount(array) == 3:
                    return array[:size]
            if size > LARGEST:
                return np.empty(size, dtype=np.int64)
            array = np.empty(-(-size // GRAIN) * GRAIN, dtype=np.int64)
            self._kept = [array, *self._kept[: KEPT - 1]]
            return array[:size]


_POOL = BufferPool()


def batch_buffer(size: int) -> tuple[np.ndarray, torch.Tensor | None]:
    """An int64 buffer of ``size`` words for a batch of packs, and the tensor it views, if
    any: in a DataLoader worker, a tensor in shared memory from the start (sending it to the
    main process copies nothing); in the main process, an array of the pool of reused buffers
    (and None)."""
    if get_worker_info() is None:
        return _POOL.take(size), None
    storage = torch.UntypedStorage._new_shared(size * 8)
    shared = torch.empty(0, dtype=torch.int64).set_(storage)
    return shared.numpy(), shared
