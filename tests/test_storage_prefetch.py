"""Look-ahead prefetch and the node cache, on local shards read through the storage path
(``prefetch=True``): the stream never changes, each block is fetched once a node, Belady
eviction beats LRU, counters add up, and a killed process leaves nothing that blocks a rerun."""

from __future__ import annotations

import functools
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from augmented_tar import Augmented
from shard_factory import write_tar_shards
from torch.utils.data import Dataset
from torchrun_harness import rank_pickles, torchrun

from resumable_loader import DataLoader, ShardShuffle, TarShardDataset
from resumable_loader.errors import ConfigError
from resumable_loader.loader.lookahead import NodeSchedule
from resumable_loader.order.partition import Partition
from resumable_loader.order.permutation import ShuffledOrder
from resumable_loader.storage.block_states import BlockStates
from resumable_loader.storage.node_cache import NodeCache
from resumable_loader.storage.plan import (
    BlockPieces,
    coalesce,
    code_key,
    fit_live,
    key_code,
    peak_held,
)
from resumable_loader.storage.reader import Prefetch, shards_identity

BLOCK = 16384  # a few samples a block, so that blocks are shared and spans straddle them
ORDERS = {"global": None, "shard_local": ShardShuffle(window=2, buffer_size=48)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_tar_shards(tmp_path_factory.mktemp("shards"), num_shards=6, samples_per_shard=80)


def dataset_bytes(paths: list[str]) -> int:
    return sum(os.path.getsize(p) for p in paths)


def load(dataset, *, workers: int, batch_size: int = 16, order=None, state=None, batches=None):
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        seed=7,
        collate_fn=list,
        shard_shuffle=order,
    )
    if state is not None:
        loader.load_state_dict(state)
    stream, iterator = [], iter(loader)
    for count, batch in enumerate(iterator):
        stream += batch
        if batches is not None and count + 1 == batches:
            return stream, loader.state_dict(), loader
    return stream, None, loader


def prefetching(paths, cache: Path, **options) -> Augmented:
    cache_bytes = options.pop("cache_bytes", 64 * 2**20)
    read_ahead = options.pop("read_ahead", BLOCK)
    options.setdefault("wait_seconds", 10.0)  # each block once, even on a loaded machine
    return Augmented(
        paths,
        read_ahead=read_ahead,
        cache_bytes=cache_bytes,
        prefetch=Prefetch(cache_dir=cache, **options),
    )


@pytest.mark.parametrize("order", ORDERS, ids=list(ORDERS))
@pytest.mark.parametrize("workers", [0, 2])
def test_a_prefetched_stream_equals_the_local_one(shards, tmp_path, order, workers):
    expected, _, _ = load(Augmented(shards), workers=0, order=ORDERS[order])
    got, _, loader = load(prefetching(shards, tmp_path), workers=workers, order=ORDERS[order])
    assert got == expected
    stats = loader.storage_stats()
    assert stats.reads == len(expected) and stats.requests > 0
    # every block once per node (the data fits the cache), whichever process read it
    assert stats.bytes_fetched <= 1.05 * dataset_bytes(shards)


@pytest.mark.parametrize("order", ORDERS, ids=list(ORDERS))
def test_a_resume_across_workers_and_batch_size_continues_the_stream(shards, tmp_path, order):
    expected, _, _ = load(Augmented(shards), workers=0, order=ORDERS[order])
    head, state, _ = load(
        prefetching(shards, tmp_path / "a"), workers=2, order=ORDERS[order], batches=11
    )
    dataset = prefetching(shards, tmp_path / "b")
    tail, _, loader = load(dataset, workers=0, batch_size=8, order=ORDERS[order], state=state)
    assert head + tail == expected
    # the resumed run fetched only blocks the rest of the epoch reads
    rest = {sample[0] for sample in tail}
    needed = _blocks_of(dataset, rest)
    assert loader.storage_stats().bytes_fetched <= len(needed) * BLOCK


