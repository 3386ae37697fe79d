"""Faults in fresh memory on a second thread while a sequential read fills it from the front.

A staged load reads a checkpoint into memory the process has never touched (:mod:`staging`),
and the kernel maps it a page at a time, a fault per 4 KiB page on first write: on the VMs
this was measured on, getting 100 MiB costs more than reading it out of the page cache and
hashing it. :class:`Prefaulter` takes part of that work off the reading thread: given the
memory a read will fill, in the order it fills it, a thread asks the kernel to map it from the
back (``madvise(MADV_POPULATE_WRITE)``, Linux 5.14+, one call per :data:`STEP` bytes, the GIL
released), while the reader's own writes fault in the front; it stops where the two meet. The
contents are never touched (fresh memory holds nothing yet, and mapping a page that is
already mapped changes nothing), so a populate that is slow, unsupported (another OS, an older
kernel) or refused only leaves the reader to fault its pages itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Callable

PAGE = 4096
STEP = 2 << 20  # bytes mapped per madvise call: the granularity at which the two threads meet
MADV_POPULATE_WRITE = 23  # linux/mman.h, since 5.14


def _libc(name: str, *argtypes: type) -> Callable[..., int] | None:
    """libc's function ``name`` (Linux only: MADV_POPULATE_WRITE is Linux's), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


_MADVISE = _libc("madvise", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_MINCORE = _libc("mincore", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)


def _mapped(address: int, length: int) -> bool:
    """Whether every page of ``length`` bytes at ``address`` (page-aligned) is mapped already
    (memory a load before this one freed and the allocator handed out again): then there is
    nothing to do, and asking the kernel to map it would still walk every page."""
    pages = ctypes.create_string_buffer(length // PAGE)
    if _MINCORE is None or _MINCORE(address, length, pages) != 0:
        return False
    return 0 not in pages.raw


class Prefaulter:
    """Maps ``regions`` ahead of a reader that fills them front to back.

    Args:
        regions: (position, address, length) of each piece of memory the read fills, with
            ``position`` the read's own coordinate (e.g. the file offset that lands at
            ``address``), increasing.

    Use as a context manager around the read, calling :meth:`reached` with the position the
    reader has got to; on exit the thread is stopped (it finishes at most one :data:`STEP`).
    """

    def __init__(self, regions: list[tuple[int, int, int]]) -> None:
        self._steps = [
            (position + offset, address + offset, min(STEP, length - offset))
            for position, address, length in regions
            for offset in range(0, length, STEP)
        ]
        self._reader = -1  # position the reader has got to
        self._stop = False
        self._thread: threading.Thread | None = None

    def reached(self, position: int) -> None:
        """Say that the reader has filled (or is filling) everything before ``position``."""
        self._reader = position

    def __enter__(self) -> Prefaulter:
        if _MADVISE is not None and sum(length for _, _, length in self._steps) >= 2 * STEP:
            self._thread = threading.Thread(target=self.populate, name="prefault", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join()

    def populate(self) -> None:
        """Map the steps from the last one back, down to the first that begins a whole step past
        the reader (what the thread runs; callable directly to map synchronously)."""
        for position, address, length in reversed(self._steps):
            if self._stop or position < self._reader + STEP:
                return
            start = -(-address // PAGE) * PAGE  # whole pages only: the rest the reader faults
            end = (address + length) // PAGE * PAGE
            if end <= start or _mapped(start, end - start):
                continue
            if _MADVISE(start, end - start, MADV_POPULATE_WRITE) != 0:
                return  # unsupported or refused: the reader faults the pages itself
