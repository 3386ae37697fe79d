"""Reads shard spans through the node cache, fetching ahead what the node's schedule will need.

Given the node's future (:class:`~resumable_loader.loader.lookahead.NodeSchedule`), the reader
plans it window by window: in each window, blocks whose bytes the window reads mostly (at
least ``Prefetch.block_fraction``), or in so many spans that their requests would cost more
than the bytes of the block nobody reads (``Prefetch.request_bytes`` a request), are fetched
whole into the node cache, each by one process of the node, chosen by a hash of the block
over the node's (rank, worker) slots, so every block is fetched once a node with no
coordination; the other samples are fetched as spans (merged when close) by the process
that loads them. Fetches are issued in order of first use,
up to ``Prefetch.depth_bytes`` ahead of the batch being loaded (at an iteration's first batch,
only the node's first two rounds of batches: they go first, alone), on a thread pool of
``Prefetch.threads`` requests in flight that starts the fetch needed first. A read finds its
bytes in the cache or in a finished fetch; else it waits for its own fetch in flight, or for
another process's block not fetched yet (polling the cache, at most ``Prefetch.wait_seconds``),
and then fetches itself: never forever. A block evicted since it was fetched is fetched at
once, unless a process of the node is fetching it again (its ``.fetching`` marker). What is
returned is always the span asked for: a plan can only make a read faster or a fetch wasted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing.util
import os
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from resumable_loader._checks import check_int
from resumable_loader.errors import ConfigError
from resumable_loader.storage.block_states import BlockStates
from resumable_loader.storage.fetch_pool import FirstUsePool
from resumable_loader.storage.node_cache import NodeCache, check_eviction
from resumable_loader.storage.plan import (
    BlockPieces,
    Key,
    Read,
    blocks_of,
    coalesce,
    code_key,
    fit_live,
    peak_held,
    sample_spans,
    unique_rows,
)
from resumable_loader.storage.stats import StatsFile, remove_stale

logger = logging.getLogger("resumable_loader")
Fetch = Callable[[int, int, int], bytes]  # (shard, start, length) -> bytes: one request
# A read waiting longer than this is logged (at most once per LOG_EVERY seconds a process).
SLOW_READ_SECONDS = 1.0
LOG_EVERY = 10.0
PUBLISH_EVERY = 0.5  # seconds between two writes of a process's counters (and at its end)
MAX_WINDOW = 2**18  # samples planned at once
# Windows planned ahead: Belady's clock needs next uses beyond the cache's lifetime.
HORIZON_WINDOWS = 4


@dataclasses.dataclass(frozen=True)
class Prefetch:
    """How a remote dataset fetches ahead (``TarShardDataset(..., prefetch=Prefetch(...))``).

    Args:
        depth_bytes: how far ahead of the batch being loaded fetches are issued, in bytes of
            the samples ahead (per process); it is what hides a storage outage.
        depth_batches: if set, fetches are issued at most this many global batches (the
            loader's batch size times the world size) ahead too: the nearer of the two bounds
            applies.
        threads: range requests in flight per process.
        block_fraction: fetch a whole block when the near future (the cache's worth of
            samples) reads at least this fraction of it.
        request_bytes: what one request's fixed cost (its round trip, the store's work per
            request) is worth in bytes transferred: a block the near future reads in ``n``
            spans is also fetched whole when ``(n - 1) * request_bytes`` reaches the bytes of
            it nobody reads, if the room for whole blocks (half the cache, or all of it when
            it holds every shard) holds every block the near future touches (else it would be
            evicted before its other samples' turn); else the samples' spans are fetched.
            0: spans unless ``block_fraction`` says whole (fewest bytes, a request a sample).
        eviction: the node cache's policy: "belady" (the block used furthest ahead goes) or
            "lru".
        wait_seconds: how long a read waits for a block another process is fetching before it
            fetches the block itself.
        cache_dir: where the node cache keeps its folder, named by the shards' identity (their
            URLs, sizes and versions, :func:`shards_identity`) and the block size, so that
            datasets sharing it, these shards before they changed, or a read_ahead of another
            size never read each other's blocks (default: under /dev/shm, else the temp dir,
            :func:`default_cache_dir`); every process of a node should use the same.
        coalesce_gap: spans of one batch at most this many bytes apart go in one request.
        disk_dir: a second tier of the node cache on a local disk (a folder named as the
            first tier's is made in it): blocks evicted from the first tier (``cache_dir``,
            bounded by the dataset's ``cache_bytes``) go there instead of away, and reads find
            them there: a dataset that fits the two tiers is fetched once a node, across
            epochs and runs; with ``disk_bytes``.
        disk_bytes: the disk tier's bound in bytes (evicted by the same policy).
    """

    depth_bytes: int = 64 * 2**20
    depth_batches: int | None = None
    threads: int = 16
    block_fraction: float = 0.5
    request_bytes: int = 256 * 2**10
    eviction: str = "belady"
    wait_seconds: float = 1.0
    cache_dir: str | os.PathLike | None = None
    coalesce_gap: int = 4096
    disk_dir: str | os.PathLike | None = None
    disk_bytes: int = 0

    def __post_init__(self) -> None:
        check_int("Prefetch depth_bytes", self.depth_bytes)
        if self.depth_batches is not None:
            check_int("Prefetch depth_batches", self.depth_batches, low=1)
        check_int("Prefetch threads", self.threads, low=1)
        check_int("Prefetch coalesce_gap", self.coalesce_gap)
        check_int("Prefetch request_bytes", self.request_bytes)
        if not 0 <= self.block_fraction <= 1:
            raise ConfigError(
                f"Prefetch block_fraction must be in [0, 1], got {self.block_fraction}"
            )
        if not self.wait_seconds >= 0:
            raise ConfigError(f"Prefetch wait_seconds must be >= 0, got {self.wait_seconds}")
        check_eviction(self.eviction)
        check_int("Prefetch disk_bytes", self.disk_bytes)
        if (self.disk_dir is None) != (self.disk_bytes == 0):
            raise ConfigError(
                f"Prefetch disk_dir={self.disk_dir!r} and disk_bytes={self.disk_bytes} go "
                "together: give both for a disk tier (a folder and its bound), or neither"
            )


def default_cache_dir() -> Path:
    """Where a node keeps its caches' folders by default: /dev/shm/resumable_loader (else in
    the temp dir)."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return base / "resumable_loader"


