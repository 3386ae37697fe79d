"""Each mixture source's own endless stream: draw k is position k mod n of source epoch k // n.

A source's order is its own (shuffled globally by default, shard-local, or sequential), keyed
by a seed derived from the loader's seed and the source's name through Philox
(``Purpose.MIXTURE_SOURCE``), never ``seed + i``: renaming or reordering the other sources does
not touch a source's stream, and a small source starts its next epoch (a fresh permutation)
while a large one carries on.

A source whose samples depend on the (seed, epoch) of the stream reading them (a shuffle-mode
``TokenDataset``: its document order) declares it through :class:`EpochKeyedDataset`, and the
mixture reads it with the seed and epoch of the source's own stream, never the loader's.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch.utils.data import Dataset, IterableDataset

from resumable_loader._canonical import canonical_json
from resumable_loader.errors import ConfigError
from resumable_loader.loader.identity import dataset_fingerprint
from resumable_loader.order.permutation import Order, SequentialOrder, ShuffledOrder
from resumable_loader.order.philox import EPOCH_LIMIT, Purpose, derive_words
from resumable_loader.order.shard_local import ShardShuffle

# Enters the fingerprint of an epoch-keyed source: such a source was read under the loader's
# (seed, epoch) before the mixture handed it its own, so a cursor from then that drew from it
# is refused, naming the source. (Renaming MIXTURE_ALGORITHM instead would also refuse the
# cursors of mixtures of plain sources, whose streams did not change.)
EPOCH_KEYED = "keyed-by-source-epoch-v1"


@runtime_checkable
class EpochKeyedDataset(Protocol):
    """A source dataset whose sample ``index`` depends on the (seed, epoch) of its stream.

    A dataset read by its own loader gets both from the sample key (the loader's seed and
    epoch). Inside a Mixture those are not its stream's: its draw k is position k mod n of its
    own epoch k // n, keyed by its own seed (:func:`source_seed`). So the Mixture reads a source
    with ``epoch_keyed`` true as ``keyed_item(index, seed=<source seed>, epoch=<source epoch>)``,
    and its draws equal a standalone loader's stream under the source's seed. A wrapper around
    such a dataset (a transform) must forward both members, else it is read as a plain dataset.
    """

    epoch_keyed: bool  # this instance's items depend on (seed, epoch)

    def keyed_item(self, index: int, *, seed: int, epoch: int) -> Any:
        """Sample ``index`` of epoch ``epoch`` of the stream keyed by ``seed``."""
        ...


def check_source(dataset: Any, what: str) -> None:
    """ConfigError naming ``what`` unless ``dataset`` is one a Mixture draws from by id (0 to
    its length): a map-style dataset, not an IterableDataset, and not one that supplies its own
    order (a Mixture, a Packed: their ids are their orders' codes, and their weights or packs
    would be silently lost)."""
    if callable(getattr(dataset, "loader_order", None)) or callable(
        getattr(dataset, "wrapped_order", None)
    ):
        raise ConfigError(
            f"{what} is a {type(dataset).__name__}, which supplies its own order: it cannot be "
            "a source of a Mixture (its ids are not 0 to its length); list a Mixture's sources "
            "in the outer one, with their weights multiplied by its share, and pack the "
            "outer Mixture (Packed(Mixture(...)))"
        )
    if isinstance(dataset, IterableDataset) or not (
        callable(getattr(dataset, "__getitem__", None))
        and callable(getattr(dataset, "__len__", None))
    ):
        kind = "an IterableDataset" if isinstance(dataset, IterableDataset) else repr(dataset)[:60]
        raise ConfigError(
            f"{what} is {kind}, not a map-style dataset (one with __len__ and __getitem__): a "
            "Mixture draws each source's samples by id; pass a map-style dataset (e.g. "
            "TarShardDataset, ParquetDataset, TokenDataset) or a MixtureSource"
        )


class MixtureSource:
    """A mixture source with its own order settings (a bare dataset means ``shuffle=True``).

    Args:
        dataset: any map-style dataset (``TarShardDataset``, ``ParquetDataset``, ...).
        shuffle: a fresh permutation every source epoch (True) or ids in order (False).
        shard_shuffle: a :class:`~resumable_loader.ShardShuffle` to read the source
            shard-locally (needs ``shuffle=True`` and a dataset with ``shard_sizes``).
    """

    def __init__(
        self, dataset: Dataset, *, shuffle: bool = True, shard_shuffle: ShardShuffle | None = None
    ) -> None:
        if shard_shuffle is not None and not shuffle:
            raise ConfigError("MixtureSource: shard_shuffle needs shuffle=True")
        if shard_shuffle is not None and not isinstance(shard_shuffle, ShardShuffle):
            raise ConfigError(
                f"MixtureSource: shard_shuffle must be a ShardShuffle, got {shard_shuffle!r}"
            )
        check_source(dataset, "MixtureSource's dataset")
        length = len(dataset)
        if length < 1:
            raise ConfigError(
                f"MixtureSource: {type(dataset).__name__} is empty; a source must have samples"
            )
        self.dataset, self.shuffle, self.shard_shuffle = dataset, bool(shuffle), shard_shuffle
        self.length = length
        self.epoch_keyed = isinstance(dataset, EpochKeyedDataset) and bool(dataset.epoch_keyed)

    def order(self, *, seed: int) -> Order:
        """This source's order under its own seed."""
        if self.shard_shuffle is not None:
            return self.shard_shuffle.order_for(self.dataset, seed=seed)
        if self.shuffle:
            return ShuffledOrder(self.length, seed=seed)
        return SequentialOrder(self.length)

    def fingerprint(self, order: Order | None = None) -> str:
        """16 hex digits of the dataset's identity (or its type), its order's settings and,
        for an epoch-keyed source, :data:`EPOCH_KEYED` (a plain source's is unchanged).

        ``order`` is this source's order under any seed (settings never include the seed), so
        a stream's own order saves building one; without it, one is built under seed 0.
        """
        described = [
            dataset_fingerprint(self.dataset) or type(self.dataset).__qualname__,
            (order if order is not None else self.order(seed=0)).settings(),
        ]
        if self.epoch_keyed:
            described.append(EPOCH_KEYED)
        return hashlib.blake2b(canonical_json(described).encode(), digest_size=8).hexdigest()

    def __repr__(self) -> str:
        return (
            f"MixtureSource({type(self.dataset).__name__}(len={self.length}), "
            f"shuffle={self.shuffle}, shard_shuffle={self.shard_shuffle!r}, "
            f"epoch_keyed={self.epoch_keyed})"
        )


