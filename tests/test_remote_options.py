"""storage_options against a real S3 server: they alone (no AWS_* variables) serve the index's
build, fetch and check, under their deadline; missing credentials fail at once saying where to
give them; s3fs takes the documented names of either scheme; a read conditional on the ETag the
index recorded refuses a shard changed since."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest
from s3_server import CREDENTIALS, s3_client, upload_dir
from shard_factory import write_parquet_shards, write_tar_shards

from resumable_loader import DataLoader, ParquetDataset, TarShardDataset
from resumable_loader.errors import ConfigError, SampleIndexError, ShardError, StorageError
from resumable_loader.index.sharded import ShardedIndex
from resumable_loader.sources._indexed import IndexedDataset
from resumable_loader.storage import client as client_module
from resumable_loader.storage.client import client_for

QUICK = {"deadline": 5.0, "request_timeout": 2.0}


class _TarIndex(IndexedDataset):
    """The index part of a tar dataset: what IndexedDataset does with storage_options."""

    format = "tar"


@pytest.fixture
def no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No endpoint or credentials anywhere botocore looks but storage_options."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def shards(s3_server: str, tmp_path: Path) -> str:
    """A brace pattern of 2 tar shards of 5 samples in a fresh bucket."""
    write_tar_shards(tmp_path / "shards", num_shards=2, samples_per_shard=5)
    return f"{upload_dir(s3_server, tmp_path / 'shards', '*.tar')}/shard-{{0000..0001}}.tar"


def given_options(endpoint: str) -> dict:
    """The endpoint and credentials as storage_options, fsspec's names (none in the environment)."""
    return {
        "endpoint_url": endpoint,
        "key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region": "us-east-1",
        **QUICK,
    }


@pytest.mark.usefixtures("no_aws_environment")
def test_the_index_is_built_fetched_and_checked_with_storage_options(
    s3_server: str, shards: str, tmp_path: Path
) -> None:
    options = given_options(s3_server)
    began = time.monotonic()
    built = _TarIndex(shards, cache_dir=tmp_path / "a", storage_options=options)  # + publish
    fetched = ShardedIndex.for_shards(shards, cache_dir=tmp_path / "b", storage_options=options)
    checked = ShardedIndex.for_shards(shards, cache_dir=tmp_path / "b", storage_options=options)
    assert time.monotonic() - began < 60
    assert len(built) == fetched.num_samples == checked.num_samples == 10
    assert built.storage_options == options
    assert fetched.fingerprint == built.fingerprint
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [fetched.path.name]
    # a stale check of the copy uses them too, and a worker's unpickled copy keeps them
    checked.check_shards()
    assert pickle_round_trip(checked).storage_options == options


@pytest.mark.usefixtures("no_aws_environment")
def test_build_false_refuses_remote_shards_without_an_index_and_publishes_none(
    s3_server: str, shards: str, tmp_path: Path
) -> None:
    """What verify-data asks for: an index taken from the bytes at hand would match them."""
    options = given_options(s3_server)
    with pytest.raises(SampleIndexError, match=r"no current index of these shards .*known good"):
        ShardedIndex.for_shards(
            shards, cache_dir=tmp_path / "c", storage_options=options, build=False
        )
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())
    bucket = shards.split("/")[2]
    listed = s3_client(s3_server).list_objects_v2(Bucket=bucket)["Contents"]
    assert not [o["Key"] for o in listed if o["Key"].endswith(".rlindex")]
    built = ShardedIndex.for_shards(shards, cache_dir=tmp_path / "a", storage_options=options)
    fetched = ShardedIndex.for_shards(
        shards, cache_dir=tmp_path / "b", storage_options=options, build=False
    )
    assert fetched.fingerprint == built.fingerprint


def pickle_round_trip(index: ShardedIndex) -> ShardedIndex:
    """``index`` as a DataLoader worker gets it."""
    return pickle.loads(pickle.dumps(index))


