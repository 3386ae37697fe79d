"""
C++ core of resumable_loader: Philox4x32-10, Feistel permutation, reseeding.
"""

from collections.abc import Sequence
from typing import Annotated

import numpy
from numpy.typing import NDArray

def philox4x32(
    counter: Sequence[int], key: Sequence[int], rounds: int = 10
) -> tuple[int, int, int, int]:
    """
    Philox4x32-R of a 4-word counter under a 2-word key, as Random123 defines it.
    """

def derive_words(seed: int, epoch: int, position: int, purpose: int) -> tuple[int, int, int, int]:
    """
    Philox4x32-10 of counter (position, epoch, purpose) under the seed's key.
    """

def global_rng_seed(key: Sequence[int], generator: int) -> int:
    """The 64-bit seed of global generator 0, 1 or 2 for a sample key."""

def mt19937_state_words(key: Sequence[int], generator: int) -> list[int]:
    """The 624 MT19937 state words of global generator 0, 1 or 2."""

PURPOSES: dict[str, int] = ...

TORCH_SEED_MASK: int = 9223372036854775807

TORCH_CPU_GENERATOR_STATE_SIZE: int = 5056

TORCH_CPU_GENERATOR_FIELDS_SIZE: int = 2544

STD_MUTEX_SIZE: int = 40

ALL_GLOBAL_RNGS: int = 7

class GlobalRngSnapshot:
    pass

class GlobalRngTargets:
    def __init__(
        self,
        python_state: int,
        python_index: int,
        numpy_key: int,
        numpy_pos: int,
        numpy_has_gauss: int,
        numpy_gauss: int,
        torch_state: int,
        torch_fields: int = 0,
        torch_mutex: int = 0,
    ) -> None: ...
    def reseed(self, key: Sequence[int]) -> None:
        """Write every target generator's state for a sample key."""

    def save(self) -> GlobalRngSnapshot:
        """Copy the states the targets cover (torch's where written in place)."""

    def restore(self, snapshot: GlobalRngSnapshot) -> None:
        """Put a save()d copy back."""

class SampleReseeder:
    def __init__(
        self,
        targets: GlobalRngTargets,
        numpy_interface: int,
        numpy_lock: object,
        python: object,
        torch_generator: object,
        torch_buffer: object,
    ) -> None: ...
    def __call__(self, seed: int, epoch: int, position: int, purpose: int, generators: int) -> bool:
        """
        Reseed the generators in the set `generators` for a sample key (False: numpy's replaced).
        """

    def enter(self, seed: int, epoch: int, generators: int) -> bool:
        """Give `generators` the entry state of (seed, epoch) (False: numpy's was replaced)."""

    def changed(self, generators: int) -> int:
        """Which of `generators` left the entry state the last enter() gave them."""

class Permutation:
    def __init__(self, n: int, seed: int, epoch: int, purpose: int = 1) -> None: ...
    @property
    def size(self) -> int: ...
    @property
    def bits(self) -> int: ...
    @property
    def rounds(self) -> int: ...
    def __call__(self, position: int) -> int: ...
    def inverse(self, value: int) -> int: ...
    def fill(
        self,
        start: int,
        out: Annotated[NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu")],
    ) -> None:
        """Write perm(start + i) into out[i] for every i (out: contiguous int64)."""

class ShardBlockOrder:
    def __init__(
        self,
        shard_sizes: Annotated[
            NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
        ],
        seed: int,
        epoch: int,
        window: int,
        block: int,
    ) -> None: ...
    @property
    def size(self) -> int: ...
    def fill(
        self,
        start: int,
        out: Annotated[NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu")],
    ) -> None:
        """Write the id at position start + i into out[i] for every i (out: contiguous int64)."""

    def reader(self, start: int) -> ShardBlockReader:
        """A reader of the ids from position start on, each block computed once."""

class ShardBlockReader:
    @property
    def remaining(self) -> int: ...
    def read(
        self, out: Annotated[NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu")]
    ) -> int:
        """Write the next ids into out; returns how many were written."""

def build_seek_table(
    offsets: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    seed: int,
    epoch: int,
    starts: Annotated[NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu")],
) -> None:
    """starts[j] = tokens of the documents at slots 0..j-1 of (seed, epoch)'s document order."""

def window_pack_counts(
    lengths: Annotated[
        NDArray[numpy.int32], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    ids: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    window: int,
    capacity: int,
    strategy: int,
    split: bool,
    counts: Annotated[NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu")],
) -> None:
    """counts[k] = bins the strategy makes of window k of lengths[ids] (plan.py's pack count)."""

def window_pack_bins(
    sizes: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    capacity: int,
    strategy: int,
    bins: Annotated[NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu")],
) -> None:
    """bins[i] = the bin of piece i in plan.py's assignment (numbered in order of opening)."""

def window_pack_plan(
    sizes: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    capacity: int,
    strategy: int,
    order: Annotated[NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu")],
    bounds: Annotated[NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu")],
) -> int:
    """The pieces in pack order (order) and each pack's places in it (bounds[:packs + 1]);
    returns the packs."""

def fill_pack_batch(
    tokens: Annotated[NDArray, dict(shape=(None,), order="C", device="cpu", writable=False)],
    first: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    sizes: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    ids: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    positions: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    offsets: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    bounds: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    out: Annotated[NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu")],
) -> int:
    """Fill out with a batch of packs (packing.h: input_ids, labels, position_ids,
    provenance, bounds, cu_seqlens as int32); returns the longest piece."""

class TokenShards:
    """Token arrays of one integer dtype, back to back (a token file's shards), referenced for
    fill_document_packs."""

    def __init__(
        self,
        arrays: Sequence[
            Annotated[NDArray, dict(shape=(None,), order="C", device="cpu", writable=False)]
        ],
    ) -> None: ...
    @property
    def tokens(self) -> int: ...

def fill_document_packs(
    shards: TokenShards,
    starts: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    ids: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    positions: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    offsets: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    sizes: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    bounds: Annotated[
        NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu", writable=False)
    ],
    first_pack: int,
    packs: int,
    out: Annotated[NDArray[numpy.int64], dict(shape=(None,), order="C", device="cpu")],
) -> int:
    """Fill out as fill_pack_batch does with packs [first_pack, first_pack + packs) of a
    plan's pieces (bounds: the plan's), document d being tokens [starts[d], starts[d + 1]) of
    the shards' concatenation."""
