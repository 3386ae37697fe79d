"""The storage client against a real S3 server behind the fault proxy: ranged reads equal the
local bytes, transient faults are retried, a permanent outage raises a typed error in time."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
import time

import numpy as np
import pytest
from fault_proxy import FaultProxy
from s3_server import make_bucket, upload_dir
from shard_factory import write_tar_shards

from resumable_loader.errors import ShardError, StorageError
from resumable_loader.index.paths import LISTED
from resumable_loader.storage import child_listing
from resumable_loader.storage import client as client_module
from resumable_loader.storage.child_listing import list_in_child
from resumable_loader.storage.client import client_for
from resumable_loader.storage.retry import RetryPolicy

DATA = np.random.default_rng(18).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
QUICK = {"deadline": 3.0, "request_timeout": 0.5, "initial_backoff": 0.02, "max_backoff": 0.2}
RELAXED = {"deadline": 30.0, "request_timeout": 10.0}  # the first s3fs call imports a lot
RANGES = [(0, 10), (1000, 65536), (299_990, 10), (123_457, 0), (0, len(DATA))]


@pytest.fixture
def prefix(fault_proxy: FaultProxy, s3_server: str, s3_env, monkeypatch) -> str:
    """``s3://<fresh bucket>/data`` holding ``a.bin`` (DATA) and ``b.bin``, reached through
    the proxy by the environment's endpoint."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", fault_proxy.endpoint)
    return make_bucket(s3_server, {"a.bin": DATA, "b.bin": b"b", "c.txt": b"c"}, prefix="data")


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
def test_ranged_reads_equal_the_local_bytes(prefix: str, backend: str) -> None:
    client = client_for(prefix, {"client": backend, **RELAXED})
    url = f"{prefix}/a.bin"
    for start, length in RANGES:
        assert client.read_range(url, start, length) == DATA[start : start + length]
    assert client.read_ranges(url, RANGES) == [DATA[s : s + n] for s, n in RANGES]
    assert client.read_range(url, 299_000, 5000) == DATA[299_000:]  # past the end: the rest
    assert client.stat(url).size == client.size(url) == len(DATA)
    assert client.get(url) == DATA
    client.put(f"{prefix}/new/d.bin", b"written")
    assert client.get(f"{prefix}/new/d.bin") == b"written"
    assert client.list(prefix) == [
        f"{prefix}/{n}" for n in ("a.bin", "b.bin", "c.txt", "new/d.bin")
    ]
    assert client.glob(f"{prefix}/*.bin") == [f"{prefix}/a.bin", f"{prefix}/b.bin"]


def test_dropped_and_cut_connections_are_retried(prefix: str, fault_proxy: FaultProxy) -> None:
    client = client_for(prefix, QUICK)
    url = f"{prefix}/a.bin"
    fault_proxy.drop_next(2)
    assert client.read_range(url, 5, 100) == DATA[5:105]
    fault_proxy.drop_next(1, after_bytes=20_000)  # the response is cut mid-body
    assert client.read_range(url, 0, len(DATA)) == DATA
    assert fault_proxy.count("GET", "a.bin") == 5


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
@pytest.mark.parametrize("how", ["ignore", "shorten"])
def test_a_response_of_another_length_is_retried_not_returned(
    prefix: str, fault_proxy: FaultProxy, backend: str, how: str
) -> None:
    # a server ignoring Range answers the whole object; a buggy one a well-formed short 206:
    # either read as the range would put other bytes at the asked offsets (s3fs returned them)
    client = client_for(prefix, {"client": backend, **QUICK, "deadline": 20.0})
    url = f"{prefix}/a.bin"
    client.read_range(url, 0, 10)  # the client's first request (and imports) done
    fault_proxy.reset_stats()
    fault_proxy.mangle_range_next(2, how=how)
    assert client.read_range(url, 1000, 65536) == DATA[1000:66536]
    assert fault_proxy.count("GET", "a.bin") == 3
    fault_proxy.mangle_range_next(1000, how=how)  # every time: a StorageError, no bytes
    with pytest.raises(StorageError, match=r"a.bin bytes \[5, 505\): storage kept failing"):
        client_for(prefix, {"client": backend, **QUICK}).read_range(url, 5, 500)
    fault_proxy.mangle_range_next(0, how=how)


