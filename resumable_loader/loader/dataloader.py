"""ResumableDataLoader: torch's DataLoader whose order, randomness and cursor survive any resume.

The loader keeps torch's DataLoader (argument checks, workers, prefetching, pin memory,
collate, error propagation) and changes only what decides the data: it iterates its own index
sampler, whose batches are a pure function of (seed, epoch, start position, partition), and a
:class:`~resumable_loader.loader.keyed_fetch.KeyedFetch` that loads every sample under its own
key. The user-visible attributes (``dataset``, ``sampler``, ``batch_sampler``,
``collate_fn``) stay what torch made of the arguments; ours are swapped in only while torch
builds an iterator.

As with torchdata's stateful loader, ``load_state_dict`` takes effect at the next ``iter()``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from resumable_loader._checks import check_int
from resumable_loader.errors import (
    ConfigError,
    NotResumableError,
    ResumeWarning,
    StateDictError,
    WorkerError,
)
from resumable_loader.loader import bad_samples
from resumable_loader.loader import cursor as cursor_mod
from resumable_loader.loader.bad_samples import BadSamples
from resumable_loader.loader.build_refs import (
    epoch_complete,
    make_order,
    make_ref_sampler,
    resumable_order,
)
from resumable_loader.loader.identity import dataset_fingerprint
from resumable_loader.loader.iteration import ResumableIterator, worker_failure
from resumable_loader.loader.keyed_batches import unwrap_rebuilt
from resumable_loader.loader.keyed_fetch import KeyedFetch, WorkerInit
from resumable_loader.loader.lookahead import lookahead_for
from resumable_loader.loader.progress import Progress
from resumable_loader.loader.refs import OrderedBatchSampler, UserBatchSampler
from resumable_loader.loader.shutdown import stop_workers
from resumable_loader.loader.topology import (
    agree_on_seed,
    forward_set_epoch,
    gather_cursors,
    injected_sampler,
    resolve_data_parallel,
)
from resumable_loader.loader.visible_sampler import warn_if_replaced, watch_visible_sampler
from resumable_loader.order.partition import Partition
from resumable_loader.order.permutation import Order
from resumable_loader.order.philox import Purpose, check_epoch, check_seed, derive_words
from resumable_loader.rngs.process import bind_for_workers
from resumable_loader.storage.stats import StorageStats, log_epoch

T_co = TypeVar("T_co", covariant=True)


def _begin_again(
    loader_ref: weakref.ref[ResumableDataLoader], iterator: ResumableIterator
) -> ResumableIterator | None:
    """A new iteration of the loader for ``iterator`` to hand its batches over to, if it is
    still the loader's latest (else a later ``iter()`` took the requested epoch already)."""
    loader = loader_ref()
    if loader is None or loader._current is None or loader._current() is not iterator:
        return None
    return iter(loader)


