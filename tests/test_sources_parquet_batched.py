"""ParquetDataset.__getitems__: a batch of rows equals the rows read one at a time."""

from __future__ import annotations

import pytest
from shard_factory import write_parquet_shards

from resumable_loader import ResumableDataLoader
from resumable_loader.sources.parquet import ParquetDataset


@pytest.fixture
def parts(tmp_path):
    return write_parquet_shards(tmp_path, num_shards=2, rows_per_shard=10, row_group_size=4)


def test_a_batch_is_its_rows_each_group_read_once(parts, monkeypatch):
    dataset = ParquetDataset(parts)
    ids = [19, 0, -1, 5, 4, 3, 0, 12]
    alone = [dataset[i] for i in ids]
    dataset.close()
    reads = []
    read = dataset._row_group
    monkeypatch.setattr(dataset, "_row_group", lambda *g: reads.append(g) or read(*g))
    assert dataset.__getitems__(ids) == alone
    assert reads == sorted(set(reads)) == [(0, 0), (0, 1), (1, 0), (1, 2)]


@pytest.mark.parametrize("bad", [20, -21, 1.5])
def test_a_bad_id_in_a_batch_is_the_same_error_as_alone(parts, bad):
    dataset = ParquetDataset(parts)
    with pytest.raises((IndexError, TypeError)) as alone:
        dataset[bad]
    with pytest.raises(alone.type, match=str(alone.value)[:30]):
        dataset.__getitems__([0, bad])


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_reads_batches_and_streams_equal_a_row_at_a_time(parts, workers):
    def stream(dataset: ParquetDataset) -> list:
        loader = ResumableDataLoader(
            dataset, batch_size=3, shuffle=True, seed=1, num_workers=workers, collate_fn=list
        )
        return [row for batch in loader for row in batch]

    class RowAtATime(ParquetDataset):
        __getitems__ = None

    assert stream(ParquetDataset(parts)) == stream(RowAtATime(parts))