def source_seed(seed: int, name: str) -> int:
    """The seed of source ``name``'s own order: Philox(counter = hash of the name, key = seed)."""
    digest = hashlib.blake2b(name.encode(), digest_size=12).digest()
    position = int.from_bytes(digest[:8], "little")
    epoch = int.from_bytes(digest[8:], "little")
    words = derive_words(seed, epoch, position, Purpose.MIXTURE_SOURCE)
    return words[0] | words[1] << 32


class SourceStream:
    """Sample ids of one source's draws, continuing across its epochs and the mixture's phases.

    Args:
        source: the source and its order settings.
        seed: the source's own seed (:func:`source_seed`).
    """

    def __init__(self, source: MixtureSource, *, seed: int) -> None:
        self.source = source
        self.order = source.order(seed=seed)
        self.length = source.length
        # Shard-local orders replay their buffer from the epoch's start on every ids() call;
        # consecutive reads continue one chunk iterator instead.
        self._sequential = source.shard_shuffle is not None
        self._reader: tuple[int, int, Any] | None = None  # (epoch, next position, iterator)
        self._pending = np.empty(0, dtype=np.int64)

    def locate(self, draw: int) -> tuple[int, int]:
        """(source epoch, position in it) of draw number ``draw``."""
        epoch, position = divmod(draw, self.length)
        if epoch >= EPOCH_LIMIT:
            raise ConfigError(
                f"draw {draw} of {self.source!r} falls in its epoch {epoch}, past the 2**32 "
                "epochs a source's order can key; give the source more samples"
            )
        return epoch, position

    def ids(self, first: int, stop: int) -> np.ndarray:
        """Sample ids of draws [first, stop)."""
        pieces = []
        draw = first
        while draw < stop:
            epoch, position = self.locate(draw)
            end = min(stop - draw, self.length - position) + position
            pieces.append(self._epoch_ids(epoch, position, end))
            draw += end - position
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)

    def _epoch_ids(self, epoch: int, start: int, stop: int) -> np.ndarray:
        if not self._sequential:
            return self.order.ids(epoch, start, stop)
        reader = self._reader
        if reader is None or reader[0] != epoch or reader[1] != start:
            reader = (epoch, start, self.order.iter_ids(epoch, start))
            self._pending = np.empty(0, dtype=np.int64)
        chunks, have = [self._pending], len(self._pending)
        while have < stop - start:
            chunk = next(reader[2])
            chunks.append(chunk)
            have += len(chunk)
        ready = np.concatenate(chunks)
        self._pending = ready[stop - start :]
        self._reader = (epoch, stop, reader[2])
        return ready[: stop - start]

    def __repr__(self) -> str:
        return f"SourceStream({self.source!r}, order={self.order!r})"
