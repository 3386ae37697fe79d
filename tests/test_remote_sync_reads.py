"""Tar shards read from s3:// without the prefetcher (``prefetch=False``: synchronous read-ahead
blocks per process, or a read per sample) go through the package's storage client as the
prefetching path does: its storage_options, its retries under the deadline (no draw from the
global RNGs), and its typed errors naming the URL and the sample."""

from __future__ import annotations

import threading
from pathlib import Path

import fsspec
import pytest
from augmented_tar import Augmented
from s3_server import QUICK_RETRIES as QUICK
from s3_server import indexed_bucket, s3_client, upload_dir

from resumable_loader import DataLoader, ShardShuffle
from resumable_loader.errors import StorageError
from resumable_loader.index.sharded import ShardedIndex

BLOCK = 64 * 1024
ORDER = ShardShuffle(window=2, buffer_size=32)


@pytest.fixture(scope="module")
def bucket(s3_server, tmp_path_factory):
    """Three shards of 60 samples, local and in a bucket, with the bucket's index."""
    return indexed_bucket(s3_server, tmp_path_factory.mktemp("sync"), 3, 60)


@pytest.fixture
def endpoint(fault_proxy, s3_env, monkeypatch):
    """The environment names the fault proxy (in front of the session's server); fsspec's
    cached filesystems, made with another endpoint, are forgotten."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)
    fsspec.get_filesystem_class("s3").clear_instance_cache()
    return fault_proxy


def stream(dataset, *, workers: int = 0) -> list[tuple]:
    loader = DataLoader(
        dataset,
        batch_size=8,
        shuffle=True,
        num_workers=workers,
        seed=5,
        collate_fn=list,
        shard_shuffle=ORDER,
    )
    return [sample for batch in loader for sample in batch]


def synchronous(index, read_ahead: int = BLOCK, **storage_options) -> Augmented:
    return Augmented(
        index, read_ahead=read_ahead, prefetch=False, storage_options=storage_options or None
    )


@pytest.mark.parametrize(
    ("client", "read_ahead", "workers"),
    [("obstore", BLOCK, 0), ("obstore", 0, 2), ("fsspec", BLOCK, 0)],
    ids=["obstore-blocks", "obstore-per-sample-workers", "fsspec-blocks"],
)
def test_storage_options_name_the_endpoint(
    bucket, endpoint, s3_server, client, read_ahead, workers
):
    paths, index = bucket
    expected = stream(Augmented(paths))
    dataset = synchronous(index, read_ahead, endpoint_url=s3_server, client=client)
    assert stream(dataset, workers=workers) == expected
    assert endpoint.count() == 0  # nothing read from the environment's endpoint


@pytest.mark.parametrize("workers", [0, 2])
def test_transient_faults_leave_the_stream_unchanged(bucket, endpoint, workers):
    """Dropped, cut and stalled requests are retried by the client, whose backoff draws from
    its own generator: ids, bytes and the draws of the three global RNGs equal the local ones
    (botocore's retries drew their jitter from the global ``random``)."""
    paths, index = bucket
    expected = stream(Augmented(paths))
    endpoint.drop_next(2)
    endpoint.drop_next(2, after_bytes=1000)
    endpoint.stall_next(1, seconds=1.0)
    dataset = synchronous(index, **QUICK | {"deadline": 10.0})
    assert stream(dataset, workers=workers) == expected


def test_a_permanent_stall_raises_within_the_deadline(bucket, endpoint):
    _, index = bucket
    dataset = synchronous(index, **QUICK)
    endpoint.outage(mode="stall")
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            stream(dataset)
        except BaseException as error:  # handed to the test's thread
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)  # the deadline is 1.5 s: 30 s is a hang
    assert not reader.is_alive(), "a stalled server hung the read past the deadline"
    (error,) = outcome
    assert isinstance(error, StorageError) and error.transient
    assert error.url in index.shard_urls and error.sample is not None
    assert f"(sample {error.sample})" in str(error) and "deadline" in str(error)


def test_a_missing_object_raises_a_storage_error_naming_it(bucket, s3_server, endpoint, tmp_path):
    paths, _ = bucket
    root = upload_dir(s3_server, Path(paths[0]).parent, "*.tar")  # a bucket of this test's
    index = ShardedIndex.for_shards(f"{root}/shard-{{0000..0002}}.tar", cache_dir=tmp_path)
    gone = index.shard_urls[1]
    bucket_name, key = gone[len("s3://") :].split("/", 1)
    s3_client(s3_server).delete_object(Bucket=bucket_name, Key=key)
    with pytest.raises(StorageError) as caught:
        stream(synchronous(index, **QUICK))
    error = caught.value
    assert error.url == gone and not error.transient and error.attempts == 1
    assert str(error).startswith(f"{gone} bytes [") and f"(sample {error.sample})" in str(error)
    assert index.shard_offsets[1] <= error.sample < index.shard_offsets[2]