def test_a_resume_into_a_warm_node_cache_fetches_nothing(shards, tmp_path):
    """What the plan would fetch for the rest of the epoch, the node cache already holds: it
    is read there."""
    expected, _, _ = load(Augmented(shards), workers=0)
    _, state, _ = load(prefetching(shards, tmp_path), workers=2, batches=15)
    tail, _, loader = load(prefetching(shards, tmp_path), workers=0, state=state)
    assert tail == expected[16 * 15 :]
    stats = loader.storage_stats()
    assert stats.bytes_fetched == 0 and stats.cache_hits == stats.reads == len(tail)


def test_a_resume_half_way_fetches_blocks_not_a_request_a_sample(shards, tmp_path):
    """Half way through a global shuffle the rest of the epoch reads about half of each block,
    in many spans: their requests would cost more than the unread half, so blocks are fetched
    whole (the exact spans only with ``request_bytes=0``, a request a sample)."""
    expected, _, _ = load(Augmented(shards), workers=0)
    _, state, _ = load(prefetching(shards, tmp_path / "head"), workers=2, batches=15)
    requests = {}
    for cost in (256 * 2**10, 0):
        dataset = prefetching(shards, tmp_path / str(cost), request_bytes=cost)
        tail, _, loader = load(dataset, workers=0, state=state)
        assert tail == expected[16 * 15 :]
        stats = loader.storage_stats()
        requests[cost] = stats.requests
        if cost:
            assert stats.bytes_fetched <= 1.05 * dataset_bytes(shards)
    blocks = len(_blocks_of(Augmented(shards), set(range(len(expected)))))
    assert requests[256 * 2**10] <= blocks < requests[0]  # 89, 90 and 148 here
    with pytest.raises(ConfigError, match="request_bytes"):
        Prefetch(request_bytes=-1)
    with pytest.raises(ConfigError, match="eviction must be 'belady' or 'lru', got 'fifo'"):
        Prefetch(eviction="fifo")  # when it is built, not at the first read


def test_a_shard_local_order_reads_whole_blocks_from_a_cache_smaller_than_the_data(
    shards, tmp_path, caplog
):
    """A shard-local order reads each block over a short stretch of the epoch: a cache of two
    thirds of the data holds the blocks read together, so nearly every block is one request
    (counting every block a window touches as held at once, this took 264 requests). A cache
    too small for what an order reads together warns once, with the size to set."""
    order = ORDERS["shard_local"]
    expected, _, _ = load(Augmented(shards), workers=0, order=order)
    blocks = len(_blocks_of(Augmented(shards), set(range(len(expected)))))
    dataset = prefetching(shards, tmp_path / "two-thirds", cache_bytes=64 * BLOCK)
    got, _, loader = load(dataset, workers=0, order=order)
    assert got == expected
    stats = loader.storage_stats()
    assert stats.requests <= 1.5 * blocks  # 105 for 90 blocks here (264 before)
    assert stats.bytes_fetched <= 1.05 * dataset_bytes(shards)
    assert "cache_bytes >=" not in caplog.text
    # a cache too small for the blocks read together: spans, and one warning saying the size
    dataset = prefetching(shards, tmp_path / "small", cache_bytes=8 * BLOCK)
    got, _, loader = load(dataset, workers=0, order=order)
    assert got == expected
    warnings = [r.getMessage() for r in caplog.records if "cache_bytes >=" in r.getMessage()]
    assert len(warnings) == 1 and f"node cache (cache_bytes={8 * BLOCK})" in warnings[0]
    # a global shuffle reads every block all epoch long: with that cache, spans and the warning
    caplog.clear()
    expected, _, _ = load(Augmented(shards), workers=0)
    got, _, _ = load(prefetching(shards, tmp_path / "global", cache_bytes=8 * BLOCK), workers=0)
    assert got == expected
    assert sum("cache_bytes >=" in r.getMessage() for r in caplog.records) == 1


