"""The index of s3:// shards on a real S3 server: equal to the local index of the same files,
kept in the bucket (beside the shards, or at a given URL) and fetched (not rebuilt) by later
runs, rebuilt when a shard's ETag changes, built by torchrun ranks that split the shards, and
published by the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fault_proxy import FaultProxy
from s3_server import make_bucket, s3_client
from shard_factory import write_parquet_shards, write_tar_shards
from torchrun_harness import rank_pickles, torchrun

from resumable_loader import cli
from resumable_loader.errors import ConfigError
from resumable_loader.index.remote import remote_index_url
from resumable_loader.index.sharded import ShardedIndex
from resumable_loader.sources import ParquetDataset, TarShardDataset

SHARDS = 8  # paths.LISTED: the shards' stats come from one listing


def shard_reads(proxy: FaultProxy) -> int:
    """GET requests for shard files (not for the index named after the first shard)."""
    return sum(r.method == "GET" and r.path.endswith(".tar") for r in proxy.requests)


@pytest.fixture
def shards(tmp_path: Path) -> list[str]:
    return write_tar_shards(tmp_path / "local", num_shards=SHARDS, samples_per_shard=20)


@pytest.fixture
def urls(shards, fault_proxy: FaultProxy, s3_server: str, s3_env, monkeypatch) -> list[str]:
    """The shards in a fresh bucket, reached through the proxy by the environment's endpoint."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)
    prefix = make_bucket(s3_server, {Path(p).name: Path(p) for p in shards}, prefix="train")
    return [f"{prefix}/{Path(p).name}" for p in shards]


def test_the_index_of_s3_shards_equals_the_local_index(shards, urls, tmp_path) -> None:
    local = ShardedIndex.for_shards(shards)
    remote = ShardedIndex.for_shards(urls, cache_dir=tmp_path / "cache")
    assert remote.shard_urls == urls
    assert remote.fingerprint == local.fingerprint  # names, sizes and counts: not the place
    np.testing.assert_array_equal(remote.records, local.records)
    np.testing.assert_array_equal(remote.checksums, local.checksums)
    assert remote.fields == local.fields and remote.num_samples == SHARDS * 20
    stamps = [entry["mtime"] for entry in remote.header["shards"]]
    assert all(isinstance(s, str) and s.startswith('"') for s in stamps)  # ETags


def test_a_second_run_fetches_the_index_instead_of_scanning(
    urls, fault_proxy: FaultProxy, tmp_path, s3_server: str
) -> None:
    first = ShardedIndex.for_shards(urls, cache_dir=tmp_path / "node-1")
    assert shard_reads(fault_proxy) >= SHARDS  # scanned every shard
    bucket, key = remote_index_url(urls)[len("s3://") :].split("/", 1)
    s3_client(s3_server).head_object(Bucket=bucket, Key=key)  # published beside the shards
    fault_proxy.reset_stats()
    second = ShardedIndex.for_shards(urls, cache_dir=tmp_path / "node-2")  # another node
    assert shard_reads(fault_proxy) == 0  # no shard read
    assert fault_proxy.count("GET", ".rlindex") >= 1  # the index fetched
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.records, first.records)
    fault_proxy.reset_stats()
    ShardedIndex.for_shards(urls, cache_dir=tmp_path / "node-2")  # its local copy, checked
    assert shard_reads(fault_proxy) == fault_proxy.count("GET", ".rlindex") == 0
    assert fault_proxy.count("HEAD") == 0 and fault_proxy.count("GET") == 1  # one listing


def test_a_glob_of_the_shards_leaves_out_the_index_published_beside_them(urls, tmp_path) -> None:
    """The published ``shard-0000.tar.<hash>.rlindex`` matches ``shard-*``: a later run (a new
    listing) refused the mix of .tar and .rlindex before globs left index files out."""
    import s3fs

    first = ShardedIndex.for_shards(urls, cache_dir=tmp_path / "node-1")  # and published
    s3fs.S3FileSystem.clear_instance_cache()  # a new process's listing, not the cached one
    pattern = urls[0].rsplit("/", 1)[0] + "/shard-*"
    later = ShardedIndex.for_shards(pattern, cache_dir=tmp_path / "node-2")
    assert later.shard_urls == urls and later.fingerprint == first.fingerprint


