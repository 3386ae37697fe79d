"""TarShardDataset local span reads: a slice of the shard's memory map, kept per process."""

from __future__ import annotations

import pickle

import pytest
from shard_factory import write_tar_shards

from resumable_loader.sources import _indexed
from resumable_loader.sources.webdataset import TarShardDataset


@pytest.fixture
def shards(tmp_path):
    return write_tar_shards(tmp_path, num_shards=3, samples_per_shard=4)


def test_a_local_shard_is_read_as_slices_of_its_one_map(shards):
    dataset = TarShardDataset(shards)
    first = [dataset[i] for i in range(12)]
    assert sorted(dataset._mapped) == [0, 1, 2]
    assert all(dataset._mapped[s] is dataset._files.get(s) for s in range(3))
    spans = int(dataset.index.records[:, 2].sum())
    assert (dataset.read_requests, dataset.bytes_read) == (12, spans)
    assert [dataset[i] for i in range(12)] == first
    assert dataset.__getitems__(list(range(11, -1, -1))) == first[::-1]
    assert (dataset.read_requests, dataset.bytes_read) == (36, 3 * spans)


def test_a_map_closed_by_the_open_file_bound_is_opened_again(shards, monkeypatch):
    expected = [TarShardDataset(shards)[i] for i in (0, 4, 0, 8, 4)]
    monkeypatch.setattr(_indexed, "MAX_OPEN_SHARDS", 1)
    dataset = TarShardDataset(shards)
    assert [dataset[i] for i in (0, 4, 0, 8, 4)] == expected
    assert list(dataset._files) == [1]
    assert [s for s, handle in dataset._mapped.items() if not handle.closed] == [1]


def test_reads_ahead_in_blocks_are_not_span_slices(shards):
    dataset = TarShardDataset(shards, read_ahead=1024)
    assert dataset[5] == TarShardDataset(shards)[5]
    assert dataset._mapped == {}


def test_pickled_or_closed_datasets_hold_no_map(shards):
    dataset = TarShardDataset(shards)
    dataset[0]
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._mapped == {} and copy[0] == dataset[0]
    mapped = dataset._mapped[0]
    dataset.close()
    assert dataset._mapped == {} and mapped.closed
    assert dataset[1] == copy[1]
