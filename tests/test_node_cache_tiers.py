"""The node cache's disk tier (``Prefetch(disk_dir=..., disk_bytes=...)``): blocks evicted from
the first tier go to the disk instead of away, reads and lookups see both tiers, the disk keeps
to its own bound by the same policy, and a dataset that fits the two tiers is fetched once a
node while the stream stays the local one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from augmented_tar import Augmented
from shard_factory import write_tar_shards

from resumable_loader import DataLoader
from resumable_loader.errors import ConfigError
from resumable_loader.storage.block_states import GONE, HELD, BlockStates
from resumable_loader.storage.node_cache import NodeCache
from resumable_loader.storage.reader import Prefetch

BLOCK = 16384


def test_an_evicted_block_moves_to_the_disk_tier_and_is_read_there(tmp_path: Path) -> None:
    states = BlockStates(tmp_path, [16], 1000)
    disk = NodeCache(tmp_path / "disk", 3000, states)
    cache = NodeCache(tmp_path / "memory", 3000, states, spill=disk)
    uses = {(0, 0): 5, (0, 1): 50, (0, 2): 1, (0, 3): 7}
    cache.next_use = lambda key: uses.get(key, float("inf"))
    for number, key in enumerate(uses):
        assert cache.put(key, bytes([number]) * 1000)
    # over the first tier's bound: the block used furthest ahead went to the disk tier
    assert not (tmp_path / "memory" / "0-1.blk").exists()
    assert (tmp_path / "disk" / "0-1.blk").exists()
    assert (0, 1) in cache
    assert cache.read((0, 1), 10, 3) == bytes([1]) * 3
    assert cache.read((0, 3), 0, 2) == bytes([3]) * 2  # still in the first tier


def test_the_disk_tier_keeps_to_its_own_bound_by_the_same_policy(tmp_path: Path) -> None:
    states = BlockStates(tmp_path, [0, 16], 1000)
    disk = NodeCache(tmp_path / "disk", 4000, states)
    cache = NodeCache(tmp_path / "memory", 2000, states, spill=disk)
    uses = {(1, block): block for block in range(12)}  # block b is next used at b
    cache.next_use = lambda key: uses.get(key, float("inf"))
    for key in uses:
        assert cache.put(key, bytes(1000))
    held = {key for key in uses if key in cache}
    blocks = sum(f.stat().st_size for f in (tmp_path / "disk").glob("*.blk"))
    assert blocks <= 4000
    assert (1, 0) in held and (1, 1) in held  # used soonest: kept on disk
    gone = [key for key in uses if key not in held]
    assert gone and min(gone)[1] > 3  # what went was used later than anything the disk kept
    assert all(states.get(key) == GONE for key in gone)  # dropped from every tier
    assert all(states.get(key) == HELD for key in held)
    cache.put(gone[0], bytes(1000))  # published again
    assert states.get(gone[0]) == HELD


def test_disk_dir_and_disk_bytes_go_together(shards) -> None:
    with pytest.raises(ConfigError, match="disk_dir"):
        Prefetch(disk_dir="/tmp/somewhere")
    with pytest.raises(ConfigError, match="disk_bytes"):
        Prefetch(disk_bytes=2**30)
    tier = Prefetch(disk_dir="/tmp/somewhere", disk_bytes=2**30)
    with pytest.raises(ConfigError, match="cache_bytes=0 keeps no blocks"):
        Augmented(shards, cache_bytes=0, prefetch=tier)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_tar_shards(tmp_path_factory.mktemp("shards"), num_shards=6, samples_per_shard=80)


def epoch(dataset, workers: int) -> tuple[list, int | None]:
    loader = DataLoader(
        dataset, batch_size=16, shuffle=True, num_workers=workers, seed=3, collate_fn=list
    )
    stream = [sample for batch in loader for sample in batch]
    stats = loader.storage_stats()  # None: the dataset reads without the storage path
    return stream, None if stats is None else stats.bytes_fetched


def tiered(shards, node: Path, disk: bool, **options) -> Augmented:
    """A quarter of the data fits the first tier; with ``disk``, all of it the disk tier."""
    data = sum(os.path.getsize(p) for p in shards)
    if disk:
        options.update(disk_dir=node / "disk", disk_bytes=2 * data)
    prefetch = Prefetch(cache_dir=node / "memory", wait_seconds=10.0, **options)
    return Augmented(shards, read_ahead=BLOCK, cache_bytes=data // 4, prefetch=prefetch)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("block_fraction", [0.0, None], ids=["whole blocks", "default"])
def test_a_dataset_that_fits_the_two_tiers_is_fetched_once_a_node(
    shards, tmp_path, workers, block_fraction
):
    # by default the reader chose spans: its plan counted the first tier only, so the data
    # did not fit, nothing was kept, and the disk tier stayed empty
    options = {} if block_fraction is None else {"block_fraction": block_fraction}
    expected, _ = epoch(Augmented(shards), workers=0)
    data = sum(os.path.getsize(p) for p in shards)
    fetched = {}
    for disk in (False, True):
        node = tmp_path / str(disk)
        first, fetched[disk, 1] = epoch(tiered(shards, node, disk, **options), workers)
        again, fetched[disk, 2] = epoch(tiered(shards, node, disk, **options), workers)
        assert first == again == expected
    assert fetched[True, 1] <= 1.05 * data  # no block fetched twice
    assert fetched[True, 2] == 0 < fetched[False, 2]
    if block_fraction == 0.0:  # whole blocks through the first tier alone: fetched again
        assert data < fetched[False, 1]


def test_a_cache_far_smaller_than_the_data_never_waits_out_a_block(shards, tmp_path):
    """Two workers over a quarter-size cache, one tier: blocks are evicted and fetched again
    all the time. A reader missing a block waits only while another process is bringing it
    (before the block states, a block evicted and not fetched again by its owner was waited
    for the whole ``wait_seconds``, 14 times an epoch here)."""
    expected, _ = epoch(Augmented(shards), workers=0)
    data = sum(os.path.getsize(p) for p in shards)
    wait = 60.0
    prefetch = Prefetch(cache_dir=tmp_path, block_fraction=0.0, wait_seconds=wait)
    dataset = Augmented(shards, read_ahead=BLOCK, cache_bytes=data // 4, prefetch=prefetch)
    loader = DataLoader(
        dataset, batch_size=16, shuffle=True, num_workers=2, seed=3, collate_fn=list
    )
    assert [sample for batch in loader for sample in batch] == expected
    assert loader.storage_stats().read_wait_seconds < wait  # no read waited it out
