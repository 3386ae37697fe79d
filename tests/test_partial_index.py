"""A remote index held in part (``index_rows="on_demand"``): the shard list at first, then the
records of each shard when a read first needs it, on a real S3 server behind our proxy; the
streams equal those of the whole local index, in both order modes, resumed across workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from augmented_tar import Augmented
from fault_proxy import FaultProxy
from s3_server import make_bucket
from shard_factory import write_tar_shards
from test_remote_stream import stream

from resumable_loader import ShardShuffle, TarShardDataset
from resumable_loader.errors import ConfigError, SampleIndexError
from resumable_loader.index.remote import remote_index_url
from resumable_loader.index.sharded import ShardedIndex
from resumable_loader.storage.reader import Prefetch

SHARDS, PER_SHARD = 8, 40
ORDERS = {"global": None, "shard_local": ShardShuffle(window=2, buffer_size=32)}


@pytest.fixture
def shards(tmp_path: Path) -> list[str]:
    return write_tar_shards(tmp_path / "local", num_shards=SHARDS, samples_per_shard=PER_SHARD)


@pytest.fixture
def urls(shards, fault_proxy: FaultProxy, s3_server: str, s3_env, monkeypatch, tmp_path):
    """The shards in a fresh bucket with their whole index published beside them (built by
    a first node), reached through the proxy; the proxy's counts start after that."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)
    prefix = make_bucket(s3_server, {Path(p).name: Path(p) for p in shards}, prefix="train")
    urls = [f"{prefix}/{Path(p).name}" for p in shards]
    ShardedIndex.for_shards(urls, cache_dir=tmp_path / "first-node")
    fault_proxy.reset_stats()
    return urls


@pytest.fixture(autouse=True)
def fresh_fsspec_clients():
    """fsspec keeps its s3 filesystems per process, each with the endpoint it was made for:
    each test here has its own proxy (endpoint)."""
    import fsspec

    yield
    fsspec.get_filesystem_class("s3").clear_instance_cache()


def index_reads(proxy: FaultProxy) -> int:
    return proxy.count("GET", ".rlindex")


def loaded(index: ShardedIndex) -> list[int]:
    return np.flatnonzero(index.partial.flags).tolist()


def test_a_node_fetches_the_shard_list_then_only_the_shards_it_reads(
    urls, shards, fault_proxy: FaultProxy, tmp_path
) -> None:
    index = ShardedIndex.for_shards(urls, cache_dir=tmp_path / "node", index_rows="on_demand")
    whole = ShardedIndex.for_shards(shards)
    assert index.partial is not None and loaded(index) == []
    assert index_reads(fault_proxy) == 2  # the fixed prefix, then the header: no records
    assert index.fingerprint == whole.fingerprint and index.num_samples == SHARDS * PER_SHARD
    assert "partial" in index.header and index.path.name.endswith(".partial.rlindex")

    dataset = TarShardDataset(index, prefetch=False)
    local = TarShardDataset(shards)
    third = 3 * PER_SHARD + 7
    assert dataset[third] == {**local[third], "__url__": urls[3]}
    assert loaded(index) == [3]
    assert index_reads(fault_proxy) == 2 + 2  # the shard's records and checksums
    batch = [5 * PER_SHARD, 3 * PER_SHARD + 1, 6 * PER_SHARD + 2]
    assert [s["bin"] for s in dataset.__getitems__(batch)] == [local[i]["bin"] for i in batch]
    assert loaded(index) == [3, 5, 6]
    rows = slice(5 * PER_SHARD, 7 * PER_SHARD)
    np.testing.assert_array_equal(index.records[rows], whole.records[rows])
    np.testing.assert_array_equal(index.checksums[rows], whole.checksums[rows])
    assert dataset[-1]["bin"] == local[-1]["bin"] and loaded(index) == [3, 5, 6, 7]
    ranges = [r.range for r in fault_proxy.requests if ".rlindex" in r.path and r.method == "GET"]
    asked = sum(int(b) - int(a) + 1 for a, b in (r.split("=")[1].split("-") for r in ranges))
    assert asked < 0.75 * whole.path.stat().st_size  # the header and 4 shards' rows, ranged


def test_the_rows_fetched_stay_for_the_next_process_of_the_node(
    urls, fault_proxy: FaultProxy, tmp_path
) -> None:
    node = tmp_path / "node"
    first = ShardedIndex.for_shards(urls, cache_dir=node, index_rows="on_demand")
    first.ensure_shards([0, 1])
    fault_proxy.reset_stats()
    again = ShardedIndex.for_shards(urls, cache_dir=node, index_rows="on_demand")
    assert loaded(again) == [0, 1] and index_reads(fault_proxy) == 0
    again.ensure_rows(np.arange(2 * PER_SHARD))  # shards 0 and 1: here already
    assert index_reads(fault_proxy) == 0
    again.ensure_rows([2 * PER_SHARD])
    assert index_reads(fault_proxy) == 2 and loaded(first) == [0, 1, 2]  # one file, shared


