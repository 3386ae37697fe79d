"""The staged load's prefaulter: it maps fresh memory from the back and stops where the reader is.

Residency is read with mincore(2) on fresh anonymous mappings, so each test sees exactly which
pages the prefaulter mapped; a staged load with the prefaulter unavailable or refused by the
kernel still reads every tensor.
"""

from __future__ import annotations

import ctypes
import mmap
import time

import pytest
import torch
from test_checkpoint_direct_read import blank, load, saved_tensors

from resumable_loader.checkpoint import integrity, prefault, staged_read
from resumable_loader.checkpoint.prefault import PAGE, STEP, Prefaulter

pytestmark = pytest.mark.skipif(
    prefault._MADVISE is None, reason="MADV_POPULATE_WRITE is Linux's (5.14+)"
)
MIB = 2**20


def fresh(length: int) -> tuple[mmap.mmap, int]:
    """An anonymous mapping of ``length`` bytes, none of its pages mapped yet, and its address."""
    memory = mmap.mmap(-1, length)
    return memory, ctypes.addressof(ctypes.c_char.from_buffer(memory))


def resident(address: int, length: int) -> list[bool]:
    """Per page of ``length`` bytes at ``address`` (page-aligned): whether it is mapped."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    pages = ctypes.create_string_buffer(length // PAGE)
    assert libc.mincore(address, length, pages) == 0, ctypes.get_errno()
    return [bool(byte & 1) for byte in pages.raw]


def test_it_maps_from_the_back_down_to_a_step_past_the_reader():
    memory, address = fresh(16 * MIB)
    assert not any(resident(address, 16 * MIB))
    prefaulter = Prefaulter([(0, address, 16 * MIB)])
    prefaulter.reached(8 * MIB)  # the reader fills [0, 8 MiB) and will fault the next step
    prefaulter.populate()
    pages = resident(address, 16 * MIB)
    meeting = (8 * MIB + STEP) // PAGE
    assert not any(pages[:meeting]) and all(pages[meeting:])
    memory.close()


def test_regions_are_mapped_in_the_readers_coordinates():
    """Two pieces of memory far apart, filled by one read at file offsets 0 and 4 MiB."""
    first, first_address = fresh(4 * MIB)
    second, second_address = fresh(4 * MIB)
    prefaulter = Prefaulter([(0, first_address, 4 * MIB), (4 * MIB, second_address, 4 * MIB)])
    prefaulter.reached(2 * MIB)
    prefaulter.populate()
    assert not any(resident(first_address, 4 * MIB))  # within a step of the reader
    assert all(resident(second_address, 4 * MIB))
    first.close()
    second.close()


def test_nothing_is_mapped_behind_the_reader():
    memory, address = fresh(8 * MIB)
    prefaulter = Prefaulter([(0, address, 8 * MIB)])
    prefaulter.reached(8 * MIB)  # the reader is done: nothing is left to map
    with prefaulter:
        pass
    assert not any(resident(address, 8 * MIB))
    memory.close()


def test_the_thread_maps_all_but_the_step_the_reader_begins_with():
    memory, address = fresh(32 * MIB)
    with Prefaulter([(0, address, 32 * MIB)]):
        deadline = time.monotonic() + 30
        while not all(resident(address + STEP, 32 * MIB - STEP)):
            assert time.monotonic() < deadline, "the prefaulter's thread mapped nothing"
            time.sleep(0.01)
    assert not any(resident(address, STEP))
    memory.close()


@pytest.mark.parametrize("madvise", [None, lambda address, length, advice: -1])
def test_a_staged_load_reads_everything_without_the_prefaulter(tmp_path, monkeypatch, madvise):
    """madvise missing (another OS, an older kernel) or refusing: the reader faults its pages."""
    monkeypatch.setattr(prefault, "_MADVISE", madvise)
    monkeypatch.setattr(prefault, "STEP", 4096)  # so that the small test state has steps
    saved = saved_tensors(tmp_path)
    files = {p.name: integrity.digest_file(p) for p in tmp_path.glob("*.distcp")}
    staged = blank(saved)
    load(tmp_path, staged, staged_read.StagingReader(tmp_path, files))
    for key, value in saved.items():
        assert torch.equal(staged[key], value), key


def test_a_staged_load_runs_the_prefaulter_over_its_fresh_tensors(tmp_path, monkeypatch):
    seen: list[list[tuple[int, int, int]]] = []
    real = Prefaulter.__init__

    def record(self: Prefaulter, regions: list[tuple[int, int, int]]) -> None:
        seen.append(regions)
        real(self, regions)

    monkeypatch.setattr(Prefaulter, "__init__", record)
    saved = saved_tensors(tmp_path)
    files = {p.name: integrity.digest_file(p) for p in tmp_path.glob("*.distcp")}
    staged = blank(saved)
    load(tmp_path, staged, staged_read.StagingReader(tmp_path, files))
    addresses = {address for regions in seen for _, address, _ in regions}
    assert {t.data_ptr() for t in staged.values() if t.numel()} <= addresses
    for regions in seen:  # one per file, in the order the file is read
        positions = [position for position, _, _ in regions]
        assert positions == sorted(positions)


def test_memory_mapped_already_is_left_alone(monkeypatch):
    """Memory an earlier load freed and the allocator handed out again: no madvise for it."""
    calls: list[int] = []
    real = prefault._MADVISE

    def counting(address: int, length: int, advice: int) -> int:
        calls.append(length)
        return real(address, length, advice)

    monkeypatch.setattr(prefault, "_MADVISE", counting)
    memory, address = fresh(8 * MIB)
    memory[4 * MIB :] = b"\1" * (4 * MIB)  # the back half mapped, the front half fresh
    prefaulter = Prefaulter([(0, address, 8 * MIB)])
    prefaulter.reached(-STEP)  # so that every step is the prefaulter's
    prefaulter.populate()
    assert calls == [STEP, STEP]  # the front half's two steps only
    assert all(resident(address, 8 * MIB))
    memory.close()
