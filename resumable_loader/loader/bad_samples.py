"""Bad samples in lock-step: a sample that fails to load is replaced, the same way on every run.

One corrupt file in terabytes should neither kill a run nor put the ranks out of step: a rank
that skipped the sample would deliver a shorter batch, or one batch fewer, and the others would
wait for it in the next collective. With ``on_sample_error="substitute"`` the failed sample is
replaced by another sample of the dataset, chosen by Philox from (seed, epoch, position) under
its own purpose (``Purpose.SUBSTITUTE``) and loaded under the failed position's key: a pure
function of the position, so every rank keeps its batch size and step count, and a resumed
run, with any workers or world size, delivers the same substitute.

Each substitution is logged (logger ``resumable_loader``) and, with a ``quarantine_dir``,
appended to that rank's ``quarantine-rank-R.jsonl`` (epoch, position, sample id, shard,
error). Every process reads the quarantine files of all ranks at the start of each epoch and
does not read a listed sample again: it substitutes it at once. So a sample that failed once
(a flaky read as well as a corrupt file) is replaced on every later epoch and after a resume,
and the stream stays the one the first run delivered.

Once more distinct samples failed on a rank than ``max_bad_fraction`` of the samples it reads
in an epoch (counted over the whole run in its quarantine file, or in this process without
one), the load raises :class:`BadSampleError`. A read that fails only sometimes is
substituted where it failed and quarantined from then on; a run resumed from before that
point may then draw another substitute where the flaky sample was a candidate.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resumable_loader.errors import BadSampleError, ConfigError
from resumable_loader.order.philox import Purpose, derive_words, philox4x32
from resumable_loader.rngs.sample import install_key

MODES = ("raise", "substitute")
ATTEMPTS = 16  # substitute candidates tried before giving up (each itself may be bad)
_PATTERN = "quarantine-rank-*.jsonl"
logger = logging.getLogger("resumable_loader")


def quarantine_file(directory: str | os.PathLike, rank: int) -> Path:
    """Rank ``rank``'s quarantine file in ``directory``."""
    return Path(directory) / f"quarantine-rank-{rank:05d}.jsonl"


def read_quarantine(directory: str | os.PathLike | None) -> dict[int, dict[str, Any]]:
    """Sample id -> its first entry, over every rank's quarantine file in ``directory``."""
    entries: dict[int, dict[str, Any]] = {}
    if directory is None:
        return entries
    for path in sorted(Path(directory).glob(_PATTERN)):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill mid-write: that sample is simply read again
            entries.setdefault(int(entry["id"]), entry)
    return entries


def substitute_id(seed: int, epoch: int, position: int, attempt: int, length: int) -> int:
    """Candidate ``attempt`` for the sample at (epoch, position): a pure function of them."""
    words = derive_words(seed, epoch, position, Purpose.SUBSTITUTE)
    low, high, _, _ = philox4x32((attempt, 0, 0, 0), (words[0], words[1]))
    return (low | high << 32) % length