def test_a_rank_fetching_the_header_too_never_replaces_the_copy_another_one_maps(
    urls, tmp_path
) -> None:
    # two ranks of a fresh node both found no partial copy and fetched one: the later rename
    # replaced the file the first had mapped, whose rows then went to a file it did not read
    # ("no tar header at offset 0 ... the shard changed")
    from resumable_loader.index.partial import fetch_partial

    first = ShardedIndex.for_shards(urls, cache_dir=tmp_path / "node", index_rows="on_demand")
    inode = first.path.stat().st_ino
    assert fetch_partial(remote_index_url(urls), first.path)  # the other rank, a moment later
    assert first.path.stat().st_ino == inode
    first.ensure_shards([2])
    again = ShardedIndex.for_shards(urls, cache_dir=tmp_path / "node", index_rows="on_demand")
    assert loaded(again) == [2]  # one file: the rows the first rank fetched are read there


def test_rows_of_an_index_republished_since_the_header_are_refused(
    urls, s3_server: str, tmp_path
) -> None:
    """A node holds the header; shard 0 is rewritten with fewer samples and another node
    republishes the index under the same name: the first node's row reads are conditional on
    the ETag it read the header under, so they fail (rows of the new index would put other
    samples at its ids) and its copy is dropped; a new run fetches the new header."""
    node = tmp_path / "node"
    held = ShardedIndex.for_shards(urls, cache_dir=node, index_rows="on_demand")
    fewer = write_tar_shards(tmp_path / "fewer", num_shards=1, samples_per_shard=PER_SHARD // 2)
    bucket, prefix = urls[0][len("s3://") :].split("/")[:2]
    make_bucket(
        s3_server, {"shard-0000.tar": Path(fewer[0])}, bucket=bucket, prefix=prefix, create=False
    )
    ShardedIndex.for_shards(urls, cache_dir=tmp_path / "other-node")  # rebuilt, republished
    with pytest.raises(SampleIndexError, match="index was replaced in storage"):
        held.ensure_shards([2])
    assert not held.path.exists()
    again = ShardedIndex.for_shards(urls, cache_dir=node, index_rows="on_demand")
    assert again.num_samples == SHARDS * PER_SHARD - PER_SHARD // 2
    dataset = TarShardDataset(again, prefetch=False)
    assert dataset[PER_SHARD // 2]["__key__"] == f"sample{PER_SHARD:06d}"  # shard 1's first


def test_a_whole_local_copy_is_used_rather_than_a_partial_one(urls, tmp_path) -> None:
    node = tmp_path / "node"
    ShardedIndex.for_shards(urls, cache_dir=node)
    index = ShardedIndex.for_shards(urls, cache_dir=node, index_rows="on_demand")
    assert index.partial is None


def test_without_an_index_in_storage_the_shards_are_indexed_whole(
    urls, s3_server: str, tmp_path
) -> None:
    from s3_server import s3_client

    bucket, key = remote_index_url(urls)[len("s3://") :].split("/", 1)
    s3_client(s3_server).delete_object(Bucket=bucket, Key=key)
    index = ShardedIndex.for_shards(urls, cache_dir=tmp_path / "node", index_rows="on_demand")
    assert index.partial is None and index.num_samples == SHARDS * PER_SHARD


def test_index_rows_is_checked(urls, tmp_path) -> None:
    with pytest.raises(ConfigError, match="index_rows must be one of"):
        TarShardDataset(urls, cache_dir=tmp_path, index_rows="some")


def on_demand(urls, node: Path) -> Augmented:
    prefetch = Prefetch(cache_dir=node / "blocks", wait_seconds=10.0)
    return Augmented(
        urls, cache_dir=node, index_rows="on_demand", read_ahead=16384, prefetch=prefetch
    )


@pytest.mark.parametrize("order", ORDERS, ids=list(ORDERS))
@pytest.mark.parametrize("workers", [0, 2])
def test_an_on_demand_stream_equals_the_local_one(shards, urls, tmp_path, order, workers):
    expected, _, _ = stream(Augmented(shards), workers=0, order=ORDERS[order])
    got, _, _ = stream(on_demand(urls, tmp_path / "node"), workers=workers, order=ORDERS[order])
    assert got == expected


def test_an_on_demand_resume_across_workers_and_batch_size(shards, urls, tmp_path) -> None:
    order = ORDERS["shard_local"]
    expected, _, _ = stream(Augmented(shards), workers=0, order=order)
    head, state, _ = stream(
        on_demand(urls, tmp_path / "a"), workers=2, order=order, stop=lambda n: n == 9
    )
    tail, _, _ = stream(
        on_demand(urls, tmp_path / "b"), workers=0, order=order, batch_size=12, state=state
    )
    assert head + tail == expected


def test_a_shard_local_start_reads_the_records_of_the_shards_it_opens_only(
    shards, urls, tmp_path
) -> None:
    """Without look-ahead, the first batches of a shard-local order over 8 shards (2 open at a
    time) need the records of the shards those batches come from, and nothing else."""
    dataset = Augmented(urls, cache_dir=tmp_path / "node", index_rows="on_demand", prefetch=False)
    samples, _, _ = stream(dataset, workers=0, order=ORDERS["shard_local"], stop=lambda n: n == 0)
    opened = sorted({sample_id // PER_SHARD for sample_id, *_ in samples})
    assert loaded(dataset.index) == opened and len(opened) < SHARDS
