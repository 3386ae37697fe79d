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

import dataclasses
import heapq
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from resumable_loader._checks import check_int
from resumable_loader.errors import ConfigError
from resumable_loader.verify.lockstep import (
    BatchRecord,
    Config,
    Interruption,
    Record,
    Stop,
    Stream,
    StreamError,
    own_order,
    run_chain,
)
from resumable_loader.verify.pipeline import DEFAULT_WORKERS, Pipeline, load_factory, users_code
from resumable_loader.verify.report import Divergence, Kind, ResumedRun, VerifyReport

DEFAULT_STOPS = (0.3, 0.7)


def _run(
    pipeline: Pipeline,
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
        with pipeline.run_quarantine(), users_code(f"loading as {' -> '.join(map(str, chain))}"):
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
    pipeline = Pipeline(load_factory(factory) if isinstance(factory, str) else factory, name, seed)
    _check_ints("epochs", [epochs], minimum=1)
    if num_workers is None:
        num_workers = pipeline.num_workers or DEFAULT_WORKERS
    _check_ints("num_workers", [num_workers], minimum=0)
    base = Config(0, pipeline.batch_size, 1)
    configs = _configurations(pipeline, world_sizes, batch_sizes, num_workers)
    total = epochs * own_order(pipeline.loaders(base)[0])[1].end()
    stop_points = _stop_points(total, stops, stop_batches, random_stops, seed)

    continuous, _, divergence = _run(pipeline, [base], [], epochs, "the continuous run")
    _check_first_stop(stop_points[0], continuous.batches, pipeline.batch_size, epochs)
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
    pipeline: Pipeline,
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
    pipeline: Pipeline,
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
    if not fractions or not all(isinstance(f, float | int) and 0 < f < 1 for f in fractions):
        raise ConfigError(f"stops must be fractions of the run in (0, 1), got {list(fractions)}")
    return [Stop(max(1, round(f * total)), "samples") for f in sorted(fractions)]


def _check_first_stop(stop: Stop, batches: int, batch_size: int | None, epochs: int) -> None:
    """Refuse a first stop in global batches beyond the continuous run: no run would be
    interrupted, so no resume would be verified (and the report would say PASS)."""
    if stop.unit == "batches" and stop.count > batches:
        raise ConfigError(
            f"stop_batches: the first stop, {stop}, is beyond the run, which delivers "
            f"{batches} global batches (batch_size={batch_size}, {epochs} epoch(s)), so no run "
            f"would be interrupted and nothing resumed; give stops of at most {batches}"
        )


def _check_ints(
    name: str, values: Sequence[Any], *, minimum: int, maximum: int | None = None
) -> None:
    """Each of ``values`` an int in range, and at least one: an empty list would verify
    nothing and report PASS."""
    if not len(values):
        raise ConfigError(f"{name}: give at least one value (an empty list verifies nothing)")
    high = None if maximum is None else maximum + 1
    for value in values:
        check_int(name, value, low=minimum, high=high)
