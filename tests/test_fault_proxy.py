"""The test S3 server and the fault proxy do what the object-storage tests rely on."""

from __future__ import annotations

import time

import botocore.exceptions
import pytest
from fault_proxy import FaultProxy
from s3_server import make_bucket, s3_client

DATA = bytes(range(256)) * 1024
FAILED = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.ResponseStreamingError,
)


@pytest.fixture
def bucket(s3_server: str) -> str:
    return make_bucket(s3_server, {"data.bin": DATA})[len("s3://") :]


def _get(client, bucket: str, start: int, stop: int) -> bytes:
    answer = client.get_object(Bucket=bucket, Key="data.bin", Range=f"bytes={start}-{stop - 1}")
    return answer["Body"].read()


def test_proxy_forwards_ranges_and_records_requests(fault_proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(fault_proxy.endpoint, attempts=1)
    assert _get(client, bucket, 1000, 5000) == DATA[1000:5000]
    assert _get(client, bucket, 0, len(DATA)) == DATA
    assert fault_proxy.count("GET", "data.bin") == 2
    assert fault_proxy.requests[0].range == "bytes=1000-4999"
    assert fault_proxy.bytes_down > len(DATA) + 4000


def test_delay_is_added_to_each_round_trip(s3_server: str, bucket: str) -> None:
    with FaultProxy(s3_server, delay=0.05) as proxy:
        client = s3_client(proxy.endpoint, attempts=1)
        _get(client, bucket, 0, 10)  # opens the connection
        start = time.monotonic()
        for _ in range(4):
            _get(client, bucket, 0, 10)
        assert time.monotonic() - start >= 4 * 0.05


def test_drop_stall_and_outage(fault_proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(fault_proxy.endpoint, attempts=1)
    fault_proxy.drop_next()
    with pytest.raises(FAILED):
        _get(client, bucket, 0, 10)
    fault_proxy.drop_next(after_bytes=2000)
    with pytest.raises(FAILED):
        _get(client, bucket, 0, len(DATA))
    fault_proxy.stall_next(seconds=0.3)
    start = time.monotonic()
    assert _get(client, bucket, 0, 10) == DATA[:10]
    assert time.monotonic() - start >= 0.3
    fault_proxy.outage()
    with pytest.raises(FAILED):
        _get(client, bucket, 0, 10)
    fault_proxy.end_outage()
    assert _get(client, bucket, 0, 10) == DATA[:10]


def test_stall_outage_holds_requests_until_it_ends(fault_proxy: FaultProxy, bucket: str) -> None:
    client = s3_client(fault_proxy.endpoint, attempts=1)
    _get(client, bucket, 0, 10)
    fault_proxy.outage(0.4, mode="stall")
    start = time.monotonic()
    assert _get(client, bucket, 0, 10) == DATA[:10]
    assert time.monotonic() - start >= 0.3
