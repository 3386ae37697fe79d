"""What reading shards from storage cost: counters per process, summed over a loader's processes.

Each process that reads (a worker, or the main process at ``num_workers=0``) keeps a
:class:`StorageStats` and writes it after each batch, atomically, as a small JSON file named by
its dataset's token and its pid in the node cache's ``stats`` folder; the loader adds up the
files of its dataset's token. Files, not messages along the batches: a worker's batch is the
user's collate output, which cannot carry our counters, and a file costs one small write per
batch. Files of runs older than ``STALE_SECONDS`` are removed when a reader starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import uuid
from pathlib import Path

logger = logging.getLogger("resumable_loader")
STALE_SECONDS = 86400.0


@dataclasses.dataclass
class StorageStats:
    """Storage counters (cumulative; subtract two snapshots for one epoch's).

    Attributes:
        bytes_fetched: bytes received from storage, prefetch included.
        requests: range requests sent to storage.
        reads: sample spans read by the dataset.
        cache_hits: reads served from the node cache or a finished prefetch, without waiting.
        waited_reads: reads that waited on a fetch in flight (their own or another worker's).
        fetched_reads: reads that found nothing planned and fetched at once.
        read_wait_seconds: time the readers spent waiting for bytes.
        loop_wait_seconds: time the training loop spent waiting for batches (main process).
        prefetch_depth_bytes: the largest bytes fetched ahead of use by one process.
    """

    bytes_fetched: int = 0
    requests: int = 0
    reads: int = 0
    cache_hits: int = 0
    waited_reads: int = 0
    fetched_reads: int = 0
    read_wait_seconds: float = 0.0
    loop_wait_seconds: float = 0.0
    prefetch_depth_bytes: int = 0

    @property
    def hit_rate(self) -> float:
        """Fraction of reads served without waiting (1.0 before any read)."""
        return self.cache_hits / self.reads if self.reads else 1.0

    def __add__(self, other: StorageStats) -> StorageStats:
        summed = {
            f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)
        }
        summed["prefetch_depth_bytes"] = max(self.prefetch_depth_bytes, other.prefetch_depth_bytes)
        return StorageStats(**summed)

    def __sub__(self, other: StorageStats) -> StorageStats:
        diff = {
            f.name: getattr(self, f.name) - getattr(other, f.name) for f in dataclasses.fields(self)
        }
        diff["prefetch_depth_bytes"] = self.prefetch_depth_bytes
        return StorageStats(**diff)

    def as_dict(self) -> dict[str, float]:
        """The counters and the hit rate, as plain numbers."""
        return {**dataclasses.asdict(self), "hit_rate": self.hit_rate}


class StatsFile:
    """One process's counters of one dataset, published as ``<folder>/<token>-<pid>.json``."""

    def __init__(self, folder: Path, token: str) -> None:
        self.folder, self.token = folder, token
        self.stats = StorageStats()
        self._failed = False  # a publish failed: logged once

    def publish(self) -> None:
        """Write this process's counters (atomically: a temp file renamed over the old). The
        counters are a report, not the data: a folder that has become full or unwritable
        is logged (once a process) and the run goes on."""
        temp = self.folder / f".tmp-{uuid.uuid4().hex}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            temp.write_text(json.dumps(dataclasses.asdict(self.stats)))
            os.replace(temp, self.folder / f"{self.token}-{os.getpid()}.json")
        except OSError as error:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            if not self._failed:
                self._failed = True
                logger.warning(
                    "storage stats not published in %s (%s): the other processes' reports "
                    "will miss this one's counters",
                    self.folder,
                    error,
                )

    def total(self) -> StorageStats:
        """This process's counters plus every other process's published ones: a new object
        (a caller that keeps it, as the loader keeps each epoch's end, must not see this
        process's counters move on)."""
        total = dataclasses.replace(self.stats)
        mine = f"{self.token}-{os.getpid()}.json"
        for path in self.folder.glob(f"{self.token}-*.json") if self.folder.is_dir() else []:
            if path.name == mine:
                continue
            try:
                total = total + StorageStats(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue  # removed or being replaced: counted at the next call
        return total


def remove_stale(folder: Path) -> None:
    """Remove counter files (and temp files) untouched for ``STALE_SECONDS``."""
    cutoff = time.time() - STALE_SECONDS
    for path in folder.glob("*") if folder.is_dir() else []:
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            continue


def log_epoch(stats: StorageStats, samples: int | None) -> StorageStats:
    """Log one epoch's storage counters at INFO (one line) and return them."""
    logger.info(
        "storage, last epoch (%s samples): %d bytes in %d requests, hit rate %.3f, the loop "
        "waited %.2f s on data, reads waited %.2f s, prefetch depth up to %d bytes",
        samples,
        stats.bytes_fetched,
        stats.requests,
        stats.hit_rate,
        stats.loop_wait_seconds,
        stats.read_wait_seconds,
        stats.prefetch_depth_bytes,
    )
    return stats
