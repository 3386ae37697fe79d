"""Packed: variable-length samples packed into sequences of ``max_tokens``, as a pure function
of (seed, epoch, lengths), so a packed run resumes exactly on any topology.

The loader makes the order it would make for the wrapped dataset (``shuffle``, ``shard_shuffle``
and a Mixture's order keep their meaning), and iterates packs of it instead of samples
(:mod:`.order`). Each sample of a pack loads under its own key, the key of its position in the
sample order, so its augmentation does not depend on the pack, the batch or ``max_tokens``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from resumable_loader import _core
from resumable_loader._checks import check_int
from resumable_loader.errors import ConfigError, ResumableLoaderError
from resumable_loader.loader.build_refs import make_order
from resumable_loader.loader.identity import dataset_fingerprint
from resumable_loader.loader.keyed_batches import KeyedIds
from resumable_loader.loader.keyed_fetch import read_samples_at
from resumable_loader.loader.lookahead import NodeSchedule
from resumable_loader.packing.batch import Pack, PackBatch
from resumable_loader.packing.lookahead import Translated
from resumable_loader.packing.order import PackedOrder
from resumable_loader.packing.plan import OVERLONG, STRATEGIES
from resumable_loader.packing.sample_lengths import LengthsArgument, resolve_lengths, tokens_of
from resumable_loader.rngs.sample import sample_place
from resumable_loader.tokens.dataset import TokenDataset


class Packed(Dataset):
    """Packs of a map-style dataset's samples, for ``DataLoader(Packed(...), batch_size=packs)``.

    An item is one pack (a :class:`~resumable_loader.packing.batch.Pack` mapping: ``input_ids``,
    ``labels``, ``position_ids``, ``cu_seqlens``, ``max_seqlen``, provenance, images); pass
    ``collate_fn=collate_varlen`` (FlashAttention varlen), ``collate_flattening`` (HF) or
    ``collate_padded``. With ``strategy="pad"`` an item is a token-budget batch instead
    (``batch_size=None, collate_fn=collate_budget``). The loader reads a batch of packs at once
    (``__getitems__``): their samples in one call of the dataset's own ``__getitems__`` if it
    has one (else one ``dataset[i]`` each), every sample under its own key; a dataset with
    ``token_spans(ids, starts, lengths)`` (:class:`~resumable_loader.tokens.TokenDocuments`)
    is asked only where its pieces' tokens are, as its samples are plain tokens drawing no
    randomness.

    Args:
        dataset: a map-style dataset (or a Mixture with ``samples_per_epoch``) whose items are
            token sequences, or dicts with them under ``field`` (and optionally ``labels``,
            ``images``, ``image_positions``).
        max_tokens: the budget of a pack (or of a padded batch, with ``strategy="pad"``).
        lengths: each sample's length in budget tokens, by sample id: an int array; for a
            Mixture a mapping of source name to array; a function of a sample, computed once
            here (e.g. text tokens plus image tokens); default the dataset's
            ``sample_lengths()`` (an index's length column), else ``len(item[field])`` read once.
        window: positions of the sample order packed together (larger: fuller packs, more
            reordering; the plan costs O(window log window) per window).
        strategy: "bfd", "ffd", "next_fit" or "pad" (see :mod:`.plan`).
        overlong: a sample longer than ``max_tokens``: "error", "truncate" or "split".
        field: the token field of dict samples.
    """

    holds_samples = True  # the loader hands it its on_sample_error policy (read_samples_at)

    def __init__(
        self,
        dataset: Dataset,
        max_tokens: int,
        *,
        lengths: LengthsArgument = None,
        window: int = 4096,
        strategy: str = "bfd",
        overlong: str = "error",
        field: str = "input_ids",
    ) -> None:
        if isinstance(dataset, TokenDataset):
            raise ConfigError(
                "Packed(TokenDataset(...)) would pack fixed windows already cut across document "
                "boundaries, and lose those boundaries; to pack whole documents, pass "
                "TokenDocuments(paths) over the same shards (its lengths are the documents')"
            )
        if not (callable(getattr(dataset, "__len__", None)) and hasattr(dataset, "__getitem__")):
            raise ConfigError(
                f"Packed needs a map-style dataset (len() and [i]: its samples' lengths are "
                f"planned ahead), got {type(dataset).__name__}; write the samples to shards, or "
                "wrap them in a map-style Dataset"
            )
        self.dataset = dataset
        self.max_tokens = check_int("max_tokens", max_tokens, low=1)
        self.window = check_int("window", window, low=1)
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if overlong not in OVERLONG:
            raise ConfigError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
        self.strategy, self.overlong, self.field = strategy, overlong, field
        self.lengths = resolve_lengths(dataset, lengths, field)
        self._check_overlong()
        longest = int(self.lengths.max()) if len(self.lengths) else 0
        self.max_pieces = max(1, -(-longest // self.max_tokens)) if overlong == "split" else 1
        self.lengths_digest = _digest(self.lengths)
        own, spans = getattr(dataset, "sample_lengths", None), getattr(dataset, "token_spans", None)
        # Tokens as spans when the lengths are the dataset's own (else a stale length must show
        # as its sample is read).
        self._spans = callable(spans) and callable(own) and np.array_equal(own(), self.lengths)
        # and, with token_table(), as documents of one token array (a batch in one C++ call)
        self._table = self._spans and callable(getattr(dataset, "token_table", None))
        self._documents: tuple[Any, np.ndarray] | None = None  # (made by _token_table)
        self._order_arguments: tuple[bool, Any] = (False, None)
        self._seed = 0  # the loader's, for the look-ahead (told before a batch's key is)
        self._orders: dict[int, PackedOrder] = {}  # by seed, in this process
        self._schedules = Translated()

    @property
    def id_count(self) -> int:
        """How many sample ids the wrapped dataset has (a substitute for a sample that fails
        to load is drawn from them)."""
        ids = getattr(self.dataset, "id_count", None)
        return len(self.dataset) if ids is None else ids

    def sources_lengths_digest(self, names: Sequence[str]) -> str | None:
        """The ``lengths_digest`` of a Packed over a Mixture whose sources were ``names`` (in
        that order), from each source's lengths now: what a run saved before sources were
        added holds. None when the dataset is not a Mixture or one of ``names`` is gone."""
        current, offsets = (
            getattr(self.dataset, "names", None),
            getattr(self.dataset, "offsets", None),
        )
        if current is None or offsets is None or not set(names) <= set(current):
            return None
        ends = [*offsets[1:], len(self.lengths)]
        where = {name: index for index, name in enumerate(current)}
        parts = [self.lengths[offsets[where[n]] : ends[where[n]]] for n in names]
        return _digest(np.concatenate(parts) if parts else self.lengths[:0])

    @property
    def fingerprint(self) -> str:
        """The wrapped dataset's identity (the packing settings are in the order's)."""
        return f"Packed({dataset_fingerprint(self.dataset)})"

    def __len__(self) -> int:
        """Samples in an epoch of the wrapped dataset (packs vary by epoch: the loader asks
        its order)."""
        return len(self.dataset)

    def wrapped_order(self, *, seed: int, shuffle: bool, shard_shuffle: Any) -> PackedOrder:
        """The loader's order: packs of the order it makes for the wrapped dataset."""
        self._order_arguments, self._seed = (shuffle, shard_shuffle), seed
        order = PackedOrder(self, make_order(self.dataset, shuffle, seed, shard_shuffle))
        if order.samples >= 2**62:
            raise ConfigError(
                f"Packed needs epochs of finite length, but {type(self.dataset).__name__} has "
                "one endless epoch; give the Mixture samples_per_epoch"
            )
        self._orders = {seed: order}
        return order

    def __getitem__(self, pack_id: int) -> dict[str, Any]:
        return dict(self.__getitems__([pack_id])[0])

    def __getitems__(self, pack_ids: list[int]) -> list[Pack] | list[dict[str, Any]]:
        """The packs ``pack_ids`` of the loader's epoch, made together (:class:`PackBatch`):
        their samples read in one call when the dataset reads batches, each under its own key;
        a dataset with ``token_spans`` is asked for all the pieces' tokens at once."""
        if isinstance(pack_ids, KeyedIds):  # torch's fetcher in a foreign loader (Accelerate):
            return [self[pack_id] for pack_id in pack_ids]  # its ids install each pack's key
        try:
            seed, epoch, _ = sample_place()
        except ResumableLoaderError:
            raise ConfigError(
                "a Packed item is a pack of the loader's epoch, loaded by resumable_loader."
                "DataLoader; outside it, loader.sample_at(epoch, position) names its samples"
            ) from None
        order = self._order_for(seed)
        if self._spans:  # plain tokens, a pure function of the sample id: no key to install
            table = self._token_table()
            run = None if table is None else order.run(epoch, pack_ids)
            if run is not None:  # a batch's packs, mostly: one C++ call from the plan
                return PackBatch.from_documents(*table, run).packs()
        pieces = order.packs_pieces(epoch, pack_ids)
        if self._spans:
            sizes = pieces["lengths"]
            tokens, first = self.dataset.token_spans(pieces["ids"], pieces["offsets"], sizes)
            return PackBatch.from_spans(pieces, pieces["bounds"], sizes, tokens, first).packs()
        return self._read_pieces(pieces).packs()

    @property
    def prefetching(self) -> bool:
        """Whether the wrapped dataset fetches ahead (the loader then tells it the future)."""
        return bool(getattr(self.dataset, "prefetching", False))

    def plan_reads(self, schedule: NodeSchedule) -> None:
        """Tell the wrapped dataset the node's future, as the samples of the packs to come
        (:mod:`.lookahead`)."""
        self.dataset.plan_reads(self._schedules.of(schedule, self._order_for(self._seed)))

    def storage_stats(self) -> Any:
        """The wrapped dataset's storage counters (``loader.storage_stats()``)."""
        return self.dataset.storage_stats()

    def _order_for(self, seed: int) -> PackedOrder:
        order = self._orders.get(seed)
        if order is None:  # a worker, or a seed loaded since
            shuffle, shard_shuffle = self._order_arguments
            inner = make_order(self.dataset, shuffle, seed, shard_shuffle)
            order = self._orders[seed] = PackedOrder(self, inner)
        return order

    def _token_table(self) -> tuple[Any, np.ndarray] | None:
        """The dataset's token arrays (held by C++, once per process) and document starts,
        when it has ``token_table()`` and gives them, else None."""
        if self._documents is None and self._table:
            table = self.dataset.token_table()
            if table is None:
                self._table = False
            else:
                self._documents = (_core.TokenShards(list(table[0])), table[1])
        return self._documents

    def _read_pieces(self, pieces: dict[str, np.ndarray]) -> PackBatch:
        """Read the pieces' samples (each under its own key) and cut the pieces out of them."""
        ids = pieces["ids"].tolist()
        items, substituted = read_samples_at(self.dataset, ids, pieces["positions"].tolist())
        checked = [None if k in substituted else i for k, i in enumerate(ids)]
        cut = [
            self._piece(item, sample_id, offset, length)
            for item, sample_id, offset, length in zip(
                items, checked, pieces["offsets"].tolist(), pieces["lengths"].tolist(), strict=True
            )
        ]
        sizes = np.fromiter((len(tokens) for tokens, _, _ in cut), np.int64, len(cut))
        tokens = np.concatenate([np.empty(0, np.int64), *(tokens for tokens, _, _ in cut)])
        first = np.cumsum(sizes) - sizes
        labels = None
        if any(own is not None for _, own, _ in cut):
            labels = np.concatenate(
                [np.empty(0, np.int64), *(t if own is None else own for t, own, _ in cut)]
            )
        images, image_offsets = None, None
        if any(placed for _, _, placed in cut):
            images, image_offsets = _images_by_pack(cut, sizes, pieces["bounds"])
        bounds = pieces["bounds"]
        return PackBatch.from_spans(
            pieces, bounds, sizes, tokens, first, labels, images, image_offsets
        )

    def _piece(
        self, item: Any, sample_id: int | None, offset: int, length: int
    ) -> tuple[np.ndarray, np.ndarray | None, list[tuple[Any, int]]]:
        """The part [offset, offset + length) of a loaded sample: its tokens, its own labels
        (or None) and its images with their token index within the piece. ``sample_id`` None:
        a substitute (:mod:`~resumable_loader.loader.bad_samples`), without its own length to
        check, stands in for the piece from its own start: [0, length) (cut at the piece's
        offset, a substitute shorter than the failed sample left the later pieces of a split
        one empty, and a pack of such pieces had no token)."""
        if sample_id is None:
            offset = 0
        labels, placed = None, []
        if isinstance(item, Mapping):
            tokens, labels = tokens_of(item, self.field), item.get("labels")
            if item.get("images"):
                images = list(item["images"])
                at = list(item.get("image_positions", [0] * len(images)))
                placed = list(zip(images, at, strict=True))
        else:
            tokens = item
        which = "a substitute" if sample_id is None else f"sample {sample_id}"
        tokens = _int64(tokens, f"{which}'s '{self.field}'")
        if sample_id is not None and len(tokens) > self.lengths[sample_id]:
            raise ConfigError(
                f"sample {sample_id} has {len(tokens)} tokens in '{self.field}', but its "
                f"recorded length is {int(self.lengths[sample_id])}: the lengths are stale; "
                "rebuild them (resumable-loader index --length) or pass the current ones"
            )
        if labels is not None:
            labels = _int64(labels, f"{which}'s 'labels'")
            if len(labels) != len(tokens):
                raise ConfigError(
                    f"sample {sample_id} has {len(labels)} 'labels' for {len(tokens)} tokens in "
                    f"'{self.field}': a sample's own labels hold one label per token (-100 where "
                    "no loss is taken); make them as long as its tokens"
                )
        stop = offset + length
        if placed:
            last = max(stop, offset + 1)
            placed = [(image, at - offset) for image, at in placed if offset <= at < last]
        return tokens[offset:stop], None if labels is None else labels[offset:stop], placed

    def _check_overlong(self) -> None:
        over = np.flatnonzero(self.lengths > self.max_tokens)
        if self.overlong == "error" and len(over):
            raise ConfigError(
                f"{len(over)} samples are longer than max_tokens={self.max_tokens} (sample "
                f"{int(over[0])}: {int(self.lengths[over[0]])} tokens) and overlong='error'; "
                "pass overlong='truncate' or 'split', or a larger max_tokens"
            )

    def __getstate__(self) -> dict[str, Any]:
        # each process plans its own windows and translates its own schedules
        return {**self.__dict__, "_orders": {}, "_schedules": Translated(), "_documents": None}

    def __repr__(self) -> str:
        return (
            f"Packed({self.dataset!r}, max_tokens={self.max_tokens}, window={self.window}, "
            f"strategy={self.strategy!r}, overlong={self.overlong!r})"
        )