def test_a_stall_shorter_than_the_deadline_is_retried(prefix: str, fault_proxy: FaultProxy):
    client = client_for(prefix, QUICK)
    fault_proxy.stall_next(1, seconds=2.5)
    began = time.monotonic()
    assert client.read_range(f"{prefix}/a.bin", 7, 70) == DATA[7:77]
    assert time.monotonic() - began < 2.0  # abandoned at the 0.5 s request timeout, not waited
    assert fault_proxy.count("GET", "a.bin") == 2


@pytest.mark.parametrize("mode", ["refuse", "stall"])
def test_a_permanent_outage_raises_within_the_deadline(
    prefix: str, fault_proxy: FaultProxy, mode: str
) -> None:
    client = client_for(prefix, {**QUICK, "deadline": 1.5})
    url = f"{prefix}/a.bin"
    fault_proxy.outage(mode=mode)
    began = time.monotonic()
    with pytest.raises(StorageError) as caught:
        client.read_range(url, 1000, 500)
    assert time.monotonic() - began < 1.5 + 0.5
    error = caught.value
    assert isinstance(error, ShardError)
    assert error.transient and error.attempts >= 2
    assert f"{url} bytes [1000, 1500)" in str(error) and "deadline" in str(error)
    error.sample = 42  # what the read path adds
    assert "(sample 42)" in str(pickle.loads(pickle.dumps(error)))


def test_a_short_outage_is_ridden_out(prefix: str, fault_proxy: FaultProxy) -> None:
    client = client_for(prefix, QUICK)
    fault_proxy.outage(1.0)
    assert client.read_range(f"{prefix}/a.bin", 0, 10) == DATA[:10]


def test_a_missing_object_fails_at_once(prefix: str) -> None:
    client = client_for(prefix, QUICK)
    with pytest.raises(StorageError, match="refused the request") as caught:
        client.read_range(f"{prefix}/missing.bin", 0, 10)
    assert caught.value.attempts == 1 and not caught.value.transient


def test_plain_fsspec_urls_keep_working(tmp_path) -> None:
    (tmp_path / "x.bin").write_bytes(DATA)
    for url in (str(tmp_path / "x.bin"), f"file://{tmp_path}/x.bin"):
        client = client_for(url)
        assert client.read_range(url, 100, 1000) == DATA[100:1100]
        assert client.size(url) == len(DATA)
    memory = client_for("memory://rl-test/y.bin")
    memory.put("memory://rl-test/y.bin", DATA[:100])
    assert memory.read_range("memory://rl-test/y.bin", 10, 20) == DATA[10:30]
    assert memory.glob("memory://rl-test/*.bin") == ["memory://rl-test/y.bin"]


def test_retry_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="deadline"):
        RetryPolicy(deadline=0)
    with pytest.raises(ValueError, match="client"):
        client_for("s3://b/k", {"client": "boto"})


def _read_in_child(url: str, queue) -> None:
    queue.put(client_for(url, RELAXED).read_range(url, 3, 30))


def test_a_forked_child_reads_after_its_parent_did(prefix: str) -> None:
    """obstore's runtime does not survive a fork: a DataLoader worker forked after the main
    process read must still read (through fsspec), not hang until the deadline."""
    import multiprocessing

    from resumable_loader.storage import client as module

    url = f"{prefix}/a.bin"
    client = client_for(url, RELAXED)
    assert client.size(url) == len(DATA) and client.get(url) == DATA
    if module._OBSTORE_PID is None:  # metadata alone leaves obstore unstarted for the workers
        client.read_range(url, 0, 1)
    assert module._OBSTORE_PID is not None
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(url, queue))
    child.start()
    assert queue.get(timeout=60) == DATA[3:33]
    child.join(timeout=10)
    assert child.exitcode == 0


def _draw_after_reading(url: str, queue) -> None:
    random.seed(7)
    client = client_for(url, {**QUICK, "deadline": 10.0})
    began = time.monotonic()
    data = client.read_range(url, 3, 30)
    queue.put((type(client).__name__, data, time.monotonic() - began, random.random()))


