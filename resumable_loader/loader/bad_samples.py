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
and the stream stays the one the first run delivered. A read that fails only sometimes is
substituted where it failed and quarantined from then on; a run resumed from before that
point may then draw another substitute where the flaky sample was a candidate.

The limit: a rank may meet at most ``floor(max_bad_fraction * ceil(length / world_size))``
(``length`` the epoch's: a Mixture's ``samples_per_epoch``, or for an endless one its sources'
samples) distinct failed samples (a failed substitute candidate is one too), counted over the whole
run: those its own quarantine file lists, plus those met since the file was read (without a
``quarantine_dir``: those this loader met). The main process counts them: each batch comes
with the failures its load recorded (:class:`WithFailures`, from whichever process loaded
it), counted as the batch is delivered, in order, and the batch that takes the count past the
limit raises :class:`BadSampleError` instead of being delivered (so does every later one; the
cursor stays before it). Whether and where a rank stops therefore does not depend on
``num_workers`` or prefetching, and with one rank, which meets its failures in position order,
the stop is the batch holding the position of the failure past the limit, for any batch size
(for samples that always fail; a flaky one fails where it happens to). With several ranks each
counts its own: which rank meets a sample, and so where each stops, depends on the batch size
and world size, and a rank that stops leaves the others waiting at their next collective, as
any error on one rank does. A quarantined sample is substituted without a read and is not
counted again: the rank that met it counts it through its own file. So an iteration that
starts with more than the limit in its rank's file raises at ``iter()``, before loading
anything: a run restarted after the error stops again, until the data is fixed and a fresh
``quarantine_dir`` is given, or the limit raised. A run resumed after a kill, its file still
within the limit, stops where the continuous run stops, except that failures of batches the
killed run's workers had loaded but not delivered are in the file, so they count from the
resume on.

The resume probe (``checkpoint/probe.py``) loads its batch through :meth:`BadSamples.for_probe`:
the substitutes the stream has at those positions, with nothing logged, quarantined or
counted, so probing leaves the run as it was (a failure only the probe met is met again by
the run, which records it then).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from resumable_loader.errors import (
    BadSampleError,
    ConfigError,
    ResumableLoaderError,
    ShardError,
    StorageError,
)
from resumable_loader.order.philox import Purpose, derive_words, philox4x32
from resumable_loader.rngs.sample import install_key
from resumable_loader.storage.client import ObjectChanged

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
        for entry in _file_entries(path):
            entries.setdefault(int(entry["id"]), entry)
    return entries


def _file_entries(path: Path) -> Iterator[dict[str, Any]]:
    """The entries of one quarantine file, in the order written (none if it does not exist)."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return
    except OSError as error:  # a folder of that name, say
        raise ConfigError(
            f"{path}: cannot read the quarantine file ({error.strerror or error}); remove "
            "what is there, or give another quarantine_dir"
        ) from None
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill mid-write: that sample is simply read again
        if not isinstance(entry, dict) or type(entry.get("id")) is not int:
            raise ConfigError(
                f"{path}, line {number}: {line[:80]!r} is not a quarantine entry (a JSON object "
                "with an int 'id', as the loader writes); delete the line, or the file to read "
                "every sample again"
            )
        yield entry


def substitute_id(seed: int, epoch: int, position: int, attempt: int, length: int) -> int:
    """Candidate ``attempt`` for the sample at (epoch, position): a pure function of them."""
    words = derive_words(seed, epoch, position, Purpose.SUBSTITUTE)
    low, high, _, _ = philox4x32((attempt, 0, 0, 0), (words[0], words[1]))
    return (low | high << 32) % length


class WithFailures(NamedTuple):
    """A batch whose load recorded failed samples, as the loading process hands it over: the
    main process counts ``failures`` (their quarantine entries) and delivers ``batch``. A
    tuple, so that torch's pin_memory pins the batch inside it."""

    batch: Any
    failures: list[dict[str, Any]]


