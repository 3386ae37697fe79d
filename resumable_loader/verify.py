"""Proves a pipeline resumable: its stream, interrupted and resumed in any topology, is unchanged.

``verify_pipeline`` runs the user's pipeline continuously twice (num_workers=0, then with
workers), which must agree, else the pipeline itself is nondeterministic; then once per resume
configuration, interrupted at the stops and resumed from ``state_dict()`` (through msgpack)
alternately as the reference configuration and as another (worker count, batch size, world
size). Ranks are simulated in one process: one loader per rank, stepped in lockstep. Every
delivered sample must equal the continuous run's sample at the same (epoch, position), and
every batch-level field (see ``stream_digest``) the continuous run's in the batch of the same
positions. A factory's torch DataLoader is verified as the equivalent ResumableDataLoader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import importlib
import itertools
import os
import random
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    default_collate,
)

from resumable_loader.errors import ConfigError, ResumableLoaderError
from resumable_loader.loader import ResumableDataLoader
from resumable_loader.stream_digest import (
    BatchRecord,
    Config,
    Interruption,
    Layout,
    Record,
    Stop,
    Stream,
    StreamError,
    learn_layout,
    ordered_sampler,
    run_chain,
)

DEFAULT_STOPS = (0.3, 0.7)
DEFAULT_WORKERS = 2  # compared against num_workers=0 when the factory's loader has none
# Loader options torch rejects with num_workers=0; dropped for the in-process configurations.
_WORKER_ONLY = ("prefetch_factor", "persistent_workers", "multiprocessing_context")

Kind = Literal["nondeterministic", "worker-dependent", "resume", "loader"]
_CAUSES: dict[str, str] = {
    "nondeterministic": (
        "the dataset or transform draws randomness not derived from the sample key, e.g. an "
        "unseeded np.random.default_rng() or its own random.Random(); use "
        "resumable_loader.sample_numpy_generator()/sample_torch_generator() or the reseeded "
        "global RNGs"
    ),
    "worker-dependent": (
        "the output depends on the process that loads the sample: on get_worker_info() (the "
        "worker id or count) or on state the dataset keeps between samples (a counter, an RNG "
        "made in __init__); derive it from the sample key (resumable_loader.sample_key(), "
        "sample_numpy_generator())"
    ),
    "resume": (
        "the stream is not a function of (seed, epoch, position) alone: the dataset keeps state "
        "between samples (a counter, a cache, an RNG made in __init__), or collate_fn draws "
        "batch-level randomness or pads each sample to its batch's longest, which changes with "
        "the batch size and world size"
    ),
    "loader": (
        "the loader's batches or cursor disagree with its own partition: a resumable_loader "
        "bug; please report it with this output"
    ),
}


class PipelineError(ResumableLoaderError):
    """The user's code (the factory, the dataset, the collate_fn) raised: verify could not run
    the pipeline, which is no verdict on it. The original exception is the ``__cause__``.
    """


@contextlib.contextmanager
def _users_code(what: str) -> Iterator[None]:
    """Turn an exception raised inside ``what`` into a PipelineError naming it in one line;
    the package's own errors and a StreamError (a verdict) pass unchanged.
    """
    try:
        yield
    except (ResumableLoaderError, StreamError):
        raise
    except Exception as error:
        # torch re-raises a worker's error with the worker's traceback in the message
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = " ... ".join(dict.fromkeys(lines[:1] + lines[-1:]))
        raise PipelineError(f"{what} raised {type(error).__name__}: {message}") from error


@dataclasses.dataclass(frozen=True)
class Divergence:
    """The first sample (or cursor) where a run differs from the continuous reference run.

    ``field`` is a path into the sample (``image``, ``meta.label``, ``[0]``), or, in brackets,
    what else differed: ``(sample id)``, ``(state_dict)``, ``(batches)``, ``(positions)``.
    ``expected`` and ``got`` are the two digests (or values) of that field. ``stop`` is set
    when the field is a batch-level one, of the batch of positions [position, stop).
    """

    kind: Kind
    run: str
    epoch: int
    position: int
    sample_id: int | None
    field: str
    expected: str
    got: str
    stop: int | None = None

    def __str__(self) -> str:
        sample = "" if self.sample_id is None else f", sample id {self.sample_id}"
        where = f"position {self.position} (epoch {self.epoch}{sample})"
        if self.stop is not None:
            where = (
                f"the batch of positions {self.position} to {self.stop - 1} (epoch {self.epoch})"
            )
        cause = textwrap.fill(_CAUSES[self.kind], 98, initial_indent="  ", subsequent_indent="  ")
        return (
            f"{self.run} differ at {where}, field '{self.field}':\n"
            f"  expected {self.expected}, got {self.got}\n{cause}"
        )


@dataclasses.dataclass(frozen=True)
class ResumedRun:
    """One interrupted run: its chain of configurations and where it was really interrupted
    (at global-batch boundaries, so usually after the requested stop; or not at all).
    """

    chain: str
    interruptions: list[Interruption]

    def __str__(self) -> str:
        # no interruptions when the loader failed first
        return "\n".join([f"  resumed as {self.chain}", *(f"    {i}" for i in self.interruptions)])


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What ``verify_pipeline`` compared, and the first divergence (None when it passed).

    ``runs`` are the interrupted runs with where each really stopped; ``notes`` what verify
    made of the factory's result (a torch DataLoader converted); ``batch_fields`` the fields no
    one sample owns, compared in ``batches_compared`` batches of the same positions as in the
    continuous run and not in ``batches_not_comparable`` others.
    """

    factory: str
    epochs: int
    stops: list[str]
    runs: list[ResumedRun]
    notes: list[str]
    samples_compared: int
    batch_fields: list[str]
    batches_compared: int
    batches_not_comparable: int
    divergence: Divergence | None

    @property
    def passed(self) -> bool:
        return self.divergence is None

    @property
    def configurations(self) -> list[str]:
        """The chains of configurations tried, one per interrupted run."""
        return [run.chain for run in self.runs]

    def __str__(self) -> str:
        lines = [
            f"verify {self.factory}: {self.epochs} epoch(s), stops requested "
            f"{', '.join(self.stops)}",
            *(textwrap.fill(note, 98) for note in self.notes),
            *map(str, self.runs),
            f"{self.samples_compared} samples compared, {len(self.runs)} resume "
            "configurations tried (state_dict passed through msgpack)",
        ]
        if self.batch_fields:
            note = (
                f"batch-level fields {', '.join(self.batch_fields)} (not attributable to one "
                "sample, so not comparable across batch sizes): compared in "
                f"{self.batches_compared} batches covering the same positions as in the "
                f"continuous run; {self.batches_not_comparable} batches covering other "
                "positions not compared"
            )
            lines.append(textwrap.fill(note, 98))
        lines.append("PASS" if self.divergence is None else f"FAIL: {self.divergence}")
        return "\n".join(lines)