def test_a_forked_child_s_retries_leave_the_global_random_alone(
    prefix: str, fault_proxy: FaultProxy
) -> None:
    """A worker forked after its parent read through obstore reads through s3fs; retrying
    through an outage there must not draw from the global ``random``, which the loader seeds per
    sample for the augmentations (botocore's own retries did: a shifted sample's draws)."""
    import multiprocessing

    url = f"{prefix}/a.bin"
    client = client_for(url, RELAXED)
    assert client.size(url) == len(DATA)  # s3fs, as for the index: imported before the fork
    assert client.read_range(url, 0, 1) == DATA[:1]  # obstore, in the parent
    fault_proxy.outage(1.0)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_draw_after_reading, args=(url, queue))
    child.start()
    backend, data, seconds, draw = queue.get(timeout=60)
    child.join(timeout=10)
    assert backend == "FsspecClient" and data == DATA[3:33]
    assert seconds > 0.5  # refused, retried until the outage ended
    assert draw == random.Random(7).random()


def test_a_listing_in_a_child_equals_s3fs_s_and_falls_back_to_it(prefix: str, monkeypatch):
    """The main process lists through obstore in a child (obstore's runtime would not survive
    the DataLoader's fork; s3fs's first listing costs ~0.5 s of CPU): the same sizes and ETags
    as s3fs's listing, and s3fs's listing when the child cannot run."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    in_child = list_in_child(prefix, endpoint, 10.0)
    s3fs_options = {"client": "fsspec", "key": "testing", "secret": "testing", **RELAXED}
    s3fs_only = client_for(prefix, s3fs_options).stats(prefix)  # options: no child
    assert in_child == {url: (stat.size, stat.version) for url, stat in s3fs_only.items()}
    assert sorted(in_child) == [f"{prefix}/{n}" for n in ("a.bin", "b.bin", "c.txt")]
    assert in_child[f"{prefix}/a.bin"][0] == len(DATA)
    listing = client_for(prefix, {"client": "fsspec", **RELAXED})
    assert listing.stats(prefix) == s3fs_only
    monkeypatch.setattr(child_listing.sys, "executable", "/nonexistent/python")
    assert list_in_child(prefix, endpoint, 10.0) is None
    assert listing.stats(prefix) == s3fs_only  # through s3fs
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: no retries
    began = time.monotonic()
    assert list_in_child(prefix, "http://127.0.0.1:9", 10.0) is None
    assert time.monotonic() - began < 5.0


def test_checking_a_cached_index_imports_no_s3fs(s3_server: str, s3_env, tmp_path, monkeypatch):
    """A loader's main process that finds its index in the cache checks it against the bucket
    with one listing in a child: s3fs (aiobotocore, a botocore session) is never imported."""
    from resumable_loader.index.sharded import ShardedIndex

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    write_tar_shards(tmp_path / "shards", num_shards=LISTED, samples_per_shard=1)
    url = upload_dir(s3_server, tmp_path / "shards", "*.tar")
    urls = f"{url}/shard-{{0000..{LISTED - 1:04d}}}.tar"  # enough to be listed, not stat'ed
    ShardedIndex.for_shards(urls, cache_dir=tmp_path / "index")  # built, then cached
    code = (
        "import sys; from resumable_loader.index.sharded import ShardedIndex as S; "
        f"index = S.for_shards({urls!r}, cache_dir={str(tmp_path / 'index')!r}); "
        "print(index.num_samples, sorted(m for m in sys.modules if m in ('s3fs', 'aiobotocore')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[-2] == f"{LISTED} []"


def test_concurrent_first_requests_set_up_one_s3fs_session(prefix: str, monkeypatch) -> None:
    """A worker's prefetch starts many requests at once: each set up its own s3fs session
    (botocore's data files, an SSL context: ~0.1-0.5 s of CPU each, all on fsspec's one I/O
    thread), and a worker forked after obstore was used spent seconds there (3-26 s an epoch)."""
    import s3fs

    connects = []
    real = s3fs.S3FileSystem.connect

    def counting(self, *args, **kwargs):
        connects.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "connect", counting)
    monkeypatch.setattr(client_module, "_CLIENTS", {})  # a client that has connected nothing
    client = client_for(prefix, {"client": "fsspec", **RELAXED})
    url = f"{prefix}/a.bin"
    futures = [client.submit_range(url, start, 100) for start in range(0, 16_000, 1000)]
    assert [f.result() for f in futures] == [DATA[s : s + 100] for s in range(0, 16_000, 1000)]
    assert len(connects) == 1
