"""``resumable-loader verify-data``: every sample read back and checked against its index."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from resumable_loader.errors import ConfigError, ShardError
from resumable_loader.index.file import is_index_file
from resumable_loader.index.paths import expand_shards, stat_shards
from resumable_loader.index.sharded import ShardedIndex
from resumable_loader.sources.parquet import ParquetDataset
from resumable_loader.sources.webdataset import TarShardDataset


@dataclasses.dataclass
class DataReport:
    """What :func:`verify_data` found.

    Attributes:
        samples: samples read.
        bytes: bytes checked: the samples' spans (tar), the files (Parquet).
        problems: one "shard: what and where" message per sample that failed its check (per
            row group, for Parquet: it is read whole).
        shards: the files checked (those the index names, or the copies given).
        failed: the samples in what failed.
    """

    samples: int
    bytes: int
    problems: list[str]
    shards: list[str]
    failed: int

    @property
    def passed(self) -> bool:
        """Whether every sample matched its index."""
        return not self.problems


def verify_data(
    shards: str | os.PathLike | Sequence[str | os.PathLike] | ShardedIndex,
    *,
    index: str | os.PathLike | None = None,
) -> DataReport:
    """Read every sample of a shard set back and check it. Tar: with the full check
    (``check="full"``): each span's tar headers parse to the members the index records, and
    each member's payload has the CRC32C recorded when the shards were indexed. Parquet: every
    row group is read and converted: its pages decode (and match their checksums, in a file
    written with them: ``write_page_checksum=True``; Parquet files carry none by default, and a
    flipped byte in a page without one may decode to another value), it has the rows the index
    records, and every value converts (strings are UTF-8).

    Unlike a load's size-and-mtime check, this reads every byte, so it finds a flipped bit, a
    rewritten header or payload, or a shard cut short. A bad sample is listed and the check
    goes on to the next.

    The check is against an existing index (named, or kept beside or for the shards), never
    one built here: an index taken from the bytes at hand would match them whatever they hold;
    the index's own arrays are checked against their digests first, whatever their size.

    Args:
        shards: as for :class:`TarShardDataset` (shards, patterns, an index file or object).
        index: an index file of other shards, of which ``shards`` are copies: the copies are
            checked against it (:meth:`ShardedIndex.relocated`), what a copy to another disk
            or bucket wants, since an index of the copies would be taken from them.

    Raises:
        SampleIndexError: no index of the shards, a damaged one, or one that no longer
            matches them by size and mtime (or ETag).
    """
    named = isinstance(shards, (str, os.PathLike)) and is_index_file(shards)
    if index is not None:
        if named or isinstance(shards, ShardedIndex):
            raise ConfigError("with index=, give the copied shards, not an index")
        # the originals may be gone or changed: not stat'ed, the copies are checked instead
        checked = ShardedIndex.load(index, verify=False).relocated(expand_shards(shards))
    elif isinstance(shards, ShardedIndex):
        checked = shards
    elif named:
        checked = ShardedIndex.load(shards)
    else:
        urls = expand_shards(shards)  # once: a remote glob is a listing
        stat_shards(urls)  # a missing shard is named as such, not as a missing index
        checked = ShardedIndex.for_shards(urls, build=False, on_error="skip")  # any index
    checked.check_digests()
    if checked.format == "parquet":
        return _verify_parquet(checked)
    dataset = TarShardDataset(checked, check="full")
    problems = []
    for sample_id in range(len(dataset)):
        try:
            dataset[sample_id]
        except ShardError as error:
            problems.append(str(error))
    dataset.close()
    spans = int(checked.spans[:, 1].sum())
    return DataReport(len(dataset), spans, problems, list(checked.shard_urls), len(problems))


def _verify_parquet(index: ShardedIndex) -> DataReport:
    """Every row group of ``index``'s Parquet shards read (page checksums checked where the
    file has them) and its rows converted; one problem per row group that fails."""
    dataset = ParquetDataset(index, cache_bytes=0)
    problems, failed, first = [], 0, 0
    for rows in (count for groups in index.row_groups for count in groups):
        try:
            dataset.__getitems__(list(range(first, first + rows)))
        except ShardError as error:
            problems.append(str(error))
            failed += rows
        first += rows
    dataset.close()
    data = sum(int(shard["bytes"]) for shard in index.header["shards"])
    return DataReport(len(dataset), data, problems, list(index.shard_urls), failed)