def load_factory(spec: str) -> Callable[[], Any]:
    """Import ``module:function`` (the module from the current directory or sys.path).

    Raises:
        ConfigError: the spec is malformed, the module does not import, or the name is not a
            callable in it.
    """
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ConfigError(
            f"FACTORY must be module:function (e.g. mypackage.data:make_loader), got {spec!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ConfigError(
            f"cannot import module {module_name!r}: {type(error).__name__}: {error}"
        ) from error
    function = getattr(module, function_name, None)
    if function is None:
        raise ConfigError(f"function {function_name!r} not found in module {module_name!r}")
    if not callable(function):
        raise ConfigError(f"{spec} is a {type(function).__name__}, not a function")
    return function


class _Pipeline:
    """Builds the loaders of any configuration from the user's factory, each over a fresh
    dataset (as a resumed job would), all with the same explicit seed.
    """

    def __init__(self, factory: Callable[[], Any], name: str, seed: int) -> None:
        self.factory, self.name = factory, name
        _, kwargs, self.conversion = self._call()
        self.batch_size: int | None = kwargs.get("batch_size", 1)
        self.num_workers: int = kwargs.get("num_workers", 0)
        self.seed: int = seed if kwargs.get("seed") is None else kwargs["seed"]

    def _call(self) -> tuple[Dataset, dict[str, Any], str | None]:
        """The factory's dataset and loader arguments, and, when it returned a torch
        DataLoader, a note of what it was converted to.
        """
        with _users_code(f"{self.name}()"):
            result = self.factory()
        if isinstance(result, ResumableDataLoader):
            ordered_sampler(result)
            return result.dataset, _loader_kwargs(result), None
        if isinstance(result, DataLoader):
            kwargs = _torch_loader_kwargs(result, self.name)
            shown = ", ".join(f"{key}={kwargs[key]!r}" for key in _SHOWN if key in kwargs)
            return (
                result.dataset,
                kwargs,
                (
                    f"{self.name}() returned a torch DataLoader: converted to the equivalent "
                    f"ResumableDataLoader({shown}, ...), whose order comes from its seed, not "
                    "from the DataLoader's sampler or generator"
                ),
            )
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping):
            return result[0], dict(result[1]), None
        raise ConfigError(
            f"{self.name}() returned a {type(result).__name__}, not a ResumableDataLoader, a "
            "torch DataLoader or a (dataset, loader_kwargs dict) pair"
        )

    @functools.cached_property
    def layout(self) -> Layout:
        """How the collate_fn lays out a batch: learnt from its outputs for the batch size and
        one more copies of the first sample, collated as the loader would, in its batch key.
        """
        if self.batch_size is None:
            return {}
        dataset, kwargs, _ = self._call()
        collate = kwargs.get("collate_fn") or default_collate
        sizes = (self.batch_size, self.batch_size + 1)
        with _users_code(f"collating copies of {self.name}()'s first sample"):
            probe = ResumableDataLoader(
                dataset,
                collate_fn=lambda one: [collate(one * size) for size in sizes],
                seed=self.seed,
                reseed_globals=kwargs.get("reseed_globals", True),
            )
            small, large = next(iter(probe))
        return learn_layout(small, large, self.batch_size)

    def loaders(self, config: Config) -> list[ResumableDataLoader]:
        """One loader per rank of ``config``."""
        return [self._loader(config, rank) for rank in range(config.world_size)]

    def _loader(self, config: Config, rank: int) -> ResumableDataLoader:
        dataset, kwargs, _ = self._call()
        kwargs.update(
            num_workers=config.num_workers,
            batch_size=config.batch_size,
            seed=self.seed,
            rank=rank,
            world_size=config.world_size,
        )
        if config.num_workers == 0:
            for name in _WORKER_ONLY:
                kwargs.pop(name, None)
        with _users_code(f"building {self.name}()'s loader"):
            try:
                loader = ResumableDataLoader(dataset, **kwargs)
            except TypeError as error:
                raise ConfigError(
                    f"{self.name}() gave loader arguments ResumableDataLoader does not take: "
                    f"{error}"
                ) from error
        ordered_sampler(loader)
        return loader


