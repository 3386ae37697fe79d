"""What verify found: the first divergence of each run, the resumed runs, the verdict."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Literal

from resumable_loader.verify.lockstep import Interruption

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
        "the loader's batches or cursor disagree with its own partition: the dataset's len() "
        "changed during the run (it must not change within an epoch), else a resumable_loader "
        "bug; please report it with this output"
    ),
}


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