def substitutable(error: BaseException) -> bool:
    """Whether a sample whose read raised ``error`` is substituted: the dataset's own failures
    and damage to the sample's bytes (a ShardError of ours: a corrupt member, a row group that
    does not decode), not a store that cannot be reached (StorageError, after its retries), a
    shard replaced since it was indexed (ObjectChanged: rebuild the index) or the package's
    other errors (settings, the bad-sample limit), which would substitute every sample."""
    if not isinstance(error, ResumableLoaderError):
        return True
    return isinstance(error, ShardError) and not isinstance(error, StorageError | ObjectChanged)


class BadSamples:
    """The ``on_sample_error="substitute"`` policy of one loader (copied into its workers).

    Every process that loads uses it to substitute and record; the main process also counts
    the rank's failures against the limit (:meth:`begin_iteration`, :meth:`received`).

    Args:
        max_bad_fraction: in [0, 1]: how many distinct samples may fail on a rank over the
            whole run, as a share of the samples it reads in an epoch (see the module).
        quarantine_dir: where the per-rank quarantine files live (created if missing); None
            keeps the record in this loader (its processes' ``known``, the main process's
            count) and the log only.
        rank, world_size: this loader's data-parallel place (its file, its share of samples).
        length: how many ids the dataset has (candidates are drawn from them; for a Mixture,
            its ``id_count``).
        epoch_length: how many samples an epoch reads, all ranks together (the bad fraction
            is counted against a rank's share of it).
    """

    def __init__(
        self,
        *,
        max_bad_fraction: float,
        quarantine_dir: str | os.PathLike | None,
        rank: int,
        world_size: int,
        length: int,
        epoch_length: int,
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
            try:
                self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:  # a file there, or under a file, or not writable
                raise ConfigError(
                    f"quarantine_dir={str(self.quarantine_dir)!r}: cannot make that folder "
                    f"({error.strerror or error}); give a folder path (made if missing) that "
                    "every rank can write"
                ) from None
        self.rank, self.world_size, self.length = rank, world_size, length
        self.share = math.ceil(epoch_length / world_size)  # what the rank reads an epoch
        self.limit = math.floor(self.max_bad_fraction * self.share)
        self.known = read_quarantine(self.quarantine_dir)
        self._epoch: int | None = None
        self._recording = True  # log, quarantine and report failures (not in the probe's copy)
        self._new: list[dict[str, Any]] = []  # failures the load in progress recorded
        # The main process's count: id -> entry of each sample that failed on this rank over
        # the run, in the order counted.
        self._counted: dict[int, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return (
            f"BadSamples(max_bad_fraction={self.max_bad_fraction}, "
            f"quarantine_dir={self.quarantine_dir}, rank={self.rank}, known={len(self.known)}, "
            f"counted={len(self._counted)})"
        )

    def for_probe(self) -> BadSamples:
        """A copy that loads as this policy does, quarantine included, and records nothing.

        For the resume probe, which loads a batch of epoch 0 outside the stream: a sample that
        fails there gets the substitute the stream has at its position, but is not logged,
        quarantined or counted (the run records it when it meets it), and this policy's own
        state, shared with the stream, stays as it was. The quarantine files are read again
        at the copy's first load, so it knows what every rank quarantined until now.
        """
        probe = copy.copy(self)
        probe.known, probe._epoch, probe._recording = dict(self.known), None, False
        probe._new, probe._counted = [], {}
        return probe

    def begin_load(self, epoch: int) -> None:
        """Start loading a batch of ``epoch``: forget the failures of a load that raised, and
        re-read the quarantine files when ``epoch`` is new to this process (once a batch: one
        comparison unless the epoch changed)."""
        self._new.clear()
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
        """Record that ``sample_id`` raised ``error`` at ``key``; return its substitute (or
        raise ``error`` if it is not a sample's own failure: :func:`substitutable`)."""
        if not substitutable(error):
            raise error
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
        """Know ``sample_id`` as failed from now on; unless this is the probe's copy, log it,
        append it to this rank's quarantine file and report it with the batch."""
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
        if not self._recording:
            return
        logger.warning(
            "sample %d (epoch %d, position %d%s) failed to load (%s); substituted",
            sample_id,
            epoch,
            position,
            f", shard {entry['shard']}" if entry["shard"] else "",
            entry["error"],
        )
        if self.quarantine_dir is not None:
            _append(quarantine_file(self.quarantine_dir, self.rank), json.dumps(entry))
        self._new.append(entry)

    def reported(self, batch: Any) -> Any:
        """``batch`` as the loading process hands it over: with the failures its load
        recorded (:class:`WithFailures`), or as it is when none failed."""
        if not self._new:
            return batch
        failures, self._new = self._new, []
        return WithFailures(batch, failures)

    # -- the limit, counted in the main process ----------------------------------------------

    def begin_iteration(self) -> None:
        """Count what this rank's quarantine file lists (at each ``iter()``, in the main
        process): the run's failures so far, also those of earlier runs over the same file.

        Raises:
            BadSampleError: the count is past the limit already: nothing is loaded.
        """
        if self.quarantine_dir is not None:
            for entry in _file_entries(quarantine_file(self.quarantine_dir, self.rank)):
                self._count(entry)
        self._check()

    def received(self, batch: Any) -> Any:
        """The batch to deliver for ``batch`` as torch hands it over (in the main process, in
        delivery order): its failures counted, each known from now on (so the next epoch's
        workers, and the probe, substitute it without a read).

        Raises:
            BadSampleError: the count is past the limit: this batch is not delivered.
        """
        if type(batch) is WithFailures:
            batch, failures = batch
            for entry in failures:
                self.known.setdefault(entry["id"], entry)
                self._count(entry)
        self._check()
        return batch

    def _count(self, entry: dict[str, Any]) -> None:
        """Count ``entry``'s sample, unless it was counted already (a sample quarantined by
        this rank's file, or failed again in another worker, counts once)."""
        self._counted.setdefault(int(entry["id"]), entry)

    def _check(self) -> None:
        """Raise once more samples failed on this rank than the limit allows."""
        count = len(self._counted)
        if count <= self.limit:
            return
        last = next(reversed(self._counted.values()))
        if self.quarantine_dir is None:
            where, fix = "this loader: no quarantine_dir", "each one was logged"
        else:
            where = str(quarantine_file(self.quarantine_dir, self.rank))
            fix = (
                "the quarantine file lists each one; the count covers the whole run, so a run "
                "restarted over this file stops at once: once the data is fixed, give a fresh "
                "quarantine_dir"
            )
        raise BadSampleError(
            f"rank {self.rank}: {count} samples failed to load ({where}), more than "
            f"max_bad_fraction={self.max_bad_fraction} of the {self.share} it reads an epoch "
            f"(limit {self.limit}, counted over the whole run); the last: sample {last['id']} "
            f"at epoch {last.get('epoch', '?')}, position {last.get('position', '?')}: "
            f"{last.get('error', 'error not recorded')}; check "
            f"the data ({fix}), or raise max_bad_fraction"
        )


def _append(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` as a line of its own: after a line a kill cut mid-write
    (no newline at the end of the file), on a new line, so that only the cut entry is lost."""
    with open(path, "ab+") as f:  # one short write per line: appends do not interleave
        size, cut = f.seek(0, os.SEEK_END), False
        if size:
            f.seek(size - 1)
            cut = f.read(1) != b"\n"
        f.write(b"\n" * cut + f"{line}\n".encode())


def _shard_of(dataset: Any, sample_id: int) -> str | None:
    """The shard holding ``sample_id`` for a sharded dataset (one with an ``index``), also as
    a Mixture's source (its ids encode (source, the source's id))."""
    sources, decode = getattr(dataset, "sources", None), getattr(dataset, "decode", None)
    if sources is not None and callable(decode):
        try:
            source, inner = decode(sample_id)
        except (IndexError, TypeError):
            return None
        return _shard_of(getattr(sources[source], "dataset", None), inner)
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
    ids = getattr(dataset, "id_count", None)
    if ids is None:
        length = epoch_length = len(dataset)
    else:  # a Mixture: its sources' samples; its epoch is samples_per_epoch (None: endless)
        length, epoch_length = ids, getattr(dataset, "samples_per_epoch", None) or ids
    return BadSamples(
        max_bad_fraction=max_bad_fraction,
        quarantine_dir=quarantine_dir,
        rank=rank,
        world_size=world_size,
        length=length,
        epoch_length=epoch_length,
    )