@pytest.mark.usefixtures("no_aws_environment")
def test_the_deadline_of_storage_options_bounds_the_index(shards: str, tmp_path: Path) -> None:
    options = {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s", **QUICK}
    began = time.monotonic()
    with pytest.raises(StorageError, match="kept failing") as raised:
        ShardedIndex.for_shards(shards, cache_dir=tmp_path, storage_options=options)
    assert time.monotonic() - began < 3 * QUICK["deadline"]
    assert raised.value.transient


@pytest.mark.usefixtures("no_aws_environment")
def test_missing_credentials_fail_at_once_saying_where_to_give_them(
    s3_server: str, shards: str, tmp_path: Path
) -> None:
    options = {"endpoint_url": s3_server, "deadline": 60.0, "request_timeout": 10.0}
    began = time.monotonic()
    with pytest.raises(StorageError) as raised:
        ShardedIndex.for_shards(shards, cache_dir=tmp_path, storage_options=options)
    assert time.monotonic() - began < 20  # not retried until the deadline
    message = str(raised.value)
    assert not raised.value.transient and raised.value.attempts == 1
    assert "credentials are missing" in message and "AWS_ACCESS_KEY_ID" in message
    assert "storage_options 'key' and 'secret'" in message
    assert "endpoint" not in message.split("(", 1)[0]


DOCS_EXAMPLE = {"key": "testing", "secret": "testing", "region": "us-east-1", "deadline": 30.0}
OBSTORE_NAMES = {"access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"}


@pytest.mark.usefixtures("no_aws_environment")
@pytest.mark.parametrize("name", ["endpoint", "aws_endpoint", "aws_endpoint_url"])
def test_obstore_s_endpoint_names_read_from_a_plain_http_endpoint(s3_server: str, name: str):
    # obstore refuses http:// unless allow_http: it was set from "endpoint" only, so its other
    # names failed every read as a "builder error" until the deadline
    data = os.urandom(1000)
    bucket = f"names-{os.urandom(6).hex()}"
    s3_client(s3_server).create_bucket(Bucket=bucket)
    s3_client(s3_server).put_object(Bucket=bucket, Key="x.bin", Body=data)
    url = f"s3://{bucket}/x.bin"
    client = client_for(url, {**OBSTORE_NAMES, name: s3_server, **QUICK})
    assert isinstance(client, client_module.ObstoreClient)
    assert client.read_range(url, 10, 20) == data[10:30]


@pytest.mark.parametrize("names", ["fsspec", "obstore"])
@pytest.mark.parametrize("how", ["client=fsspec", "forked after obstore"])
def test_s3fs_takes_the_documented_names_of_either_scheme(
    s3_server: str, no_aws_environment: None, monkeypatch, names: str, how: str
) -> None:
    data = os.urandom(1000)
    bucket = f"names-{os.urandom(6).hex()}"
    s3_client(s3_server).create_bucket(Bucket=bucket)
    s3_client(s3_server).put_object(Bucket=bucket, Key="x.bin", Body=data)
    url = f"s3://{bucket}/x.bin"
    if names == "fsspec":
        options = {**DOCS_EXAMPLE, "endpoint_url": s3_server}
    else:
        options = {**OBSTORE_NAMES, "endpoint": s3_server, "allow_http": True}
    if how == "client=fsspec":
        options["client"] = "fsspec"
    else:  # a DataLoader worker forked after its parent used obstore reads through s3fs
        monkeypatch.setattr(client_module, "_OBSTORE_PID", os.getpid() + 1)
    client = client_for(url, options)
    assert isinstance(client, client_module.FsspecClient)
    assert client.read_range(url, 10, 20) == data[10:30]
    assert client.size(url) == len(data)


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
def test_a_read_conditional_on_the_indexed_etag_refuses_a_changed_shard(
    s3_server: str, s3_env, monkeypatch, shards: str, tmp_path: Path, backend: str
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    index = ShardedIndex.for_shards(shards, cache_dir=tmp_path)
    url, etag = index.shard_urls[0], index.shard_etag(0)
    assert etag is not None and etag == client_for(url).stat(url).version
    client = client_for(url, {"client": backend, "deadline": 30.0})
    original = client.get(url)
    assert client.read_range(url, 512, 100, etag=etag) == original[512:612]
    assert client.read_ranges(url, [(0, 10)], etag=etag) == [original[:10]]

    changed = bytes(255 - b for b in original)  # same size, other bytes
    bucket, key = url.removeprefix("s3://").split("/", 1)
    s3_client(s3_server).put_object(Bucket=bucket, Key=key, Body=changed)
    with pytest.raises(ShardError, match="changed since the index was built") as raised:
        client.read_range(url, 512, 100, etag=etag)
    assert not isinstance(raised.value, StorageError)  # a verdict, not a failure to retry
    assert url in str(raised.value) and "rebuild the index" in str(raised.value)
    assert client.read_range(url, 512, 100) == changed[512:612]  # no etag: as before


@pytest.mark.usefixtures("no_aws_environment")
@pytest.mark.parametrize("workers", [0, 2])
def test_parquet_rows_are_read_through_the_client_with_storage_options(
    s3_server: str, tmp_path: Path, workers: int
) -> None:
    """ParquetDataset at a URL: its index and pyarrow's reads (footer, column chunks) go
    through the storage client of its storage_options (no AWS_* variables), in the workers
    too; a file gone from the bucket is a StorageError naming it, not pyarrow's OSError."""
    paths = write_parquet_shards(tmp_path / "rows", num_shards=2, rows_per_shard=12)
    prefix = upload_dir(s3_server, tmp_path / "rows", "*.parquet")
    urls = [f"{prefix}/{Path(p).name}" for p in paths]
    options = given_options(s3_server)
    remote = ParquetDataset(urls, cache_dir=tmp_path / "idx", storage_options=options)
    local = ParquetDataset(paths)
    rows = list(DataLoader(remote, batch_size=5, num_workers=workers, collate_fn=list))
    assert [row for batch in rows for row in batch] == [local[i] for i in range(len(local))]
    bucket, key = urls[1][len("s3://") :].split("/", 1)
    s3_client(s3_server).delete_object(Bucket=bucket, Key=key)
    fresh = ParquetDataset(remote.index, storage_options=options)  # no file opened yet
    with pytest.raises(StorageError, match=f"^{urls[1]}"):
        fresh[len(fresh) - 1]


@pytest.mark.usefixtures("no_aws_environment")
def test_a_key_obstore_does_not_know_is_a_config_error_at_once(
    s3_server: str, shards: str, tmp_path
):
    """A typo ('dealine') or an s3fs-only argument: s3fs (the index) ignores it, obstore (the
    reads) refuses it; that was retried as an outage until the deadline."""
    options = {**given_options(s3_server), "dealine": 30, "deadline": 60.0}
    began = time.monotonic()
    cache = tmp_path / "index"
    with pytest.raises(ConfigError, match=r"obstore does not know a key of .*'dealine'"):
        TarShardDataset(shards, cache_dir=cache, storage_options=options)  # before the index
    assert time.monotonic() - began < 10
    assert not cache.exists()  # no index was built with the typo ignored
    with pytest.raises(ConfigError, match=r"client='boto' for s3://"):
        TarShardDataset(shards, cache_dir=cache, storage_options={"client": "boto"})
    dataset = TarShardDataset(shards, cache_dir=cache, storage_options=given_options(s3_server))
    loader = DataLoader(dataset, batch_size=2, num_workers=2, seed=1, collate_fn=list)
    assert next(iter(loader))  # the store the check configured: forked workers still read


@pytest.mark.usefixtures("no_aws_environment")
def test_a_glob_of_remote_shards_is_listed_with_storage_options(
    s3_server: str, shards: str, tmp_path: Path
) -> None:
    """The listing of a glob went through fsspec with the environment's endpoint and
    credentials only, so a glob failed where the same shards by brace pattern worked."""
    pattern = shards.rsplit("/", 1)[0] + "/shard-*.tar"
    index = ShardedIndex.for_shards(
        pattern, cache_dir=tmp_path, storage_options=given_options(s3_server)
    )
    assert index.num_samples == 10 and index.shard_urls[0].endswith("shard-0000.tar")