def test_a_changed_shard_is_rescanned_and_republished(
    urls, shards, fault_proxy: FaultProxy, tmp_path, s3_server: str
) -> None:
    ShardedIndex.for_shards(urls, cache_dir=tmp_path / "node-1")
    bucket, key = urls[2][len("s3://") :].split("/", 1)
    damaged = bytearray(Path(shards[2]).read_bytes())
    damaged[600] ^= 1  # same size, another payload byte: only the ETag tells
    s3_client(s3_server).put_object(Bucket=bucket, Key=key, Body=bytes(damaged))
    fault_proxy.reset_stats()
    index = ShardedIndex.for_shards(urls, cache_dir=tmp_path / "node-2")
    assert shard_reads(fault_proxy) >= SHARDS  # the fetched index was stale: rebuilt
    assert fault_proxy.count("PUT", ".rlindex") == 1  # and published again
    assert (
        index.header["shards"][2]["mtime"]
        != ShardedIndex.for_shards(shards).header["shards"][2]["mtime"]
    )


@pytest.mark.slow
def test_torchrun_ranks_split_the_shards(urls, fault_proxy: FaultProxy, tmp_path, s3_env) -> None:
    job = Path(__file__).parent / "remote_index_job.py"
    torchrun(job, 2, tmp_path, *urls, AWS_ENDPOINT_URL=fault_proxy.endpoint, **s3_env)
    first, second = rank_pickles(tmp_path, 2)
    assert first["scanned"] == sorted(urls[0::2]) and second["scanned"] == sorted(urls[1::2])
    assert first["fingerprint"] == second["fingerprint"] and first["digest"] == second["digest"]
    assert fault_proxy.count("PUT", ".rlindex") == 1  # rank 0 published it
    # the shards are listed by rank 0 for the job: the build's listing was every rank's (5 in
    # all, and a rank whose listing failed left the others waiting in the collective scan)
    assert sum("list-type" in r.path for r in fault_proxy.requests) == 4


def test_the_index_never_starts_obstore_in_the_main_process(urls, tmp_path, monkeypatch) -> None:
    """obstore does not survive a fork: scanning and fetching go through fsspec, so the
    DataLoader workers the main process forks afterwards can read through obstore."""
    from resumable_loader.storage.client import ObstoreClient

    def refused(*args, **kwargs):
        raise AssertionError("the index read through obstore")

    monkeypatch.setattr(ObstoreClient, "_store", refused)
    ShardedIndex.for_shards(urls, cache_dir=tmp_path / "node-1")  # built
    ShardedIndex.for_shards(urls, cache_dir=tmp_path / "node-2")  # fetched


def bucket_of(url: str) -> str:
    """``s3://bucket`` of an object URL."""
    return "s3://" + url[len("s3://") :].split("/", 1)[0]


def exists(s3_server: str, url: str) -> bool:
    bucket, key = url[len("s3://") :].split("/", 1)
    listed = s3_client(s3_server).list_objects_v2(Bucket=bucket, Prefix=key)
    return any(entry["Key"] == key for entry in listed.get("Contents", []))