def test_a_global_shuffle_reads_whole_blocks_from_a_cache_that_holds_the_data(shards, tmp_path):
    """With every shard in the cache nothing is ever evicted, so all of it holds whole blocks
    (with half of it, as when the data does not fit, this read half the samples as spans)."""
    expected, _, _ = load(Augmented(shards), workers=0)
    blocks = len(_blocks_of(Augmented(shards), set(range(len(expected)))))
    size = dataset_bytes(shards)
    got, _, loader = load(prefetching(shards, tmp_path, cache_bytes=size), workers=0)
    assert got == expected
    stats = loader.storage_stats()
    assert stats.requests <= blocks and stats.bytes_fetched <= 1.05 * size


def test_blocks_held_at_different_times_share_the_cache():
    sizes = np.array([10, 10, 10, 10])
    first, last = np.array([0, 10, 20, 0]), np.array([9, 19, 29, 29])
    # one after another: 10 bytes held at a time, though the three sum to 30
    assert fit_live(np.array([0, 1, 2]), first, last, sizes, budget=10).tolist() == [0, 1, 2]
    assert peak_held(first[:3], last[:3], sizes[:3]) == 10
    # block 3 is held throughout, beside one of the others at each moment
    assert fit_live(np.array([3, 1, 0, 2]), first, last, sizes, budget=20).tolist() == [3, 1, 0, 2]
    assert peak_held(first, last, sizes) == 20
    # room for one block at a time: the best first, then those held at other times
    assert fit_live(np.array([3, 1, 0, 2]), first, last, sizes, budget=15).tolist() == [3]
    assert fit_live(np.array([1, 3, 0, 2]), first, last, sizes, budget=15).tolist() == [1, 0, 2]
    assert fit_live(np.array([], dtype=np.int64), first, last, sizes, budget=0).size == 0


def test_a_refused_prefetch_argument_leaves_a_dataset_that_closes_cleanly(shards):
    with pytest.raises(ConfigError, match="prefetch must be a Prefetch"):
        TarShardDataset(shards, prefetch="yes")
    gc.collect()  # the half-built dataset's __del__: an error there fails the test (unraisable)


def test_depth_in_batches_bounds_how_far_ahead_fetches_start(shards, tmp_path):
    expected, _, _ = load(Augmented(shards), workers=0)
    depth = {}
    for batches in (1, None):
        dataset = prefetching(shards, tmp_path / str(batches), cache_bytes=0, depth_batches=batches)
        got, _, loader = load(dataset, workers=0)
        assert got == expected
        depth[batches] = loader.storage_stats().prefetch_depth_bytes
    largest = int(Augmented(shards).index.spans[:, 1].max())
    assert depth[1] <= 2 * 16 * largest < depth[None]  # the batch after this one, at most
    with pytest.raises(ConfigError, match="depth_batches"):
        Prefetch(depth_batches=0)