class ResumableDataLoader(DataLoader[T_co]):
    """A drop-in for ``torch.utils.data.DataLoader`` whose ``state_dict()`` resumes exactly.

    Takes torch's DataLoader arguments, with the same checks and meaning. For a map-style
    dataset without a user sampler, the order of an epoch is a pure function of (seed, epoch,
    dataset length, shuffle settings) and every sample's randomness a pure function of
    (seed, epoch, position), so a run resumed from ``state_dict()`` with any ``num_workers``,
    batch size or world size continues the same stream bit for bit.

    Args (keyword-only, beyond torch's):
        seed: the order's and the augmentations' seed, 0 <= seed < 2**64. Default: drawn once
            here from ``generator`` (or torch's global RNG) and recorded in the state, so a
            default-seeded run can still be resumed.
        rank, world_size: this process's place among the data-parallel ranks; default from
            torch.distributed, else the RANK/WORLD_SIZE environment variables, else 0 and 1.
            Global batch k of an iteration begun at position g covers positions
            [g + kWB, g + (k+1)WB); rank r takes [g + kWB + rB, g + kWB + (r+1)B).
        reseed_globals: before each sample, reseed ``random``, numpy's global RNG and torch's
            CPU default generator from the sample's key, so unmodified augmentations replay.
            True: all three, always; False: none; "auto": each of them once a process's
            samples were seen to change it (the batch is then loaded again), the same stream as
            True for every transform that draws, at no cost for a generator never drawn from;
            a transform that reads a generator's state without drawing (under
            ``torch.random.fork_rng()``, ``torch.initial_seed()``) gets per-sample states only
            with True (docs/design.md). True and "auto" resume each other's state.
        shard_shuffle: a :class:`~resumable_loader.order.shard_local.ShardShuffle` to shuffle
            shard-locally (needs ``shuffle=True`` and a dataset with ``shard_sizes``) instead of
            globally.
        dp_group, device_mesh: take rank and world size from the data-parallel process group,
            or from a DeviceMesh whose dimensions are all data-parallel (``mesh["dp"]``) or a
            ``(mesh, names)`` pair; ranks that differ only in tensor, context or pipeline
            position then load identical batches (see docs/integrations.md).
        stall_warning: with workers, log a warning (logger ``"resumable_loader"``) naming the
            worker, positions and sample ids whenever a batch has not arrived this many seconds
            after it was asked for (0: never); torch's default ``timeout=0`` otherwise waits
            for a hung worker forever, silently.
        on_sample_error: "raise" (a sample whose loading raises stops the run, as in torch)
            or "substitute": it is replaced by a sample drawn from (seed, epoch, position), so
            every rank keeps its batch size and step count, and the stream, substitutes
            included, is the same after a resume (see ``loader/bad_samples.py``).
        max_bad_fraction: with "substitute", how many distinct samples may fail on a rank over
            the whole run (its quarantine file, or this loader without one), as a share of the
            samples it reads in an epoch; the batch that takes it past raises
            ``BadSampleError`` in the main process, whatever ``num_workers``.
        quarantine_dir: with "substitute", where each rank logs its failed samples
            (``quarantine-rank-R.jsonl``); every rank's list is read at each epoch start and on
            a resume, and a listed sample is substituted without being read again.

    A ``DistributedSampler`` over this dataset passed with ``shuffle=False`` (what Lightning's
    DDP injects) is read as the data-parallel coordinates, shuffle flag, default seed and
    ``drop_last`` (the epoch's tail cut to a multiple of the world size, as the sampler drops
    it), and the loader keeps its own order; ``set_epoch`` on the visible sampler reaches the
    loader.
    """

    def __new__(cls, dataset: Any = None, *args: Any, **kwargs: Any) -> ResumableDataLoader:
        # Over an IterableDataset: the loader without cursor methods (IterableDatasetLoader).
        if cls is ResumableDataLoader and isinstance(dataset, IterableDataset):
            cls = IterableDatasetLoader
        return super().__new__(cls)

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Any = None,
        batch_sampler: Any = None,
        num_workers: int = 0,
        collate_fn: Callable[[Any], Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], None] | None = None,
        multiprocessing_context: Any = None,
        generator: torch.Generator | None = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        seed: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        reseed_globals: bool | str = True,
        shard_shuffle: Any = None,
        dp_group: Any = None,
        device_mesh: Any = None,
        stall_warning: float = 300.0,
        on_sample_error: str = "raise",
        max_bad_fraction: float = 0.01,
        quarantine_dir: str | os.PathLike | None = None,
    ) -> None:
        sampler, batch_size, drop_last, batch_sampler = unwrap_rebuilt(
            sampler, batch_size, drop_last, batch_sampler
        )
        injected = injected_sampler(dataset, sampler, shuffle, batch_sampler)
        if injected is not None:  # Lightning's DDP rebuilt this loader around its own sampler
            rank, world_size = injected.rank, injected.world_size
            seed = injected.seed if seed is None else seed
        super().__init__(
            dataset,
            batch_size,
            shuffle,
            sampler,
            batch_sampler,
            num_workers,
            collate_fn,
            pin_memory,
            drop_last,
            timeout,
            worker_init_fn,
            multiprocessing_context,
            generator,
            prefetch_factor=prefetch_factor,
            persistent_workers=persistent_workers,
            pin_memory_device=pin_memory_device,
            in_order=in_order,
        )
        self._parallel = resolve_data_parallel(
            rank, world_size, dp_group=dp_group, device_mesh=device_mesh
        )
        self.rank, self.world_size = self._parallel.rank, self._parallel.world_size
        self._explicit_seed = None if seed is None else check_seed(seed)
        if seed is None:
            draw = _draw_seed(generator)
            self.seed = agree_on_seed(draw, self.world_size, job_wide=self._parallel.job_wide)
        else:
            self.seed = self._explicit_seed
        if not (reseed_globals is True or reseed_globals is False or reseed_globals == "auto"):
            raise ConfigError(
                f'reseed_globals must be True, False or "auto", got {reseed_globals!r}'
            )
        self.reseed_globals = reseed_globals
        if isinstance(stall_warning, bool) or not isinstance(stall_warning, (int, float)):
            raise ConfigError(f"stall_warning must be seconds >= 0, got {stall_warning!r}")
        if not stall_warning >= 0:  # NaN too: it would silently never warn
            raise ConfigError(f"stall_warning must be seconds >= 0 (0: never), got {stall_warning}")
        self.stall_warning = float(stall_warning)
        # The latest iterator: only its batches move the cursor. A weak reference, so that an
        # abandoned iterator is collected (and its workers stopped) as torch's would be.
        self._current: weakref.ref[ResumableIterator] | None = None
        self._loop_wait = 0.0  # seconds the loop waited in iterations already finished
        self._storage_mark = StorageStats()  # storage_stats() at the last epoch's end
        self.epoch_storage_stats: StorageStats | None = None  # the last finished epoch's
        if injected is not None:  # our own order, as the sampler's coordinates and shuffle say
            shuffle, sampler = injected.shuffle, None
        self._shuffle, self._shard_shuffle = bool(shuffle), shard_shuffle
        self._refs: OrderedBatchSampler | UserBatchSampler | None = None
        if not isinstance(dataset, IterableDataset):
            self._refs = make_ref_sampler(
                dataset,
                shuffle=shuffle,
                sampler=sampler,
                batch_sampler=batch_sampler,
                shard_shuffle=shard_shuffle,
                seed=self.seed,
                batch_size=self.batch_size,
                drop_last=self.drop_last,
                batched=self.batch_sampler is not None,
                rank=self.rank,
                world_size=self.world_size,
                trim=injected is not None and injected.drop_last,
            )
            # what torch's iterator sends its workers before the loader watches it
            self._refs.prefetched = self.num_workers * (self.prefetch_factor or 0)
        elif shard_shuffle is not None:
            raise ConfigError("shard_shuffle needs a map-style dataset, got an IterableDataset")
        self._fetch = KeyedFetch(dataset, self.collate_fn, reseed_globals=reseed_globals)
        self._fetch.bad_samples = bad_samples.make(
            on_sample_error,
            max_bad_fraction=max_bad_fraction,
            quarantine_dir=quarantine_dir,
            rank=self.rank,
            world_size=self.world_size,
            dataset=dataset,
        )
        # Bound to the refs, not to the loader: a loader that referenced itself would outlive
        # its last reference until a gc run, keeping persistent workers alive meanwhile.
        self._progress = Progress(functools.partial(epoch_complete, self._refs))
        self._foreign = None  # the order a foreign loader iterating our visible sampler gets
        if self._refs is not None and sampler is None and batch_sampler is None:
            # The visible sampler is torch's or an injected one: only a foreign loader iterates
            # torch's, and it then gets our order; set_epoch on either reaches this loader.
            self._foreign = watch_visible_sampler(
                self.sampler,
                self.batch_sampler,
                self._refs,
                self._progress.place,
                seed=self.seed,
                reseed_globals=reseed_globals is not False,  # a foreign loader's fetch: per sample
            )
            forward_set_epoch(self.sampler, self.set_epoch)

    @property
    def order(self) -> Order | None:
        """The order this loader's batches follow (None: a user's sampler or an IterableDataset
        decides it)."""
        own = isinstance(self._refs, OrderedBatchSampler)
        return self._refs.order if own and self._refs.capture is None else None

    @property
    def bad_samples(self) -> BadSamples | None:
        """The ``on_sample_error="substitute"`` policy (None with "raise"): how this loader
        substitutes, quarantines and counts the samples that fail to load."""
        return self._fetch.bad_samples

    @property
    def partition(self) -> Partition | None:
        """How this loader splits each epoch into per-rank batches (None: a sampler that each
        rank iterates itself, or an IterableDataset)."""
        return self._refs.partition if isinstance(self._refs, OrderedBatchSampler) else None

    def loader_arguments(self) -> dict[str, Any]:
        """The arguments of ours (beyond torch's) that built this loader, the seed only if it
        was chosen explicitly: what a caller needs to build a twin, e.g. on another topology."""
        arguments = dict(
            shuffle=self._shuffle,
            seed=self._explicit_seed,
            reseed_globals=self.reseed_globals,
            shard_shuffle=self._shard_shuffle,
            stall_warning=self.stall_warning,
        )
        policy = self.bad_samples
        if policy is not None:  # on_sample_error="substitute", with its bound and log
            arguments.update(
                on_sample_error="substitute",
                max_bad_fraction=policy.max_bad_fraction,
                quarantine_dir=policy.quarantine_dir,
            )
        return arguments

    # -- iteration -------------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches of a whole epoch on this rank: the epoch being iterated, else the one the
        next ``iter()`` runs (a Packed dataset's pack count changes by epoch); after a resume
        in the middle of an epoch, the whole epoch's, as torch counts it."""
        if self._refs is None:
            return super().__len__()
        self._follow_length()
        refs = self._refs
        if isinstance(refs, OrderedBatchSampler):
            return refs.epoch_batches(self._progress.sized_epoch())
        return len(refs)

    def __iter__(self) -> Iterator[Any]:
        """Begin the next iteration; if it fails before its iterator is handed out, the place
        and the sampler's state are put back, so the next ``iter()`` runs the same epoch from
        the same position instead of skipping it."""
        if self._refs is None:
            return super().__iter__()
        self._follow_length()
        bad = self.bad_samples
        if bad is not None:  # a run already past its bad-sample limit loads nothing
            bad.begin_iteration()
        refs = self._refs
        progress = self._progress.snapshot()
        sampler = None if refs.capture is None else refs.capture.snapshot()
        try:
            return self._begin_iteration(refs, bad)
        except BaseException:
            self._progress.rollback(progress)
            if refs.capture is not None:
                refs.capture.rollback(sampler)
            if isinstance(refs, OrderedBatchSampler):
                refs.at_epoch(self._progress.place()[0])
            raise

    def _begin_iteration(
        self, refs: OrderedBatchSampler | UserBatchSampler, bad: BadSamples | None
    ) -> ResumableIterator:
        """Start the next iteration and its workers; the iterator over its batches."""
        epoch, position = self._progress.begin()
        if self._progress.passed is not None:
            refs.pass_epoch(*self._progress.passed)
        refs.begin(seed=self.seed, epoch=epoch, start=position)
        self._fetch.lookahead = lookahead_for(self.dataset, refs, self.num_workers)
        if self.reseed_globals is not False and self.num_workers > 0:
            bind_for_workers()
        try:
            inner = super().__iter__()
        except RuntimeError as error:  # persistent workers that died between epochs
            failure, broken = worker_failure(error, self.num_workers), self._iterator
            if failure is None or broken is None:
                raise
            stop_workers(broken)
            self._workers_failed(broken)
            raise WorkerError(
                f"{failure}. The workers are restarted at the next iter(); state_dict() still "
                "describes exactly what was delivered"
            ) from error
        length = (
            functools.partial(refs.partition.num_batches, position)
            if isinstance(refs, OrderedBatchSampler)
            else functools.partial(refs.batches_from, position)
        )
        iterator = ResumableIterator(
            inner,
            advances=refs.advances,
            sent=refs.first,
            length=length,
            delivered=self._delivered,
            workers_failed=self._workers_failed,
            num_workers=self.num_workers,
            timeout=self.timeout,
            stall_warning=self.stall_warning,
            received=None if bad is None else bad.received,
        )
        previous = None if self._current is None else self._current()
        if previous is not None:
            previous.superseded_by(iterator)
        self._current = weakref.ref(iterator)
        return iterator

    def _follow_length(self) -> None:
        """Follow a dataset whose length changed since the order was made, as torch's len()
        and iteration do: from the next epoch's start; mid-epoch it is an error (the epoch's
        order depends on the length, so its remaining positions would be other samples)."""
        refs = self._refs
        if not isinstance(refs, OrderedBatchSampler) or refs.capture is not None:
            return  # a user's sampler follows the dataset itself
        old, new = len(refs.order), len(self.dataset)
        if old == new:
            return
        epoch, position, complete = self._progress.place()
        if position > 0 and not complete:
            raise ConfigError(
                f"the dataset's length changed from {old} to {new} samples in the middle of "
                f"epoch {epoch} (at position {position}), whose order depends on its length: "
                "change a dataset's length only between epochs, or build a new loader"
            )
        refs.order = make_order(self.dataset, self._shuffle, self.seed, self._shard_shuffle)
        refs.partition = dataclasses.replace(refs.partition, length=len(refs.order))

    def _get_iterator(self) -> Any:
        # torch's iterators read these attributes once, when built; give them ours meanwhile.
        # object.__setattr__ passes DataLoader's guard against changing them after __init__.
        if self._refs is None:
            return super()._get_iterator()
        index_attr = "batch_sampler" if self._auto_collation else "sampler"
        swaps = {
            "dataset": self._fetch,
            "collate_fn": self._fetch,
            index_attr: self._refs,
            "worker_init_fn": WorkerInit(self.worker_init_fn),
            # torch draws its workers' base seed from this generator (the global one if None):
            # one of our own, so iter() never moves the training loop's RNG
            "generator": _worker_seed_generator(self.seed, self._progress.epoch),
        }
        saved = {name: getattr(self, name) for name in swaps}
        try:
            for name, value in swaps.items():
                object.__setattr__(self, name, value)
            return super()._get_iterator()
        finally:
            for name, value in saved.items():
                object.__setattr__(self, name, value)

    def _delivered(self, iterator: ResumableIterator, samples: int, *, last: bool) -> None:
        """Move the cursor for a batch ``iterator`` handed out (``last``: its epoch is done);
        only the latest iterator moves it."""
        if last:
            self._loop_wait, iterator.waited = self._loop_wait + iterator.waited, 0.0
        if self._current is None or self._current() is not iterator:
            if samples and not iterator.superseded_warned:
                iterator.superseded_warned = True
                warnings.warn(
                    "a batch from an iterator of this loader that a later iter() superseded is "
                    "not counted in state_dict(), which follows the latest iterator only; "
                    "finish or drop an iterator before starting the next",
                    ResumeWarning,
                    stacklevel=3,  # this, the iterator's __next__, the caller
                )
            return
        partition = self.partition
        epoch_length = partition.length if partition is not None else None
        self._progress.advance(samples, last=last, epoch_length=epoch_length)
        if last and samples:  # the epoch's final batch: report what its reads cost
            stats = self.storage_stats()
            if stats is not None:
                self.epoch_storage_stats = log_epoch(stats - self._storage_mark, epoch_length)
                self._storage_mark = stats

    def storage_stats(self) -> StorageStats | None:
        """What reading the dataset from storage cost so far, summed over this loader's
        processes (None: the dataset does not prefetch): bytes and requests fetched, cache hit
        rate, the time the training loop waited on batches, the prefetch depth reached. After
        each epoch, ``epoch_storage_stats`` holds that epoch's (and it is logged at INFO)."""
        if not getattr(self.dataset, "prefetching", False):
            return None
        stats = self.dataset.storage_stats()
        current = self._current() if self._current is not None else None
        stats.loop_wait_seconds = self._loop_wait + (current.waited if current else 0.0)
        return stats

    def _workers_failed(self, inner: Any) -> None:
        """Forget a persistent torch iterator whose workers failed; iter() starts new ones."""
        if self._iterator is inner:
            self._iterator = None

    def __getstate__(self) -> dict[str, Any]:
        """A copy (``copy.deepcopy``, pickle) is of the loader, not of an iteration in flight
        (as torch's DataLoader's; one with persistent workers alive cannot be copied)."""
        return {**self.__dict__, "_current": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A copy (``copy.deepcopy``, pickle) hooks its own visible sampler's ``set_epoch``:
        the copied sampler forwards to no loader (:func:`forward_set_epoch`)."""
        self.__dict__.update(state)
        if self._foreign is not None:
            forward_set_epoch(self.sampler, self.set_epoch)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` run ``epoch`` (as DistributedSampler.set_epoch does).

        After ``load_state_dict``, setting the saved epoch keeps the saved position; if that
        epoch was complete, its iteration yields nothing, so a resumed loop
        ``for e in range(saved_epoch, epochs): loader.set_epoch(e)`` runs every epoch once.
        An iterator already made and not yet read from runs ``epoch`` too (Lightning makes the
        iterator, then sets the epoch), as a sampler's lazily started epoch would.
        """
        again = self._progress.request_epoch(check_epoch(epoch))
        if isinstance(self._refs, OrderedBatchSampler):
            self._refs.at_epoch(epoch)
        sampler = self._refs.capture.sampler if isinstance(self._refs, UserBatchSampler) else None
        if hasattr(sampler, "set_epoch"):  # also a DistributedSampler under a BatchSampler
            sampler.set_epoch(epoch)
        current = self._current() if self._current is not None else None
        if again and current is not None:  # begun, nothing delivered: it runs ``epoch`` now
            current.begin_again(functools.partial(_begin_again, weakref.ref(self), current))

    # -- state -----------------------------------------------------------------------------

    def fingerprint(self, saved: object = None) -> dict[str, int | str]:
        """Everything besides the seed that decides this loader's order, as plain values.

        Args:
            saved: a state_dict to be loaded: the fields are then those this loader's state
                would hold had it been saved by that run, where an order computes them over
                what the run had (a Packed Mixture's lengths, over the saved run's sources: a
                source added for the future changes none of the past's lengths).
        """
        refs = self._require_refs("fingerprint()")
        values: dict[str, int | str] = {"dataset": dataset_fingerprint(self.dataset)}
        # It decides every augmentation; "auto" loads what True does (rngs/idle.py), so each
        # resumes the other's state, and every cursor saved before "auto" existed.
        values["reseed_globals"] = int(self.reseed_globals is not False)
        if isinstance(refs, OrderedBatchSampler):
            values.update(refs.order.settings())
            values["drop_last"] = int(refs.partition.drop_last)
            if refs.partition.trim:  # only when set: the cursors saved before it stay valid
                values["trim"] = 1
            order = resumable_order(refs.order)
            if isinstance(saved, Mapping) and order is not None:
                values.update(order.resumed_settings(saved.get(cursor_mod.ORDER_STATE_KEY)))
        else:  # each rank iterates the sampler itself: its stream may depend on the world size
            own = refs.capture.description
            if refs.capture.sampler is not refs.source:  # under a torch BatchSampler
                own = f"{type(refs.source).__qualname__}({own})"
            values.update(
                order="user_sampler",
                world_size=self.world_size,  # first: it explains a changed DistributedSampler
                sampler=own,
                length=len(self.dataset),
                drop_last=int(refs.drop_last),
            )
        return values

    def state_dict(self, *, check_ranks: bool = False) -> dict[str, Any]:
        """Where the stream is: a small plain dict, identical on every rank; see ``Cursor``.

        Args:
            check_ranks: all-gather every rank's cursor (a collective: call it on all ranks)
                and raise if they differ, e.g. when one rank consumed more batches.
        """
        warn_if_replaced(self.sampler)
        state = self._cursor()
        if check_ranks and self.world_size > 1:
            parallel = self._parallel
            others = gather_cursors(
                state, self.world_size, group=parallel.group, job_wide=parallel.job_wide
            )
            for rank, other in enumerate(others):
                key = cursor_mod.SAMPLER_STATE_KEY
                if other != state and {**other, key: None} == {**state, key: None}:
                    raise StateDictError(
                        f"rank {rank}'s sampler_state differs from rank {self.rank}'s at the "
                        "same place: the ranks' samplers draw different orders (e.g. generators "
                        "seeded differently); seed the sampler's generator alike on every rank"
                    )
                if other != state:
                    raise StateDictError(
                        f"rank {rank}'s cursor (epoch {other.get('epoch')}, position "
                        f"{other.get('position')}) differs from rank {self.rank}'s (epoch "
                        f"{state['epoch']}, position {state['position']}): the ranks consumed "
                        "different numbers of batches; make every rank run the same number "
                        "of steps before saving"
                    )
        return state

    def _cursor(self) -> dict[str, Any]:
        refs = self._require_refs("state_dict()")
        epoch, position, complete = self._progress.place()
        if not complete and position and not self.in_order and self.num_workers > 0:
            raise StateDictError(
                "state_dict() mid-epoch needs in_order=True: with in_order=False and "
                "num_workers > 0 batches arrive out of order, so no position describes what "
                "was delivered; use in_order=True, or take the state at an epoch boundary"
            )
        if isinstance(refs, OrderedBatchSampler):
            if complete:
                position = refs.partition.length
        elif complete:  # a user sampler's epoch length is its own: record the next epoch
            epoch, position = epoch + 1, 0
        # Before an epoch: what it starts from (a fresh loader's is DCP's template, so every
        # key a loaded state may hold is there); within one: what it started from.
        capture = refs.capture
        sampler_state = None if capture is None else capture.saved(in_epoch=not complete)
        if capture is not None:
            capture.warn_unresumable(sampler_state, position=position)
        return dict(
            cursor_mod.make_cursor(
                seed=self.seed,
                epoch=epoch,
                position=position,
                fingerprint=self.fingerprint(),
                sampler_state=sampler_state,
                order_state=self._order_state(epoch, position),
            )
        )

    def state_at(self, epoch: int, position: int) -> dict[str, Any]:
        """The ``state_dict()`` this loader has once ``position`` samples of ``epoch`` are
        delivered: e.g. to resume from a step count (position = steps x global batch size)
        when a checkpoint lacks the loader's state. Only for the loader's own orders, whose
        place is those two numbers; a user's sampler has state of its own.
        """
        refs = self._require_refs("state_at()")
        capture = refs.capture
        if isinstance(refs, UserBatchSampler) or (capture and capture.saved(in_epoch=False)):
            raise StateDictError(
                f"state_at() needs the loader's own order, but it iterates the user's sampler "
                f"{capture.description}, whose state is its own; take state_dict() instead"
            )
        epoch = check_epoch(epoch)
        position = check_int("position", position, high=refs.epoch_positions(epoch) + 1)
        cursor = cursor_mod.make_cursor(
            seed=self.seed,
            epoch=epoch,
            position=position,
            fingerprint=self.fingerprint(),
            order_state=self._order_state(epoch, position),
        )
        return dict(cursor)

    def _order_state(self, epoch: int, position: int) -> Any:
        """The cursor's ``order_state``: an order's own resumable state (a Mixture's), or None."""
        order = resumable_order(self.order)
        return None if order is None else order.resume_state(epoch, position)

    def check_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Every refusal :meth:`load_state_dict` makes, changing nothing: what a caller that
        loads other state with it (a checkpoint's model and optimizer) checks first.

        Returns:
            The parsed state.

        Raises:
            StateDictError: as :meth:`load_state_dict`.
        """
        return self._checked_state(state_dict, log=False)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Make the next ``iter()`` continue from ``state_dict`` (from ``state_dict()``).

        Raises:
            StateDictError: the state is malformed, of an unknown version, or from another
                dataset, order configuration or seed, or a sampler cannot resume at its
                position; the message names the field and the fix. Nothing is changed then.
        """
        refs = self._require_refs("load_state_dict()")
        state = self._checked_state(state_dict, log=True)
        sampler_state = state.get(cursor_mod.SAMPLER_STATE_KEY)
        if refs.capture is not None:
            if sampler_state is not None:  # checked above: it resumes at the position
                refs.capture.restore(sampler_state)
        elif isinstance(refs, OrderedBatchSampler) and state["seed"] != self.seed:
            refs.order = make_order(self.dataset, self._shuffle, state["seed"], self._shard_shuffle)
        self.seed = state["seed"]
        if self._foreign is not None:  # the keys of a foreign loader's batches
            self._foreign.seed = self.seed
        self._progress.load(state["epoch"], state["position"])
        if isinstance(refs, OrderedBatchSampler):
            refs.at_epoch(state["epoch"])

    def _checked_state(self, state_dict: dict[str, Any], *, log: bool) -> dict[str, Any]:
        """The parsed ``state_dict`` once every check passed (``log``: the order logs what the
        resume does, as a load does)."""
        refs = self._require_refs("load_state_dict()")
        reasons = {}
        if isinstance(refs, UserBatchSampler):
            reasons["world_size"] = (
                f"sampler {refs.capture.description} is iterated by every rank itself (it "
                "may split the data across ranks, as a DistributedSampler does), so each rank's "
                "stream depends on the world size; resume on the saved number of ranks, or use "
                "one of torch's samplers (RandomSampler, SequentialSampler, SubsetRandomSampler, "
                "WeightedRandomSampler) or shuffle=True, whose streams the loader splits across "
                "any world size"
            )
        fingerprint = self.fingerprint(state_dict)
        length = fingerprint.get("length")  # our order's: an epoch's positions
        state = cursor_mod.parse_cursor(
            state_dict,
            fingerprint=fingerprint,
            seed=self._explicit_seed,
            reasons=reasons,
            epoch_samples=(
                length if isinstance(refs, OrderedBatchSampler) else refs.epoch_samples()
            ),
        )
        order = resumable_order(self.order)
        if order is not None:  # e.g. a Mixture's schedule: its past unchanged
            order.check_resume(
                state.get(cursor_mod.ORDER_STATE_KEY), state["epoch"], state["position"], log=log
            )
        if refs.capture is not None:
            refs.capture.check(state.get(cursor_mod.SAMPLER_STATE_KEY), position=state["position"])
        return state

    def sample_at(self, epoch: int, position: int) -> dict[str, Any]:
        """Which sample position ``position`` of ``epoch`` delivers, without loading anything:
        ``{"epoch", "position", "id"}`` (the id passed to the dataset), and for a Mixture also
        the source, its own sample id, source epoch and position, the source's seed, draw number
        and phase. For the
        loader's own orders (sequential, shuffled, shard-local: which replays its buffer up to
        the position, as a resume does; Mixture); a user's sampler has an order of its own."""
        order = self.order
        if order is None:
            raise ConfigError(
                "sample_at() needs the loader's own order (shuffle=, shard_shuffle= or a "
                "Mixture), but a user's sampler or an IterableDataset decides this one's"
            )
        epoch = check_epoch(epoch)
        position = check_int("position", position, high=self._refs.epoch_positions(epoch))
        resumable = resumable_order(order)
        if resumable is not None:
            return resumable.provenance(epoch, position)
        sample_id = int(order.ids(epoch, position, position + 1)[0])
        return {"epoch": epoch, "position": position, "id": sample_id}

    def mixture_progress(self) -> dict[str, Any]:
        """How far a Mixture run is, at the place ``state_dict()`` describes: per source its
        draws, epochs completed and fraction of its epoch; the phase and its weights."""
        order = resumable_order(self.order)
        if order is None:
            raise ConfigError(
                f"mixture_progress() needs a Mixture dataset, got {type(self.dataset).__name__}"
            )
        state = self._cursor()
        return order.progress(state["epoch"], state["position"])

    def _require_refs(self, what: str) -> OrderedBatchSampler | UserBatchSampler:
        if self._refs is None:
            raise StateDictError(
                f"{what} needs a map-style dataset: {type(self.dataset).__name__} is an "
                "IterableDataset, whose order lives inside its own __iter__ and cannot be "
                "resumed by position; use a map-style Dataset (for shards: "
                "resumable_loader.TarShardDataset or ParquetDataset)"
            )
        return self._refs


class IterableDatasetLoader(ResumableDataLoader):
    """The loader over an ``IterableDataset`` (``DataLoader(iterable)`` makes one): it iterates
    as torch's does, and has no ``state_dict``/``load_state_dict``, as torch's has none.

    The dataset's order lives in its own ``__iter__``, so no position can be saved. Reading
    either attribute raises :class:`NotResumableError` (an ``AttributeError`` saying why), and
    the class sets both to None, which is how ``typing``'s runtime protocols see a method as
    absent: frameworks that save every loader with a ``state_dict`` (Lightning's checkpoints,
    ``isinstance(loader, Stateful)``) then treat it as torch's instead of failing at their
    first save.
    """

    state_dict = None  # type: ignore[assignment]
    load_state_dict = None  # type: ignore[assignment]

    def __getattribute__(self, name: str) -> Any:
        if name in _CURSOR_METHODS:
            raise NotResumableError(
                f"{name}() needs a map-style dataset: {type(self.dataset).__name__} is an "
                "IterableDataset, whose order lives inside its own __iter__ and cannot be "
                f"resumed by position (so this loader has no {name}, as torch's DataLoader has "
                "none); use a map-style Dataset (for shards: resumable_loader.TarShardDataset "
                "or ParquetDataset)"
            )
        return super().__getattribute__(name)


_CURSOR_METHODS = frozenset({"state_dict", "load_state_dict"})


def _worker_seed_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator for the base seed torch gives an iteration's workers (their ``random`` and
    torch seeds before any sample key is installed): a pure function of (seed, epoch)."""
    words = derive_words(seed, epoch, 0, Purpose.WORKER_SEED)
    return torch.Generator().manual_seed((words[0] | words[1] << 32) & (2**63 - 1))


def _draw_seed(generator: torch.Generator | None) -> int:
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())