def _torch_arguments(loader: DataLoader) -> dict[str, Any]:
    """The torch DataLoader arguments of ``loader`` that carry over as they are."""
    return dict(
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
        in_order=loader.in_order,
    )


def _loader_kwargs(loader: ResumableDataLoader) -> dict[str, Any]:
    """The arguments that rebuild ``loader`` (its seed only if it was chosen explicitly)."""
    return dict(
        _torch_arguments(loader),
        shuffle=loader._shuffle,
        seed=loader._explicit_seed,
        reseed_globals=loader.reseed_globals,
        shard_shuffle=loader._shard_shuffle,
    )


_SHOWN = ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last", "num_workers")


def _torch_loader_kwargs(loader: DataLoader, name: str) -> dict[str, Any]:
    """The ResumableDataLoader arguments equivalent to a torch DataLoader's: shuffle for its
    RandomSampler (without replacement, over the whole dataset) or SequentialSampler; any
    other sampler or batch_sampler is passed on (which verify refuses: it cannot place the
    samples of an order it does not make).

    Raises:
        ConfigError: the DataLoader's dataset is an IterableDataset, which has no order to
            convert.
    """
    if isinstance(loader.dataset, IterableDataset):
        raise ConfigError(
            f"{name}() returned a DataLoader of {type(loader.dataset).__name__}, which cannot be "
            f"converted: {type(loader.dataset).__name__} is an IterableDataset, whose order lives "
            "in its own __iter__; verify needs a map-style Dataset"
        )
    kwargs = _torch_arguments(loader)
    if loader.batch_size is None and loader.batch_sampler is not None:  # the user's own
        kwargs.update(batch_size=1, batch_sampler=loader.batch_sampler)
        return kwargs
    sampler, length = loader.sampler, len(loader.dataset)
    if type(sampler) is SequentialSampler and len(sampler) == length:
        kwargs["shuffle"] = False
    elif (
        type(sampler) is RandomSampler
        and not sampler.replacement
        and sampler.num_samples == len(sampler.data_source) == length
    ):
        kwargs["shuffle"] = True
    else:
        kwargs["sampler"] = sampler
    return kwargs