class BadSamples:
    """The ``on_sample_error="substitute"`` policy of one loader (copied into its workers).

    Args:
        max_bad_fraction: the share of a rank's samples per epoch that may be substituted,
            in [0, 1].
        quarantine_dir: where the per-rank quarantine files live (created if missing); None
            keeps the record in this process and the log only.
        rank, world_size: this loader's data-parallel place (its file, its share of samples).
        length: how many ids the dataset has (candidates are drawn from them; for a Mixture,
            its ``id_count``; the bad fraction is counted against it too).
    """

    def __init__(
        self,
        *,
        max_bad_fraction: float,
        quarantine_dir: str | os.PathLike | None,
        rank: int,
        world_size: int,
        length: int,
    ) -> None:
        if isinstance(max_bad_fraction, bool) or not isinstance(max_bad_fraction, (int, float)):
            raise ConfigError(
                f"max_bad_fraction must be a number in [0, 1], got {max_bad_fraction!r}"
            )
        if not 0 <= max_bad_fraction <= 1:
            raise ConfigError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.max_bad_fraction = float(max_bad_fraction)
        self.quarantine_dir = None if quarantine_dir is None else Path(quarantine_dir)
        if self.quarantine_dir is not None:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        self.rank, self.world_size, self.length = rank, world_size, length
        self.limit = math.floor(self.max_bad_fraction * math.ceil(length / world_size))
        self.known = read_quarantine(self.quarantine_dir)
        self._epoch: int | None = None
        self._mine: set[int] = set()  # substituted by this process (without a quarantine)

    def __repr__(self) -> str:
        return (
            f"BadSamples(max_bad_fraction={self.max_bad_fraction}, "
            f"quarantine_dir={self.quarantine_dir}, rank={self.rank}, known={len(self.known)})"
        )

    def at_epoch(self, epoch: int) -> None:
        """Re-read the quarantine files when ``epoch`` is new to this process (once a batch:
        one comparison unless the epoch changed)."""
        if epoch != self._epoch:
            self._epoch = epoch
            fresh = read_quarantine(self.quarantine_dir)
            self.known.update(fresh)

    def batch_readable(self, ids: Sequence[int]) -> bool:
        """Whether a batch may be read in one ``__getitems__`` call: none of its samples is
        quarantined (a batch with one is read a sample at a time, as the run that found it
        read it after its batched read raised, so that both runs load the same)."""
        known = self.known
        return not any(sample_id in known for sample_id in ids)

    def read(self, dataset: Any, sample_id: int, key: tuple[int, int, int], reseed: bool) -> Any:
        """``dataset[sample_id]``, or its substitute if it is quarantined or raises.

        ``key`` is the sample's (seed, epoch, position), installed already for the first read.
        (The fetch's batch loop inlines this: a lookup in :attr:`known`, then :meth:`failed`
        or :meth:`substitute`, so that a sample that loads costs no call here.)
        """
        if sample_id not in self.known:
            try:
                return dataset[sample_id]
            except Exception as error:  # the dataset's own failure, whatever its type
                return self.failed(dataset, sample_id, key, reseed, error)
        return self.substitute(dataset, sample_id, key, reseed)

    def failed(
        self,
        dataset: Any,
        sample_id: int,
        key: tuple[int, int, int],
        reseed: bool,
        error: Exception,
    ) -> Any:
        """Record that ``sample_id`` raised ``error`` at ``key``; return its substitute."""
        self._record(dataset, sample_id, key, error)
        return self.substitute(dataset, sample_id, key, reseed)

    def substitute(self, dataset: Any, failed: int, key: tuple[int, int, int], reseed: bool) -> Any:
        """The sample that stands in for ``failed`` at ``key`` (seed, epoch, position)."""
        seed, epoch, position = key
        errors = []
        for attempt in range(ATTEMPTS):
            candidate = substitute_id(seed, epoch, position, attempt, self.length)
            if candidate == failed or candidate in self.known:
                continue
            install_key(seed, epoch, position, Purpose.SAMPLE, reseed_globals=reseed)
            try:
                return dataset[candidate]
            except Exception as error:  # a bad candidate: it is quarantined too, then the next
                self._record(dataset, candidate, key, error, substitute_for=failed)
                errors.append(f"{candidate}: {type(error).__name__}: {error}")
        raise BadSampleError(
            f"sample {failed} (epoch {epoch}, position {position}) failed to load and none of "
            f"its {ATTEMPTS} substitute candidates loaded ({errors[:3]}); the dataset is "
            "mostly unreadable: check its storage, or fix the dataset's __getitem__"
        )

    def _record(
        self,
        dataset: Any,
        sample_id: int,
        key: tuple[int, int, int],
        error: Exception,
        substitute_for: int | None = None,
    ) -> None:
        _, epoch, position = key
        entry = {
            "epoch": epoch,
            "position": position,
            "id": sample_id,
            "shard": _shard_of(dataset, sample_id),
            "error": f"{type(error).__name__}: {error}"[:500],
            "rank": self.rank,
        }
        if substitute_for is not None:
            entry["substitute_for"] = substitute_for
        self.known[sample_id] = entry
        logger.warning(
            "sample %d (epoch %d, position %d%s) failed to load (%s); substituted",
            sample_id,
            epoch,
            position,
            f", shard {entry['shard']}" if entry["shard"] else "",
            entry["error"],
        )
        if self.quarantine_dir is None:
            self._mine.add(sample_id)
            count, where = len(self._mine), "this process"
        else:
            path = quarantine_file(self.quarantine_dir, self.rank)
            with open(path, "a") as f:  # one short line per write: appends do not interleave
                f.write(json.dumps(entry) + "\n")
            recorded = read_quarantine(self.quarantine_dir).values()
            count, where = sum(1 for e in recorded if e.get("rank") == self.rank), str(path)
        if count > self.limit:
            share = math.ceil(self.length / self.world_size)
            raise BadSampleError(
                f"rank {self.rank}: {count} samples failed to load ({where}), more than "
                f"max_bad_fraction={self.max_bad_fraction} of the {share} it reads an epoch "
                f"(limit {self.limit}); the last: sample {sample_id} at epoch "
                f"{epoch}, position {position}: {entry['error']}; check the data (the quarantine "
                "file lists each one), or raise max_bad_fraction"
            )


def _shard_of(dataset: Any, sample_id: int) -> str | None:
    """The shard holding ``sample_id`` for a sharded dataset (one with an ``index``)."""
    index = getattr(dataset, "index", None)
    try:
        shard, _ = index.locate(sample_id)
        return str(index.shard_urls[shard])
    except Exception:  # not a sharded dataset: no shard to name
        return None


def make(
    mode: str,
    *,
    max_bad_fraction: float,
    quarantine_dir: str | os.PathLike | None,
    rank: int,
    world_size: int,
    dataset: Any,
) -> BadSamples | None:
    """The policy of ``on_sample_error=mode``: None for "raise" (no cost at all)."""
    if mode not in MODES:
        raise ConfigError(f"on_sample_error must be one of {MODES}, got {mode!r}")
    if mode == "raise":
        if quarantine_dir is not None:
            raise ConfigError("quarantine_dir needs on_sample_error='substitute'")
        return None
    if not callable(getattr(dataset, "__len__", None)):
        raise ConfigError(
            "on_sample_error='substitute' needs a map-style dataset (substitutes are drawn "
            f"from its ids), got {type(dataset).__name__}"
        )
    # a Mixture's ids are its sources' samples, its len() the epoch's length (maybe endless)
    ids = getattr(dataset, "id_count", None)
    return BadSamples(
        max_bad_fraction=max_bad_fraction,
        quarantine_dir=quarantine_dir,
        rank=rank,
        world_size=world_size,
        length=len(dataset) if ids is None else ids,
    )