@pytest.fixture
def parquet_urls(tmp_path: Path, fault_proxy: FaultProxy, s3_server: str, s3_env, monkeypatch):
    """Three Parquet files in a fresh bucket, reached through the proxy."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)
    paths = write_parquet_shards(tmp_path / "parquet", num_shards=3, rows_per_shard=10)
    prefix = make_bucket(s3_server, {Path(p).name: Path(p) for p in paths}, prefix="rows")
    return [f"{prefix}/{Path(p).name}" for p in paths]


@pytest.mark.parametrize("source", ["tar", "parquet"])
def test_a_dataset_keeps_its_index_at_index_url(
    request, source, fault_proxy: FaultProxy, tmp_path, s3_server: str
) -> None:
    """The index of the shards is written at ``index_url`` (not beside the shards) by the first
    run, and fetched from there, not rebuilt, by a run on another node."""
    dataset_type = TarShardDataset if source == "tar" else ParquetDataset
    urls = request.getfixturevalue("urls" if source == "tar" else "parquet_urls")
    index_url = f"{bucket_of(urls[0])}/indexes/{source}.rlindex"
    first = dataset_type(urls, cache_dir=tmp_path / "node-1", index_url=index_url)
    assert exists(s3_server, index_url) and not exists(s3_server, remote_index_url(urls))
    fault_proxy.reset_stats()
    second = dataset_type(urls, cache_dir=tmp_path / "node-2", index_url=index_url)
    assert fault_proxy.count("GET", f"/indexes/{source}.rlindex") >= 1  # fetched
    names = {url.rsplit("/", 1)[1] for url in urls}
    scans = [r for r in fault_proxy.requests if r.path.rsplit("/", 1)[1] in names]
    assert {r.method for r in scans} <= {"HEAD"}  # each shard stat-ed, none read
    assert second.fingerprint == first.fingerprint and len(second) == len(first)
    assert second[len(second) - 1] == first[len(first) - 1]


def test_index_url_is_refused_where_it_means_nothing(shards, tmp_path) -> None:
    with pytest.raises(ConfigError, match="local file"):
        TarShardDataset(shards, index_url="s3://bucket/index.rlindex")
    index = ShardedIndex.for_shards(shards)
    with pytest.raises(ConfigError, match="given an index"):
        TarShardDataset(index, index_url="s3://bucket/index.rlindex")


def test_the_cli_publishes_an_index_that_datasets_fetch(
    urls, fault_proxy: FaultProxy, tmp_path, s3_server: str, capsys
) -> None:
    """``resumable-loader index --publish`` writes the index beside the shards and
    ``--index-url URL`` at URL; datasets of the same shards then fetch it instead of scanning."""
    out = str(tmp_path / "built.rlindex")
    assert cli.main(["index", *urls, "--quiet", "--out", out, "--publish"]) == 0
    assert f"published it to {remote_index_url(urls)}" in capsys.readouterr().out
    fault_proxy.reset_stats()
    ShardedIndex.for_shards(urls, cache_dir=tmp_path / "node-1")
    assert shard_reads(fault_proxy) == 0 and fault_proxy.count("GET", ".rlindex") >= 1

    index_url = f"{bucket_of(urls[0])}/elsewhere/train.rlindex"
    assert cli.main(["index", *urls, "--quiet", "--out", out, "--index-url", index_url]) == 0
    fault_proxy.reset_stats()
    TarShardDataset(urls, cache_dir=tmp_path / "node-2", index_url=index_url)
    assert shard_reads(fault_proxy) == 0
    assert fault_proxy.count("GET", "/elsewhere/train.rlindex") >= 1


def test_the_cli_fails_loudly_when_it_cannot_publish(urls, shards, tmp_path, capsys) -> None:
    out = str(tmp_path / "built.rlindex")
    missing = "s3://no-such-bucket-for-rl/train.rlindex"
    assert cli.main(["index", *urls, "--quiet", "--out", out, "--index-url", missing]) == 2
    error = capsys.readouterr().err
    assert missing in error and "refused" in error  # the StorageError: URL, reason, fix
    assert cli.main(["index", *shards, "--quiet", "--publish"]) == 2
    assert "is a local file" in capsys.readouterr().err
    assert cli.main(["index", *urls, "--quiet", "--out", out, "--index-url", "/tmp/x"]) == 2
    assert "not a URL" in capsys.readouterr().err