def _run(
    pipeline: _Pipeline,
    chain: Sequence[Config],
    stops: Sequence[Stop],
    epochs: int,
    name: str,
) -> tuple[Stream, list[Interruption], Divergence | None]:
    """The records of a run, where it was interrupted, and where the loader's own bookkeeping
    went wrong, if it did.
    """
    stream = Stream()
    try:
        with _users_code(f"loading as {' -> '.join(map(str, chain))}"):
            interruptions = run_chain(
                pipeline.loaders, chain, stops, stream, epochs=epochs, layout=pipeline.layout
            )
    except StreamError as error:
        at = error.place
        return (
            stream,
            [],
            Divergence(
                "loader", name, at.epoch, at.position, None, error.what, error.expected, error.got
            ),
        )
    return stream, interruptions, None


Reference = Mapping[tuple[int, ...], Record | BatchRecord]


def _reference(stream: Stream) -> Reference:
    return {record.key: record for record in itertools.chain(stream.records, stream.batch_records)}


@dataclasses.dataclass
class _Tally:
    """What comparisons with the reference covered."""

    samples: int = 0
    batches: int = 0
    batches_not_comparable: int = 0


def _compare(
    reference: Reference, stream: Stream, kind: Kind, name: str, tally: _Tally
) -> Divergence | None:
    """Compare a run's records with the reference, in stream order, until the first
    difference, if any, counting what was compared into ``tally``.

    Sample records at positions the reference lacks (an epoch's tail that the reference's
    drop_last dropped and a resumed topology delivers) cannot be checked and are skipped; so
    are batch records of batches the reference has not (other positions: another batch size).
    """
    delivered = heapq.merge(
        stream.records, stream.batch_records, key=lambda r: (r.epoch, r.position)
    )
    for got in delivered:
        expected = reference.get(got.key)
        is_batch = isinstance(got, BatchRecord)
        if expected is None:
            tally.batches_not_comparable += is_batch
            continue
        pairs = [] if is_batch else [("(sample id)", str(expected.sample_id), str(got.sample_id))]
        for field in {**expected.fields, **got.fields}:
            pairs.append(
                (field, expected.fields.get(field, "<missing>"), got.fields.get(field, "<missing>"))
            )
        different = [(field, want, have) for field, want, have in pairs if want != have]
        if different:
            sample_id, stop = (None, got.stop) if is_batch else (expected.sample_id, None)
            return Divergence(
                kind, name, got.epoch, got.position, sample_id, *different[0], stop=stop
            )
        tally.batches += is_batch
        tally.samples += not is_batch
    return None


def verify_pipeline(
    factory: Callable[[], Any] | str,
    *,
    epochs: int = 1,
    stops: Sequence[float] | None = None,
    stop_batches: Sequence[int] | None = None,
    random_stops: int | None = None,
    seed: int = 0,
    world_sizes: Sequence[int] = (1, 2),
    batch_sizes: Sequence[int] | None = None,
    num_workers: int | None = None,
) -> VerifyReport:
    """Check that ``factory``'s stream is deterministic and survives any interruption.

    Args:
        factory: a callable (or its ``"module:function"``) returning a ResumableDataLoader or a
            ``(dataset, loader_kwargs)`` pair; called afresh for every loader.
        epochs: epochs per run.
        stops: where runs are interrupted, as fractions of the run's samples (default 0.3, 0.7).
        stop_batches: instead, after how many global batches of the run (cumulative).
        random_stops: instead, this many stops drawn uniformly with ``seed``.
        seed: the random stops' seed, and the loader seed when the factory sets none.
        world_sizes, batch_sizes: the simulated world sizes and per-rank batch sizes to resume
            with (batch sizes default to the factory's and one more).
        num_workers: the worker count compared with num_workers=0 and resumed with (default:
            the factory's, or 2).

    Raises:
        ConfigError: the factory or the options are unusable; the message says why.
        PipelineError: the factory, dataset or collate_fn raised (the cause is chained).
    """
    name = factory if isinstance(factory, str) else getattr(factory, "__qualname__", "factory")
    pipeline = _Pipeline(load_factory(factory) if isinstance(factory, str) else factory, name, seed)
    _check_ints("epochs", [epochs], minimum=1)
    if num_workers is None:
        num_workers = pipeline.num_workers or DEFAULT_WORKERS
    _check_ints("num_workers", [num_workers], minimum=0)
    base = Config(0, pipeline.batch_size, 1)
    configs = _configurations(pipeline, world_sizes, batch_sizes, num_workers)
    total = epochs * ordered_sampler(pipeline.loaders(base)[0]).partition.end()
    stop_points = _stop_points(total, stops, stop_batches, random_stops, seed)

    continuous, _, divergence = _run(pipeline, [base], [], epochs, "the continuous run")
    reference, tally = _reference(continuous), _Tally()
    if divergence is None:
        parallel = Config(num_workers, pipeline.batch_size, 1)
        divergence = _check_continuous(pipeline, reference, base, parallel, epochs, tally)
    runs: list[ResumedRun] = []
    for config in configs:
        if divergence is not None:
            break
        chain = [config if i % 2 else base for i in range(len(stop_points) + 1)]
        described = " -> ".join(map(str, chain))
        run_name = f"the run resumed as {described} and the continuous run"
        stream, interruptions, failure = _run(pipeline, chain, stop_points, epochs, run_name)
        runs.append(ResumedRun(described, interruptions))
        divergence = _compare(reference, stream, "resume", run_name, tally) or failure
    return VerifyReport(
        factory=name,
        epochs=epochs,
        stops=[str(stop) for stop in stop_points],
        runs=runs,
        notes=[pipeline.conversion] if pipeline.conversion else [],
        samples_compared=tally.samples,
        batch_fields=sorted(
            {field for batch in continuous.batch_records for field in batch.fields}
        ),
        batches_compared=tally.batches,
        batches_not_comparable=tally.batches_not_comparable,
        divergence=divergence,
    )


