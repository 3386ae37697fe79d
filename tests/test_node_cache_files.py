"""The node cache keeps the block files it reads open, as many as the process's descriptor limit
allows: a global shuffle reads every block of the data in turn, and a bound below the blocks
held would reopen a block for most reads."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest

from resumable_loader.storage import node_cache
from resumable_loader.storage.block_states import BlockStates
from resumable_loader.storage.node_cache import NodeCache, open_blocks_bound


@pytest.mark.parametrize(
    ("soft", "bound"),
    [(1024, 64), (20000, 1024), (4096, 256), (256, 64), (resource.RLIM_INFINITY, 1024)],
)
def test_the_open_files_bound_is_a_sixteenth_of_the_descriptor_limit(
    monkeypatch: pytest.MonkeyPatch, soft: int, bound: int
) -> None:
    monkeypatch.setattr(node_cache.resource, "getrlimit", lambda _: (soft, soft))
    assert open_blocks_bound() == bound


def test_reading_every_block_in_turn_opens_each_block_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_cache.resource, "getrlimit", lambda _: (4096, 4096))  # 256 open
    blocks = [(shard, block) for shard in range(4) for block in range(25)]  # 100 > the old 64
    cache = NodeCache(tmp_path / "blocks", 10**6, BlockStates(tmp_path, [25] * 4, 1000))
    for number, key in enumerate(blocks):
        assert cache.put(key, bytes([number]) * 1000)
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: os.PathLike | str, flags: int, *args: int) -> int:
        opened.append(os.fspath(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(node_cache.os, "open", counting_open)
    for _ in range(3):  # a global shuffle's epochs: every block, in turn
        for number, key in enumerate(blocks):
            assert cache.read(key, 10, 2) == bytes([number]) * 2
    cache.close()
    assert len(opened) == len(blocks) == len(set(opened))


def test_processes_sharing_a_folder_keep_it_within_its_bound(tmp_path: Path) -> None:
    """Four processes' caches of one folder put blocks in turn: each sees the others' writes
    (in the file system's used bytes) before it passes the bound. Counting its own writes
    only, each added up to 0.9x the bound before it looked: the folder reached 3.6x."""
    block = 1000
    states = BlockStates(tmp_path, [400], block)
    caches = [NodeCache(tmp_path / "blocks", 10 * block, states) for _ in range(4)]
    peak = 0
    for number in range(200):
        assert caches[number % 4].put((0, number), bytes(block))
        held = sum(path.stat().st_size for path in (tmp_path / "blocks").glob("*.blk"))
        peak = max(peak, held)
    assert peak <= 10 * block