def _blocks_of(dataset: TarShardDataset, ids: set[int]) -> set[tuple[int, int]]:
    index = dataset.index
    blocks = set()
    for sample_id in ids:
        shard = int(np.searchsorted(index.shard_offsets, sample_id, side="right")) - 1
        start, length = index.spans[sample_id].tolist()
        blocks.update((shard, b) for b in range(start // BLOCK, (start + length - 1) // BLOCK + 1))
    return blocks


def test_without_a_cache_each_process_fetches_its_own_spans_once(shards, tmp_path):
    expected, _, _ = load(Augmented(shards), workers=0)
    dataset = prefetching(shards, tmp_path, cache_bytes=0)
    got, _, loader = load(dataset, workers=2)
    assert got == expected
    stats = loader.storage_stats()
    spans = int(dataset.index.spans[:, 1].sum())
    assert spans <= stats.bytes_fetched <= 1.05 * spans  # exact spans, merged when adjacent
    assert stats.requests < len(expected)
    folder = tmp_path / f"{shards_identity(dataset.index)}-{BLOCK}" / "blocks"
    assert not list(folder.glob("*.blk"))


def test_belady_eviction_fetches_fewer_bytes_than_lru(shards, tmp_path):
    """Which blocks a cache holds when the next one lands depends on how far the fetches are
    ahead of the reads, which varies run to run (one run of each policy: 2.10-2.26 MB with
    Belady, 2.15-2.41 MB with LRU at half the blocks; a run of each crossed under load). So:
    a quarter of the blocks (Belady's lead ~0.13 MB a run, the spread ~0.1 MB) and 3 runs."""
    fetched = {"belady": 0, "lru": 0}
    for run in range(3):
        for policy in fetched:
            dataset = prefetching(
                shards,
                tmp_path / f"{policy}-{run}",
                cache_bytes=24 * BLOCK,  # a quarter of the blocks
                eviction=policy,
                block_fraction=0.0,
                depth_bytes=4 * BLOCK,
            )
            _, _, loader = load(dataset, workers=0)
            fetched[policy] += loader.storage_stats().bytes_fetched
    assert fetched["belady"] < fetched["lru"], fetched


def test_the_schedule_lists_the_batches_each_worker_loads(shards):
    dataset = Augmented(shards)
    loader = DataLoader(dataset, batch_size=16, shuffle=True, num_workers=3, seed=7)
    order, partition = loader.order, loader.partition
    expected = [
        batch.tolist() for batch in np.split(order.ids(0, 0, len(order)), range(16, 480, 16))
    ]
    for worker in range(3):
        schedule = NodeSchedule(
            order, partition, epoch=0, start=0, num_workers=3, worker=worker, node_ranks=[0]
        )
        planned = []
        while (batch := schedule.pull()) is not None:
            planned.append((batch.ids.tolist(), batch.mine))
        assert [ids for ids, _ in planned] == expected
        assert [ids for ids, mine in planned if mine] == expected[worker::3]


def test_a_node_schedule_covers_every_rank_of_the_node():
    order = ShuffledOrder(100, seed=3)
    partition = Partition(100, 8, world_size=2, rank=1)
    schedule = NodeSchedule(
        order, partition, epoch=0, start=0, num_workers=1, worker=0, node_ranks=[0, 1]
    )
    batches = []
    while (batch := schedule.pull()) is not None:
        batches.append(batch)
    positions = [p for b in batches for p in range(b.position, b.position + len(b.ids))]
    assert positions[:96] == list(range(96))  # then the padded last global batch
    assert [b.mine for b in batches] == [False, True] * 7  # rank 1's half of each


def test_spans_are_merged_within_the_gap_and_blocks_count_straddling_spans():
    spans = [(0, 0, 10, 5), (0, 12, 5, 5), (0, 100, 4, 5), (1, 0, 3, 5), (0, 2, 3, 5)]
    spans += [(0, 0, 10, 5), (0, 104, 3, 9)]  # listed twice; another use is another request
    shards, starts, lengths, uses = (np.array(c) for c in zip(*spans, strict=True))
    reads = coalesce(shards, starts, lengths, uses, gap=4)
    assert [(r.shard, r.start, r.length, r.first_use) for r in reads] == [
        (0, 0, 17, 5),
        (0, 100, 4, 5),
        (1, 0, 3, 5),
        (0, 104, 3, 9),
    ]
    assert reads[0].members == ((0, 10), (2, 3), (12, 5))  # inside a span: reach is its end
    pieces = BlockPieces.of(np.array([0, 0]), np.array([10, 30]), np.array([30, 5]), 32)
    keys = [code_key(code) for code in pieces.code.tolist()]
    assert list(zip(pieces.span.tolist(), keys, pieces.used.tolist(), strict=True)) == [
        (0, (0, 0), 22),
        (0, (0, 1), 8),
        (1, (0, 0), 2),
        (1, (0, 1), 3),
    ]
    assert pieces.all_in(np.array([key_code(0, 0)]), 2).tolist() == [False, False]
    assert pieces.all_in(np.sort(pieces.code), 2).tolist() == [True, True]


def test_the_node_cache_evicts_the_block_used_furthest_ahead(tmp_path):
    cache = NodeCache(tmp_path, 3000, BlockStates(tmp_path, [16, 256], 1000))
    uses = {(0, 0): 5, (0, 1): 50, (0, 2): 1}
    cache.next_use = lambda key: uses.get(key, float("inf"))
    for key in uses:
        assert cache.put(key, bytes(1000))
    cache.put((0, 3), bytes(1000))  # over capacity: the furthest next uses go
    kept = {key for key in [*uses, (0, 3)] if key in cache}
    assert (0, 2) in kept and (0, 0) in kept and (0, 1) not in kept
    assert cache.read((0, 2), 10, 5) == bytes(5)
    # a reader missing a block tells "evicted" (fetch now) from "not fetched yet" (wait)
    assert not cache.never_held((0, 1)) and cache.never_held((0, 9))
    assert (0, 1) not in cache and (0, 2) in cache
    # ... in any process of the node: the states are one shared file
    other = NodeCache(tmp_path, 3000, BlockStates(tmp_path, [16, 256], 1000))
    assert not other.never_held((0, 1)) and other.never_held((1, 5))
    other.put((1, 5), bytes(1000))
    assert not cache.never_held((1, 5))
    # and one whose fetch another process has started is waited for, not fetched again
    assert not cache.fetching((0, 1), within=10.0)
    other.mark_fetching((0, 1))
    assert cache.fetching((0, 1), within=10.0) and not cache.fetching((0, 1), within=0.0)
    other.unmark_fetching((0, 1))
    assert not cache.fetching((0, 1), within=10.0)
    for block in range(10, 200):  # a cache far smaller than the data: no file per eviction
        cache.put((1, block), bytes(1000))
    assert len(list(tmp_path.iterdir())) <= 2 + 3  # the states, the blocks kept


def test_a_dead_writers_temp_file_is_removed_and_blocks_nothing(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    temp = tmp_path / f".tmp-{int(dead.stdout)}-abc"
    temp.write_bytes(b"half a block")
    NodeCache(tmp_path, 1000, BlockStates(tmp_path, [1], 1000))
    assert not temp.exists()
    # a writer killed but not yet reaped (a zombie, as a SIGKILLed loader's workers are for a
    # while) is dead too; a live writer's temp file stays
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        time.sleep(0.01)
    temps = [tmp_path / f".tmp-{pid}-abc" for pid in (zombie.pid, os.getpid())]
    for path in temps:
        path.write_bytes(b"half a block")
    NodeCache(tmp_path, 1000, BlockStates(tmp_path, [1], 1000))
    zombie.wait()
    assert [path.exists() for path in temps] == [False, True]


@pytest.mark.slow
def test_a_sigkill_during_prefetch_leaves_nothing_that_blocks_the_next_run(shards, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from test_storage_prefetch import prefetching, load
            dataset = prefetching({shards!r}, {str(tmp_path / "cache")!r})
            for batch in iter(__import__("resumable_loader").DataLoader(
                    dataset, batch_size=16, shuffle=True, num_workers=2, seed=7)):
                print("batch", flush=True)
                time.sleep(30)
            """
        )
    )
    job = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert job.stdout.readline().strip() == "batch"
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        job.stdout.close()
    began = time.monotonic()
    expected, _, _ = load(Augmented(shards), workers=0)
    got, _, _ = load(prefetching(shards, tmp_path / "cache"), workers=2)
    assert got == expected
    assert time.monotonic() - began < 30
    folder = tmp_path / "cache" / f"{shards_identity(Augmented(shards).index)}-{BLOCK}" / "blocks"
    assert folder.is_dir() and not list(folder.glob(".tmp-*"))


def test_storage_stats_count_a_loop_that_broke_off_once_its_workers_stopped(shards, tmp_path):
    # workers publish their counters after batches, at most every half second: a loop that
    # broke off mid-epoch was left with the few published first (32 reads of 320)
    loader = DataLoader(
        prefetching(shards, tmp_path), batch_size=16, shuffle=True, num_workers=2, seed=7
    )
    iterator = iter(loader)
    for _ in range(20):
        next(iterator)
    del iterator  # its workers stop (and exit)
    gc.collect()
    stats = loader.storage_stats()
    assert stats.reads >= 20 * 16 and stats.bytes_fetched > 0


@pytest.mark.parametrize("workers", [0, 2])
def test_storage_stats_report_each_epoch(shards, tmp_path, caplog, workers):
    dataset = prefetching(shards, tmp_path)
    loader = DataLoader(dataset, batch_size=16, shuffle=True, num_workers=workers, seed=7)
    for number in range(2):  # the second epoch's own counters, not what the first left
        with caplog.at_level("INFO", logger="resumable_loader"):
            for _ in loader:
                pass
        epoch = loader.epoch_storage_stats
        assert epoch is not None and epoch.reads == 480
        assert 0 < epoch.hit_rate <= 1 and epoch.loop_wait_seconds > 0
        assert any("storage, last epoch" in record.message for record in caplog.records)
        assert loader.storage_stats().reads == 480 * (number + 1)
        if number == 0:
            assert epoch.bytes_fetched > 0
    assert DataLoader(Augmented(shards), batch_size=4).storage_stats() is None


class Wrapped(Dataset):
    """A user's dataset around a prefetching one (here: the sample as a list); with
    ``forward``, it passes on what the loader's look-ahead asks of a dataset that prefetches."""

    def __init__(self, inner: Augmented, *, forward: bool) -> None:
        self.inner = inner
        if forward:
            self.prefetching = inner.prefetching
            self.plan_reads = inner.plan_reads
            self.storage_stats = inner.storage_stats

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, sample_id: int) -> list:
        return list(self.inner[sample_id])


def test_a_wrapper_that_forwards_the_look_ahead_is_prefetched(shards, tmp_path):
    """docs/remote.md: the loader plans for the dataset it is given; a wrapper gets the plan
    by forwarding ``prefetching``, ``plan_reads`` and ``storage_stats``, else its reads fetch
    each block as it is first read."""
    expected, _, _ = load(Augmented(shards), workers=0)
    got, _, loader = load(Wrapped(prefetching(shards, tmp_path / "a"), forward=True), workers=2)
    assert [tuple(sample) for sample in got] == expected
    stats = loader.storage_stats()
    assert stats.reads == 480 and stats.fetched_reads == 0  # every read was planned ahead
    _, _, plain = load(Wrapped(prefetching(shards, tmp_path / "b"), forward=False), workers=0)
    assert plain.storage_stats() is None
    assert plain.dataset.inner.storage_stats().fetched_reads > 0  # read, then fetched


@pytest.mark.slow
def test_two_ranks_share_the_node_cache_and_resume_on_one(shards, tmp_path):
    expected, _, _ = load(Augmented(shards), workers=0)
    job = Path(__file__).parent / "prefetch_torchrun_job.py"
    listing = tmp_path / "shards.json"
    listing.write_text(json.dumps(shards))
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    common = ["--num-workers", "2"]
    torchrun(
        job,
        2,
        listing,
        tmp_path / "cache",
        first,
        "--batch-size",
        "8",
        "--stop-after",
        "10",
        *common,
    )
    ranks = rank_pickles(first, 2)
    head = [s for step in zip(*(r["batches"] for r in ranks), strict=True) for b in step for s in b]
    # the two ranks' workers fetched each block of the data once for the node
    assert sum(r["bytes"] for r in ranks) <= 1.05 * dataset_bytes(shards)
    torchrun(
        job,
        1,
        listing,
        tmp_path / "cache-2",
        second,
        "--batch-size",
        "16",
        "--state",
        first / "state.pt",
        *common,
    )
    tail = [s for b in rank_pickles(second, 1)[0]["batches"] for s in b]
    assert head + tail == expected


def test_the_first_batches_reads_are_issued_alone_first(shards, tmp_path):
    """At an iteration's start only the node's first two rounds of batches are fetched (a
    server sharing its bandwidth among the whole look-ahead would serve them last); the rest
    of the depth from the next batch on."""
    loader = DataLoader(
        prefetching(shards, tmp_path), batch_size=16, shuffle=True, seed=7, collate_fn=list
    )
    iterator = iter(loader)
    next(iterator)
    opening = loader.storage_stats().prefetch_depth_bytes
    largest = int(Augmented(shards).index.spans[:, 1].max())
    assert 0 < opening <= 2 * 16 * largest + BLOCK  # two batches ahead, and a block's length
    for _ in iterator:
        pass
    assert loader.storage_stats().prefetch_depth_bytes > 4 * opening


def test_runs_with_another_block_size_never_read_each_others_blocks(shards, tmp_path):
    """Block n of 4 KiB blocks holds other bytes than block n of 16 KiB ones: a run with
    another read_ahead on the same cache_dir read the first run's blocks at the wrong offsets
    (the folder was named by the shards alone)."""
    expected, _, _ = load(Augmented(shards), workers=0)
    for read_ahead in (BLOCK, BLOCK // 4, BLOCK):
        got, _, _ = load(prefetching(shards, tmp_path, read_ahead=read_ahead), workers=0)
        assert got == expected, read_ahead


def test_datasets_sharing_a_cache_dir_never_read_each_others_blocks(tmp_path):
    """One Prefetch(cache_dir=...) for two datasets whose shards have the same names, sizes
    and block layout (train and valid), and for shards rewritten in place between runs: each
    reads its own bytes (blocks were once named by shard number only, in the folder given)."""
    write = functools.partial(write_tar_shards, num_shards=2, samples_per_shard=40)
    train, valid = (
        write(tmp_path / "train", key_prefix="train"),
        write(tmp_path / "valid", key_prefix="valid"),
    )
    assert [os.path.getsize(p) for p in train] == [os.path.getsize(p) for p in valid]
    for paths in (train, valid):
        got, _, _ = load(prefetching(paths, tmp_path / "cache"), workers=0)
        assert got == load(Augmented(paths), workers=0)[0]
    write(tmp_path / "train", key_prefix="tRain")  # the same sizes, other bytes
    for path in train:
        os.utime(path, (time.time() + 5, time.time() + 5))
    got, _, _ = load(prefetching(train, tmp_path / "cache"), workers=0)
    assert {sample[1][:5] for sample in got} == {"tRain"}


def test_a_dataset_dropped_without_close_leaves_no_fetch_threads(shards, tmp_path):
    """A loader built per epoch (or per evaluation) over a prefetching dataset: each one's
    fetch threads and block files go when it is collected, not at exit."""
    import threading

    def fetch_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("resumable-fetch")}

    for number in range(3):
        before = fetch_threads()
        dataset = prefetching(shards, tmp_path / f"cache{number}")
        load(dataset, workers=0, batches=2)
        own = fetch_threads() - before
        assert own  # it fetched on threads of its own
        del dataset
        deadline = time.monotonic() + 10
        while any(t.is_alive() for t in own) and time.monotonic() < deadline:
            gc.collect()  # once the fetches it queued are done, nothing holds the dataset
            time.sleep(0.05)  # and each thread ends once it sees the pool shut down
        assert not any(t.is_alive() for t in own)