def _check_continuous(
    pipeline: _Pipeline,
    reference: Reference,
    base: Config,
    parallel: Config,
    epochs: int,
    tally: _Tally,
) -> Divergence | None:
    """Compare the reference with a continuous run with workers. On a difference, a second
    run without workers tells a random pipeline (it differs too) from a worker-dependent one.
    """
    name = f"continuous runs with num_workers=0 and num_workers={parallel.num_workers}"
    stream, _, failure = _run(pipeline, [parallel], [], epochs, name)
    divergence = _compare(reference, stream, "worker-dependent", name, tally)
    if divergence is not None:
        again, _, _ = _run(pipeline, [base], [], epochs, "two continuous runs")
        repeat = _compare(reference, again, "nondeterministic", "two continuous runs", _Tally())
        divergence = repeat or divergence
    return divergence or failure


def _configurations(
    pipeline: _Pipeline,
    world_sizes: Sequence[int],
    batch_sizes: Sequence[int] | None,
    workers: int,
) -> list[Config]:
    """Every (world size, batch size, worker count) combination to resume as."""
    _check_ints("world_sizes", world_sizes, minimum=1)
    if pipeline.batch_size is None:
        if batch_sizes:
            raise ConfigError(
                f"{pipeline.name}()'s loader has batch_size=None (no auto-batching), so there is "
                "no batch size to vary; drop the batch sizes option"
            )
        sizes: Sequence[int | None] = [None]
    else:
        sizes = batch_sizes or [pipeline.batch_size, pipeline.batch_size + 1]
        _check_ints("batch_sizes", sizes, minimum=1)
    return [
        Config(num_workers, batch_size, world_size)
        for world_size, batch_size, num_workers in itertools.product(
            world_sizes, sizes, dict.fromkeys([0, workers])
        )
    ]


def _stop_points(
    total: int,
    fractions: Sequence[float] | None,
    batches: Sequence[int] | None,
    random_stops: int | None,
    seed: int,
) -> list[Stop]:
    """The run's interruptions, in the order they happen (``total``: samples in a run)."""
    if total == 0:
        raise ConfigError("the pipeline delivers no samples: its dataset is empty")
    if sum(option is not None for option in (fractions, batches, random_stops)) > 1:
        raise ConfigError("give only one of stops, stop_batches and random_stops")
    if batches is not None:
        _check_ints("stop_batches", batches, minimum=1)
        return [Stop(count, "batches") for count in sorted(batches)]
    if random_stops is not None:
        _check_ints("random_stops", [random_stops], minimum=1, maximum=total - 1)
        counts = random.Random(seed).sample(range(1, total), random_stops)
        return [Stop(count, "samples") for count in sorted(counts)]
    fractions = DEFAULT_STOPS if fractions is None else fractions
    if not all(isinstance(f, float | int) and 0 < f < 1 for f in fractions):
        raise ConfigError(f"stops must be fractions of the run in (0, 1), got {list(fractions)}")
    return [Stop(max(1, round(f * total)), "samples") for f in sorted(fractions)]


def _check_ints(
    name: str, values: Sequence[Any], *, minimum: int, maximum: int | None = None
) -> None:
    for value in values:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        if not ok or (maximum is not None and value > maximum):
            bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{name} must be ints {bound}, got {list(values)}")