def _int64(values: Any, what: str) -> np.ndarray:
    """Tokens (a tensor, an array, a list) as an int64 array, without a copy when they are.

    Raises:
        ConfigError: not one integer id a token (floats are refused, not truncated).
    """
    if isinstance(values, torch.Tensor):
        values = values.numpy()
    try:
        array = np.asarray(values)
    except ValueError:  # ragged nested lists
        array = np.asarray(values, dtype=object)
    if array.ndim != 1 or (len(array) and array.dtype.kind not in "iu"):
        raise ConfigError(
            f"{what} is not a sequence of integer token ids (got {array.dtype} values of shape "
            f"{array.shape}); give one int id a token, in a list, an array or a 1-D tensor"
        )
    return array.astype(np.int64, copy=False)


def _images_by_pack(
    cut: list[tuple[np.ndarray, np.ndarray | None, list[tuple[Any, int]]]],
    sizes: np.ndarray,
    bounds: np.ndarray,
) -> tuple[list[list[Any]], list[list[int]]]:
    """Each pack's images, in piece order, and their token index in the pack."""
    images: list[list[Any]] = []
    offsets: list[list[int]] = []
    for first, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        starts = np.concatenate([[0], np.cumsum(sizes[first:stop])]).tolist()
        images.append([image for _, _, placed in cut[first:stop] for image, _ in placed])
        offsets.append(
            [
                start + at
                for (_, _, placed), start in zip(cut[first:stop], starts, strict=False)
                for _, at in placed
            ]
        )
    return images, offsets


def _digest(lengths: np.ndarray) -> str:
    """The lengths' identity in the cursor (8 bytes of BLAKE2b over them as little-endian int32)."""
    return hashlib.blake2b(
        np.ascontiguousarray(lengths, dtype="<i4").data, digest_size=8
    ).hexdigest()
