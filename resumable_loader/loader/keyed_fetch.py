"""Loads a batch in whichever process torch sends it to, each sample under its own key.

torch's fetcher calls ``dataset.__getitems__(index)`` and then ``collate_fn(result)``, in the
same process, for every batch. :class:`KeyedFetch` plays both parts for the duration of an
iteration: as the dataset it passes the batch reference through untouched, and as the collate
function it loads the batch (installing each sample's key first), installs the batch key and
runs the user's collate_fn. Doing all of it in one call lets the main process (num_workers=0)
put the global RNG states it reseeds back afterwards, so loading never perturbs the training
loop's randomness (with ``reseed_globals=False`` nothing is reseeded, so nothing is saved).
Under ``on_sample_error="substitute"`` a batch whose load recorded failed samples is handed
over with them (``bad_samples.WithFailures``), for the main process to count as it delivers it.

A dataset that reads a batch at once (``__getitems__``, as HF ``datasets.Dataset`` has) is read
so, as torch reads it: one call per batch, under the key of the batch's first sample, with each
sample's own key available to it through :func:`batch_sample_keys`. What that means for a
batched transform's randomness is said in docs/integrations.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from torch.utils.data import Dataset, StackDataset, Subset, get_worker_info

from resumable_loader.errors import ResumableLoaderError
from resumable_loader.loader.bad_samples import substitutable
from resumable_loader.order.philox import Purpose, derive_words
from resumable_loader.rngs import sample as keys
from resumable_loader.rngs.idle import GeneratorsInUse
from resumable_loader.rngs.process import this_process
from resumable_loader.rngs.sample import (
    SampleKey,
    clear_key,
    enter_samples,
    install_key,
    install_sample_key,
    sample_key,
    sample_place,
)
from resumable_loader.rngs.sample import (  # re-exported: the sources import it from here
    install_batch_sample_key as install_batch_sample_key,
)

if TYPE_CHECKING:  # lookahead imports refs, which imports this module
    from resumable_loader.loader.bad_samples import BadSamples
    from resumable_loader.loader.lookahead import Lookahead

# The fetch's on_sample_error policy and reseed_globals, for a dataset whose items hold samples
# it reads itself (read_samples_at), or None.
_policy: tuple[BadSamples, bool] | None = None


def batch_sample_keys() -> list[SampleKey]:
    """The keys of the samples being loaded now, in the order of the ids being read.

    Inside a batched read (a dataset's ``__getitems__``, e.g. an HF dataset's
    ``set_transform`` function), one key per sample of the batch: a transform that draws each
    row's randomness from its row's key (``key.numpy_generator()``) replays exactly under any
    batch size, world size or resume, as a per-sample ``__getitem__`` does. Elsewhere, the one
    sample being loaded, so the same transform also works read a sample at a time.

    Raises:
        ResumableLoaderError: when called outside a ResumableDataLoader fetch.
    """
    positions = keys.batch_positions
    if positions is None:
        return [sample_key()]
    seed, epoch, _ = sample_place()
    return [
        SampleKey(seed, epoch, p, Purpose.SAMPLE, derive_words(seed, epoch, p, Purpose.SAMPLE))
        for p in positions
    ]


def reads_batched(dataset: Dataset) -> bool:
    """Whether ``dataset.__getitems__`` really reads a batch at once.

    torch's ``Subset`` and ``StackDataset`` define ``__getitems__`` yet fall back to one
    ``__getitem__`` per sample unless the datasets they wrap read batched; those are read a
    sample at a time here, so each sample keeps its own reseed of the global RNGs.
    """
    if isinstance(dataset, Subset):
        return reads_batched(dataset.dataset)
    if isinstance(dataset, StackDataset):
        inner = dataset.datasets
        return all(reads_batched(d) for d in (inner.values() if isinstance(inner, dict) else inner))
    return callable(getattr(type(dataset), "__getitems__", None))


class BatchRef(NamedTuple):
    """What the main process sends to a worker for one batch: ids at positions start, start+1..

    ``key_stride`` spaces the key positions of consecutive samples (1 for our own orders; the
    world size for a user's sampler, whose ranks interleave their key positions).
    """

    seed: int
    epoch: int
    start: int
    ids: list[int]
    key_stride: int = 1


class SampleRef(NamedTuple):
    """One sample, when torch's auto-batching is off (batch_size=None)."""

    seed: int
    epoch: int
    position: int
    id: int


class KeyedFetch(Dataset):
    """Stands in for the dataset and the collate_fn of a ResumableDataLoader iteration.

    Args:
        dataset: the user's map-style dataset.
        collate_fn: the user's (or torch's default) collate function.
        reseed_globals: reseed ``random``, numpy's and torch's global RNGs per sample: True,
            False, or "auto" (those its samples were seen to change here; rngs/idle.py).
    """

    def __init__(
        self, dataset: Dataset, collate_fn: Callable[[Any], Any], *, reseed_globals: bool | str
    ) -> None:
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.reseed_globals = reseed_globals
        self.in_use = GeneratorsInUse()  # under "auto": the generators reseeded per sample
        self.batched = reads_batched(dataset)
        # items that hold several samples of the order (a pack), read by read_samples_at
        self.holds_samples = bool(getattr(dataset, "holds_samples", False))
        self.lookahead: Lookahead | None = None  # tells a prefetching dataset what comes next
        self.bad_samples: BadSamples | None = None  # on_sample_error="substitute"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, ref: SampleRef) -> SampleRef:
        return ref

    def __getitems__(self, ref: BatchRef) -> BatchRef:
        return ref

    def __call__(self, ref: BatchRef | SampleRef) -> Any:
        if get_worker_info() is not None:
            return self._load(ref)
        rngs = this_process() if self.reseed_globals else None
        saved = rngs.save() if rngs is not None else None
        try:
            return self._load(ref)
        finally:
            clear_key()
            if rngs is not None:
                rngs.restore(saved)

    def _load(self, ref: BatchRef | SampleRef) -> Any:
        global _policy
        reseed = self.reseed_globals
        policy = bad = self.bad_samples
        _policy = None
        if policy is not None:
            # A batch loaded again would log its bad samples twice: "auto" reseeds every
            # generator before every sample here, as True does (the same stream).
            reseed = reseed is not False
            policy.begin_load(ref.epoch)
            if self.holds_samples:  # it substitutes its own samples (read_samples_at)
                _policy, bad = (policy, reseed), None
        if self.lookahead is not None and isinstance(ref, BatchRef):
            self.lookahead.before(self.dataset, ref.epoch, ref.start, ref.ids)
        if reseed != "auto":
            batch = self._fetch(ref, reseed, bad)
            # its failures go with it to the main process, which counts them (bad_samples.py)
            return batch if policy is None else policy.reported(batch)
        while True:  # at most once more per generator
            try:
                result = self._fetch(ref, self.in_use.enter(ref.seed, ref.epoch), None)
            except Exception:  # it may have failed for a draw from an entry state: True's?
                if self.in_use.went_live():
                    continue
                raise
            if not self.in_use.went_live():
                return result

    def _fetch(self, ref: BatchRef | SampleRef, reseed: bool | int, bad: BadSamples | None) -> Any:
        """Load and collate ``ref``'s samples, reseeding the global generators ``reseed``
        (True, False or a set of them, as :func:`install_key` takes) before each."""
        if isinstance(ref, SampleRef):
            install_key(ref.seed, ref.epoch, ref.position, Purpose.SAMPLE, reseed_globals=reseed)
            if bad is not None:
                key = (ref.seed, ref.epoch, ref.position)
                return self.collate_fn(bad.read(self.dataset, ref.id, key, reseed))
            return self.collate_fn(self.dataset[ref.id])
        seed, epoch, dataset = ref.seed, ref.epoch, self.dataset
        samples = None
        if self.batched and (bad is None or bad.batch_readable(ref.ids)):
            try:
                samples = self._read_batch(ref, reseed)
            except Exception as error:  # the dataset's own, or damage: find the sample below
                if bad is None or not substitutable(error):
                    raise
        if samples is None:  # substitutes are per sample: read one at a time
            samples = []
            enter_samples(seed, epoch, reseed_globals=reseed)
            for position, sample_id in zip(
                range(ref.start, ref.start + len(ref.ids) * ref.key_stride, ref.key_stride),
                ref.ids,
                strict=True,
            ):
                install_sample_key(position)
                if bad is None:
                    samples.append(dataset[sample_id])
                elif sample_id in bad.known:  # quarantined: not read again
                    samples.append(
                        bad.substitute(dataset, sample_id, (seed, epoch, position), reseed)
                    )
                else:  # BadSamples.read, inlined: a sample that loads costs a lookup
                    try:
                        samples.append(dataset[sample_id])
                    except Exception as error:  # the dataset's own, whatever its type
                        key = (seed, epoch, position)
                        samples.append(bad.failed(dataset, sample_id, key, reseed, error))
        install_key(seed, epoch, ref.start, Purpose.BATCH, reseed_globals=reseed)
        return self.collate_fn(samples)

    def _read_batch(self, ref: BatchRef, reseed: bool | int) -> list[Any]:
        """One ``__getitems__`` call under the first sample's key (a batch of one is read
        exactly as ``__getitem__`` would be), every sample's key in ``batch_sample_keys()``.
        """
        install_key(ref.seed, ref.epoch, ref.start, Purpose.SAMPLE, reseed_globals=reseed)
        stop = ref.start + len(ref.ids) * ref.key_stride
        return _read_keyed(self.dataset, list(ref.ids), range(ref.start, stop, ref.key_stride))


def read_batch_at(dataset: Dataset, ids: list[int], positions: Sequence[int]) -> list[Any]:
    """Inside a fetch, read ``ids`` with one ``dataset.__getitems__`` call, sample k under the
    key of position ``positions[k]`` of the fetch's (seed, epoch): for a dataset whose item
    holds several samples of the order (a pack), so that a batched read of them keeps each
    sample's own key, as :meth:`KeyedFetch._read_batch` does for a batch (the first sample's
    key installed, every sample's in ``batch_sample_keys()``). The batched read in progress,
    if any, is restored afterwards.

    Raises:
        ResumableLoaderError: outside a ResumableDataLoader fetch, or when ``__getitems__``
            returns another number of samples.
    """
    outer = keys.batch_positions
    install_sample_key(positions[0])
    try:
        return _read_keyed(dataset, ids, positions)
    finally:
        keys.batch_positions = outer


def read_samples_at(
    dataset: Dataset, ids: list[int], positions: Sequence[int]
) -> tuple[list[Any], list[int]]:
    """Inside a fetch, samples ``ids`` of the order, sample k under the key of position
    ``positions[k]``: what a dataset whose items hold several samples (a pack; it sets
    ``holds_samples = True``) reads them with. In one ``__getitems__`` call when the dataset
    reads batches (:func:`read_batch_at`), else one ``dataset[i]`` each; under the loader's
    ``on_sample_error="substitute"``, one at a time, and a sample that fails (or was
    quarantined) is replaced as the loader replaces one (:mod:`.bad_samples`: drawn from its
    position, loaded under its key). Returns the samples and the indices of the substituted.

    Raises:
        ResumableLoaderError: when called outside a ResumableDataLoader fetch.
    """
    if _policy is None:
        if reads_batched(dataset):
            return read_batch_at(dataset, ids, positions), []
        samples = []
        for sample_id, position in zip(ids, positions, strict=True):
            install_sample_key(position)
            samples.append(dataset[sample_id])
        return samples, []
    bad, reseed = _policy
    seed, epoch, _ = sample_place()
    samples, substituted = [], []
    for index, (sample_id, position) in enumerate(zip(ids, positions, strict=True)):
        install_sample_key(position)
        key = (seed, epoch, position)
        if sample_id in bad.known:  # quarantined: not read again
            samples.append(bad.substitute(dataset, sample_id, key, reseed))
            substituted.append(index)
            continue
        try:
            samples.append(dataset[sample_id])
        except Exception as error:  # the dataset's own, whatever its type
            samples.append(bad.failed(dataset, sample_id, key, reseed, error))
            substituted.append(index)
    return samples, substituted


def _read_keyed(dataset: Dataset, ids: list[int], positions: Sequence[int]) -> list[Any]:
    """``dataset.__getitems__(ids)`` with ``positions`` as the batched read's key positions."""
    keys.batch_positions = positions
    try:
        samples = dataset.__getitems__(ids)
    finally:
        keys.batch_positions = None
    if len(samples) != len(ids):
        raise ResumableLoaderError(
            f"{type(dataset).__name__}.__getitems__ returned {len(samples)} samples "
            f"for {len(ids)} ids; it must return one per id, in order"
        )
    return samples


class WorkerInit:
    """The worker_init_fn torch runs: shows the user's dataset, then runs the user's function.

    torch's workers hold the KeyedFetch that stands in for the dataset; ``get_worker_info()``
    must still give user code (worker_init_fn, __getitem__) the user's own dataset object, the
    one the worker loads from, so that attributes set on it in worker_init_fn take effect.
    """

    def __init__(self, user_fn: Callable[[int], None] | None) -> None:
        self.user_fn = user_fn

    def __call__(self, worker_id: int) -> None:
        info = get_worker_info()
        if isinstance(info.dataset, KeyedFetch):
            object.__setattr__(info, "dataset", info.dataset.dataset)  # WorkerInfo is frozen
        if self.user_fn is not None:
            self.user_fn(worker_id)