def node_cache_root(index: Any, options: Prefetch, block_size: int) -> Path:
    """The folder of the node cache of ``index``'s shards in blocks of ``block_size`` bytes,
    inside ``options.cache_dir`` (else :func:`default_cache_dir`): named by the shards' URLs,
    sizes and versions (:func:`shards_identity`) and the block size, so that blocks of other
    shards, of these shards before they changed, or of another size (block ``n`` of another
    size holds other bytes) are never read for them."""
    base = default_cache_dir() if options.cache_dir is None else Path(options.cache_dir)
    return base / f"{shards_identity(index)}-{block_size}"


def shards_identity(index: Any) -> str:
    """A hash of every shard's URL, size and version (mtime or ETag) in ``index``."""
    shards = [(s["url"], s["bytes"], s["mtime"]) for s in index.header["shards"]]
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()[:20]


def _open_cache(
    root: Path, sizes: np.ndarray, block_size: int, cache_bytes: int, options: Prefetch
) -> NodeCache:
    """The node cache in ``root`` of shards of ``sizes`` bytes (and its disk tier), its
    folders made and its block states mapped; a folder that cannot be written (read-only,
    full) is a ConfigError naming it."""
    try:
        states = BlockStates(root, (-(-sizes // block_size)).tolist(), block_size)
        tiers = dict(states=states, eviction=options.eviction)
        disk = None
        if options.disk_dir is not None:
            disk = NodeCache(Path(options.disk_dir) / root.name, options.disk_bytes, **tiers)
        cache = NodeCache(root / "blocks", cache_bytes, spill=disk, **tiers)
        remove_stale(root / "stats")
    except OSError as error:
        where = f"{error.filename}: " if error.filename else f"{root}: "
        raise ConfigError(
            f"{where}the node cache cannot be written there ({error.strerror or error}); free "
            "space in it, or give Prefetch(cache_dir=..., disk_dir=...) writable folders on "
            "local storage with room (the same for every process of a node)"
        ) from error
    return cache


class ShardReader:
    """Span reads of one index's shards, planned ahead, through a node cache.

    Args:
        index: the :class:`~resumable_loader.index.sharded.ShardedIndex` (tar: ``spans``).
        fetch: one range request, thread-safe.
        block_size: bytes per cache block (> 0).
        cache_bytes: bytes the node cache keeps (0: no cache; every read is a span).
        options: the :class:`Prefetch` settings.
        token: names this dataset's counters among the node's (see ``stats``).
    """

    def __init__(
        self,
        index: Any,
        fetch: Fetch,
        *,
        block_size: int,
        cache_bytes: int,
        options: Prefetch,
        token: str,
    ) -> None:
        self.index, self._fetch_one = index, fetch
        self.block_size, self.options = check_int("block_size", block_size, low=1), options
        self._sizes = np.array([int(s["bytes"]) for s in index.header["shards"]], dtype=np.int64)
        self._mean = index.mean_sample_bytes
        root = node_cache_root(index, options, self.block_size)
        self.cache = _open_cache(root, self._sizes, self.block_size, cache_bytes, options)
        self.cache.next_use = _weak_clock(self._next_use)  # the cache must not hold the reader
        self.cached = cache_bytes > 0
        self.stats_file = StatsFile(root / "stats", token)
        self.stats = self.stats_file.stats
        # Published after batches at most every PUBLISH_EVERY; the last counters (a loop that
        # broke off mid-epoch, fetches that ended after the last batch) when the process
        # exits: a worker's exit runs multiprocessing's finalizers, as the main process's does
        multiprocessing.util.Finalize(self, self.stats_file.publish, exitpriority=0)
        # Positions ahead: fetches are issued up to `depth`, blocks only while those started
        # for uses to come fill at most half the cache (more would push out blocks needed
        # sooner); whole-or-span is decided over windows of what the cache holds.
        self._depth_of_bytes = max(1, int(options.depth_bytes / self._mean))
        # Both tiers: a block the first evicts is read from the disk tier, never fetched again.
        capacity = self.cache.tiers_capacity
        self._capacity = max(1, int(capacity / self._mean))
        # The room for the blocks a window reads together: half the cache, the other half being
        # for blocks fetched ahead of their first use; all of it when it holds every shard (then
        # no block is ever evicted).
        self._total = int(self._sizes.sum())
        self._room = capacity if self._total <= capacity else capacity // 2
        self._pool = FirstUsePool(options.threads, "resumable-fetch")
        # The threads and block files go with the reader: a dataset dropped without close()
        # (one built per epoch, say) left its 16 idle threads and its descriptors behind.
        self._release = weakref.finalize(self, _release, self._pool, self.cache)
        self._lock = threading.Lock()
        # The first request of a process opens the client's session; a burst of first requests
        # from many threads measured 6-12 s with s3fs (each sets up a session), one then the
        # rest 0.5 s.
        self._warm, self._warm_lock = threading.Event(), threading.Lock()
        self._last_log = self._published = -math.inf
        self._warned_small = False  # the cache-too-small warning, once a process
        self._reset(None)

    # -- planning ----------------------------------------------------------------------------

    def _reset(self, schedule: Any) -> None:
        self._schedule = schedule
        self._now = schedule.now if schedule is not None else 0
        self._planned_to = schedule.start if schedule is not None else 0
        self._held: Any = None
        self._ended = False
        self._queue: deque[Read] = deque()  # span reads not started, by first use
        self._blocks: deque[Read] = deque()  # block reads not started, by first use
        self._ahead: deque[tuple[int, int]] = deque()  # (first use, bytes) of blocks started
        self._ahead_bytes = 0
        self._uses: dict[Key, deque[int]] = {}
        self._inflight: dict[Key, Future] = {}
        self._spans: dict[tuple[int, int], tuple[Future, int, int]] = {}
        self._batch_left = 0
        self._last_batch = False  # the batch being read is this process's last planned one
        self._last_mine = -1  # the position of this process's last batch pulled
        self.depth = self._depth_of_bytes
        self._round = self._soon = 0
        self._opening = True  # the first plan issues the node's first two rounds' reads only
        if schedule is not None and self.options.depth_batches is not None:
            self.depth = min(self.depth, self.options.depth_batches * schedule.global_batch_size)
        self.window = min(self._capacity if self.cached else self.depth, MAX_WINDOW)
        if schedule is not None:
            ranks = schedule.node_ranks
            self._slots = len(ranks) * schedule.num_workers
            self._slot = ranks.index(schedule.rank) * schedule.num_workers + schedule.worker
            # how far ahead of (or behind) this process another of the node may be reading:
            # torch keeps at most two batches a worker in flight, and ranks step together
            self._soon = 2 * self._slots * schedule.global_batch_size
            self._round = self._soon if self._slots > 1 else 0

    def plan(self, schedule: Any) -> None:
        """Plan the node's future up to the depth and issue the fetches due."""
        if schedule is not self._schedule:
            self._reset(schedule)
        self._now = now = schedule.now
        self._batch_left = schedule.batch_size
        while not self._ended and self._planned_to <= now + self.depth:
            self._plan_window()
        if not self._ended and self._planned_to <= now + HORIZON_WINDOWS * self.window:
            self._plan_window()  # Belady's clock looks further ahead: a window a batch
        # At the start the first batches' reads go first, alone: a server sharing its
        # bandwidth among all the look-ahead's requests would serve them last.
        self._issue(now, now + self._soon if self._opening else now + self.depth)
        self._opening = False
        self._last_batch = self._ended and self._last_mine <= now

    def _plan_window(self) -> None:
        end = self._planned_to + self.window
        batches = []
        while True:
            batch = self._held if self._held is not None else self._schedule.pull()
            self._held = None
            if batch is None:
                self._ended = True
                break
            if batch.position >= end:
                self._held = batch
                break
            batches.append(batch)
            if batch.mine:
                self._last_mine = batch.position
        self._planned_to = end
        self._forget_used()
        reads = self._window_reads(batches) if batches else []
        for read in sorted(reads, key=lambda r: r.first_use):
            (self._queue if read.block is None else self._blocks).append(read)

    def _forget_used(self) -> None:
        """Drop the blocks whose planned uses are all behind (no process of the node reads
        them any more): a global shuffle over 10^7 blocks would otherwise keep an entry for
        every block a process ever planned, gigabytes a worker."""
        behind = self._now - self._round
        for key, uses in list(self._uses.items()):
            try:
                done = uses[-1] < behind  # uses are in order: the last is the latest
            except IndexError:  # emptied by the clock (a fetch thread evicting)
                done = True
            if done:
                del self._uses[key]

    def _window_reads(self, batches: list[Any]) -> list[Read]:
        counts = [len(b.ids) for b in batches]
        ids = np.concatenate([b.ids for b in batches])
        positions = np.repeat([b.position for b in batches], counts)
        mine = np.repeat([b.mine for b in batches], counts)
        self.index.ensure_rows(ids)  # a partial index fetches the window's shards' rows
        shards, starts, lengths = sample_spans(self.index.spans, self.index.shard_offsets, ids)
        pieces = BlockPieces.of(shards, starts, lengths, self.block_size)
        whole = np.zeros(len(ids), dtype=bool)
        if self.cached:
            chosen = self._whole_blocks(pieces.code, pieces.used, positions[pieces.span])
            whole = pieces.all_in(chosen, len(ids))
        reads = self._block_reads(pieces, whole, positions)
        spans = mine & ~whole
        gap = self.options.coalesce_gap
        reads += coalesce(shards[spans], starts[spans], lengths[spans], positions[spans], gap=gap)
        return reads

    def _block_reads(
        self, pieces: BlockPieces, whole: np.ndarray, positions: np.ndarray
    ) -> list[Read]:
        """Record the uses of the window's whole blocks (Belady's clock, the waits) and the
        reads of those this process fetches for the node."""
        inside = whole[pieces.span]
        if not inside.any():
            return []
        codes, uses = unique_rows([pieces.code[inside], positions[pieces.span[inside]]])
        heads = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))
        reads, size = [], self.block_size
        for code, use in zip(codes[heads].tolist(), np.split(uses, heads[1:]), strict=True):
            key = code_key(code)
            known = self._uses.setdefault(key, deque())
            first = int(use[0])
            known.extend(use[1:].tolist() if known and known[-1] == first else use.tolist())
            if hash_slot(key, self._slots) == self._slot:
                start = key[1] * size
                length = int(min(size, self._sizes[key[0]] - start))
                reads.append(Read(key[0], start, length, first, key[1]))
        return reads

    def _whole_blocks(self, codes: np.ndarray, used: np.ndarray, at: np.ndarray) -> np.ndarray:
        """The blocks (sorted key codes) to fetch whole of a window whose spans read ``used``
        bytes of blocks ``codes`` at positions ``at``: those it reads at least
        ``block_fraction`` of, or in spans whose extra requests cost more than the bytes left
        unread (``request_bytes`` each), the most read first, while the blocks held at once
        (each from its first use in the window to its last) fill at most half the cache (the
        other half holds blocks fetched ahead; :func:`fit_live`), or all of it if it holds
        every shard; with ``block_fraction=0``, every block.

        Without the request cost, a resume half way through a global shuffle read each block's
        remaining half as a request a sample: 3,800 requests a worker, 37 s for the rest of an
        epoch that takes 0.65 s in whole blocks from the same server (moto, 10 ms round trips).
        Counting every block the window touches as held at once (rather than those held
        together) made a shard-local order with a cache of half the data fetch half its
        samples as spans: 8,100 requests and 29.5 s an epoch, against 256 and 1.2 s now.
        """
        codes, inverse = np.unique(codes, return_inverse=True)
        fraction = self.options.block_fraction
        if not fraction:
            return codes
        inverse = inverse.reshape(-1)
        used = np.bincount(inverse, weights=used, minlength=len(codes))
        spans = np.bincount(inverse, minlength=len(codes))
        first = np.full(len(codes), np.iinfo(np.int64).max)
        last = np.full(len(codes), np.iinfo(np.int64).min)
        np.minimum.at(first, inverse, at)
        np.maximum.at(last, inverse, at)
        shard, block = codes >> 32, codes & 0xFFFFFFFF
        block_bytes = np.minimum(self.block_size, self._sizes[shard] - block * self.block_size)
        mostly = used >= fraction * block_bytes
        if block_bytes.sum() <= self._room:
            # the cache keeps every block of the window: one read a block instead of many;
            # else a partly read block would be evicted before its other samples' turn and
            # fetched again (a tenth-size cache, shard-local: 1.24x the data, not 1.00x)
            mostly |= (spans - 1) * self.options.request_bytes >= block_bytes - used
        candidates = np.flatnonzero(mostly)
        share = used[candidates] / block_bytes[candidates]
        ranked = candidates[np.lexsort((codes[candidates], -share))]
        taken = fit_live(ranked, first, last, block_bytes, self._room)
        if not self._warned_small and 2 * used[taken].sum() < used.sum():
            wanted = min(2 * peak_held(first, last, block_bytes), self._total)
            self._warn_spans(1 - used[taken].sum() / used.sum(), wanted)
        return np.sort(codes[taken])

    def _warn_spans(self, share: float, wanted: int) -> None:
        """Say once a process that ``share`` of a window's bytes are fetched as spans, and the
        ``cache_bytes`` (``wanted``) that would hold what the order reads together."""
        self._warned_small = True
        logger.warning(
            "storage: the node cache (cache_bytes=%d) holds too little of what the order reads "
            "together: %d%% of this stretch's bytes are fetched as spans, a request per sample "
            "or batch. For whole-block reads give the dataset cache_bytes >= %d (or, for a "
            "global shuffle of more data than that, a disk tier or a shard-local order: "
            "ShardShuffle, whose working set is about 3 * buffer_size samples)",
            self.cache.capacity,
            round(100 * share),
            wanted,
        )

    def _issue(self, now: int, limit: int) -> None:
        """Start the planned fetches for uses before ``limit``, spans and blocks merged in
        order of first use."""
        ahead = self._ahead  # blocks started for uses to come: at most half the cache
        while ahead and ahead[0][0] < now:
            self._ahead_bytes -= ahead.popleft()[1]
        room = self.cache.capacity // (2 * self._slots)
        spans, blocks = self._queue, self._blocks
        while True:
            span = spans[0] if spans and spans[0].first_use < limit else None
            block = blocks[0] if blocks and blocks[0].first_use < limit else None
            full = block is not None and self._ahead_bytes + block.length > room
            if full and block.first_use > now + self._round:
                # the cache is full of blocks still to be used; but a block another process
                # of the node may be reading now is fetched anyway: deferring it could leave
                # that process waiting for this one while this one waits for it
                block = None
            if span is None and block is None:
                return
            if block is None or (span is not None and span.first_use <= block.first_use):
                self._start(spans.popleft())
                continue
            self._start(blocks.popleft())
            ahead.append((block.first_use, block.length))
            self._ahead_bytes += block.length

    def _start(self, read: Read) -> None:
        """Start one fetch (a block already cached or in flight is skipped, as is a span whose
        blocks the node cache holds: the read finds it there)."""
        if read.block is None:
            if self.cached and all(
                (read.shard, block) in self.cache
                for block in blocks_of(read.start, read.length, self.block_size)
            ):
                return
            future = self._pool.submit(
                read.first_use, self._request, read.shard, read.start, read.length
            )
            for start, length in read.members:
                self._spans[(read.shard, start)] = (future, start - read.start, length)
        else:
            key = (read.shard, read.block)
            fetching = self._inflight.get(key)
            if (fetching is not None and not fetching.done()) or key in self.cache:
                return  # a fetch done long ago does not count: the block may be evicted since
            self.cache.mark_fetching(key)  # the node's readers of it wait rather than fetch
            self._inflight[key] = self._pool.submit(
                read.first_use, self._fetch_block, key, read.length
            )
        ahead = int((read.first_use - self._now) * self._mean) + read.length
        self.stats.prefetch_depth_bytes = max(self.stats.prefetch_depth_bytes, ahead)

    def _next_use(self, key: Key) -> float:
        """Belady's clock: the position of ``key``'s next planned use (inf: none planned)."""
        uses = self._uses.get(key)
        behind = self._now - self._round  # another process of the node may still read there
        while uses and uses[0] < behind:
            uses.popleft()
        return uses[0] if uses else math.inf

    # -- fetching ----------------------------------------------------------------------------

    def _request(self, shard: int, start: int, length: int) -> bytes:
        data = None
        if not self._warm.is_set():  # the process's first request goes alone (see __init__)
            with self._warm_lock:
                if not self._warm.is_set():
                    try:
                        data = self._fetch_one(shard, start, length)
                    finally:  # failed or not: the others need not go one by one
                        self._warm.set()
        if data is None:
            data = self._fetch_one(shard, start, length)
        with self._lock:
            self.stats.bytes_fetched += len(data)
            self.stats.requests += 1
        return data

    def _fetch_block(self, key: Key, length: int) -> bytes | None:
        """Fetch a block into the cache; its bytes only if the cache could not keep it."""
        try:
            data = self._request(key[0], key[1] * self.block_size, length)
            return None if self.cache.put(key, data) else data
        finally:
            self.cache.unmark_fetching(key)

    # -- reading -----------------------------------------------------------------------------

    def read(self, shard: int, start: int, length: int) -> bytes:
        """The ``length`` bytes of ``shard`` at ``start`` (fewer past the shard's end)."""
        began = time.perf_counter()
        entry = self._spans.pop((shard, start), None)
        if entry is not None and entry[2] == length:
            future, offset, _ = entry
            waited = not future.done()
            data = future.result()[offset : offset + length]
            outcome = "waited" if waited else "hit"
        elif self.cached:
            data, outcome = self._read_blocks(shard, start, length)
        else:
            data, outcome = self._request(shard, start, length), "fetched"
        self._count(outcome, time.perf_counter() - began, shard, start)
        return data

    def _read_blocks(self, shard: int, start: int, length: int) -> tuple[bytes, str]:
        size, pieces, outcome = self.block_size, [], "hit"
        for block in blocks_of(start, length, size):
            lo, hi = max(start, block * size), min(start + length, (block + 1) * size)
            piece, how = self._block_piece((shard, block), lo - block * size, hi - lo)
            pieces.append(piece)
            outcome = how if how != "hit" else outcome
        return (pieces[0] if len(pieces) == 1 else b"".join(pieces)), outcome

    def _block_piece(self, key: Key, offset: int, length: int) -> tuple[bytes, str]:
        piece = self.cache.read(key, offset, length)
        if piece is not None:
            return piece, "hit"
        future = self._inflight.get(key)
        if future is not None:
            waited = not future.done()
            data = future.result()
            if data is not None:
                return data[offset : offset + length], "waited" if waited else "hit"
            piece = self.cache.read(key, offset, length)
            if piece is not None:
                return piece, "waited" if waited else "hit"
        elif key in self._uses and self._coming(key):
            piece = self._poll(key, offset, length)
            if piece is not None:
                return piece, "waited"
        planned = self._schedule is None or key in self._uses
        if not planned:  # a span the plan did not foresee: fetch just it
            start = key[1] * self.block_size + offset
            return self._request(key[0], start, length), "fetched"
        block_length = int(min(self.block_size, self._sizes[key[0]] - key[1] * self.block_size))
        data = self._fetch_block(key, block_length)
        if data is None:
            data = self.cache.read(key, 0, block_length) or self._request(
                key[0], key[1] * self.block_size, block_length
            )
        return data[offset : offset + length], "fetched"

    def _coming(self, key: Key) -> bool:
        """Whether another process of the node is fetching ``key``, or has yet to (its owner):
        worth waiting for; else it was evicted since, and this process fetches it now."""
        return self.cache.fetching(key, self.options.wait_seconds) or self.cache.never_held(key)

    def _poll(self, key: Key, offset: int, length: int) -> bytes | None:
        """The piece once another process publishes ``key``; None after ``wait_seconds``, or
        as soon as nobody is bringing it (published and evicted again meanwhile)."""
        deadline, pause = time.monotonic() + self.options.wait_seconds, 0.0005
        while time.monotonic() < deadline:
            time.sleep(pause)
            piece = self.cache.read(key, offset, length)
            if piece is not None or not self._coming(key):
                return piece
            pause = min(pause * 2, 0.02)
        return None

    def _count(self, outcome: str, seconds: float, shard: int, start: int) -> None:
        stats = self.stats
        stats.reads += 1
        stats.read_wait_seconds += seconds if outcome != "hit" else 0.0
        if outcome == "hit":
            stats.cache_hits += 1
        elif outcome == "waited":
            stats.waited_reads += 1
        else:
            stats.fetched_reads += 1
        now = time.monotonic()
        if seconds > SLOW_READ_SECONDS and now - self._last_log > LOG_EVERY:
            self._last_log = now
            logger.warning(
                "storage: a read waited %.1f s for %s (bytes at %d); prefetch depth %d bytes, "
                "%d requests, %d bytes fetched so far by this process",
                seconds,
                self.index.shard_urls[shard],
                start,
                self.options.depth_bytes,
                stats.requests,
                stats.bytes_fetched,
            )
        self._batch_left -= 1
        if self._batch_left == 0 and (now - self._published > PUBLISH_EVERY or self._last_batch):
            self._published = now
            self.stats_file.publish()

    def close(self) -> None:
        """Stop the fetch threads (fetches in flight finish; nothing new starts)."""
        self._release()


def _weak_clock(method: Callable[[Key], float]) -> Callable[[Key], float]:
    """A reader's ``_next_use`` that does not keep the reader alive (once it is gone, no block
    has a next use)."""
    reference = weakref.WeakMethod(method)

    def next_use(key: Key) -> float:
        live = reference()
        return math.inf if live is None else live(key)

    return next_use


def _release(pool: FirstUsePool, cache: NodeCache) -> None:
    """What closing a reader (or collecting it) frees: its threads, then its block files."""
    pool.shutdown()
    cache.close()


def hash_slot(key: Key, slots: int) -> int:
    """Which of the node's ``slots`` processes fetches block ``key``: a fixed mix of its
    numbers, so every process computes the same owner without asking."""
    shard, block = key
    return ((shard * 0x9E3779B1 + block * 0x85EBCA77) & 0xFFFFFFFF) * slots >> 32
