"""The order of packs: pack position -> the pieces of samples it holds, from lengths alone.

Epoch e's sample order (the order the loader would iterate without packing) is cut into
windows of K positions; each window is planned (:mod:`.plan`) and its packs follow the
previous window's. The per-epoch :class:`~.prefix.PackTable` locates any pack position in
O(log windows), so nothing depends on workers, ranks, batches or the packs delivered before.
A pack's id is ``window * slots + index in the window`` (``slots`` bounds a window's packs),
so the process that loads it plans only that window.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from resumable_loader._lru import LRU
from resumable_loader.errors import ConfigError, StateDictError
from resumable_loader.order.permutation import CHUNK_SIZE, Order
from resumable_loader.packing.plan import WindowPlan, plan_window
from resumable_loader.packing.prefix import PackTable, build_table, window_counts

if TYPE_CHECKING:
    from resumable_loader.packing.packed import Packed

# Names the windowing, the plan's ordering and the pack ids in the cursor's fingerprint.
PACKING_ALGORITHM = "window-plan-v1"
_TABLES = 2  # epoch tables kept (the epoch in progress and the one a state_dict names)
_PLANS = 16  # window plans kept per process


def _one(_: object) -> int:
    return 1


class WindowPieces(NamedTuple):
    """A planned window, kept for its next packs: the plan (each piece's ``start`` within its
    sample, ``length`` and the packs' ``bounds``), per piece in pack order its sample's ``ids``
    and ``positions`` in the sample order, and as lists the pieces and tokens before each pack
    (``piece_bounds``, ``token_bounds``: a batch's size without a numpy call)."""

    plan: WindowPlan
    ids: np.ndarray
    positions: np.ndarray
    piece_bounds: list[int]
    token_bounds: list[int]


class WindowRun(NamedTuple):
    """Packs [first, first + count) of one planned window: a batch's packs, mostly."""

    window: WindowPieces
    first: int
    count: int


class PackedOrder:
    """Implements ``order.Order`` over packs, and the loader's resumable-order protocol.

    Args:
        packed: the :class:`~resumable_loader.packing.packed.Packed` dataset.
        inner: the sample order the loader would iterate without packing.
    """

    def __init__(self, packed: Packed, inner: Order) -> None:
        self.packed = packed
        self.inner = inner
        self.samples = len(inner)
        self.window = packed.window
        self.slots = packed.window * packed.max_pieces
        self._tables: LRU[int, PackTable] = LRU(_TABLES, cost=_one)
        self._plans: LRU[tuple[int, int], WindowPieces] = LRU(_PLANS, cost=_one)

    def __len__(self) -> int:
        """Samples per epoch (the loader's dataset length); packs: :meth:`epoch_length`."""
        return self.samples

    def epoch_length(self, epoch: int) -> int:
        """Packs in ``epoch``."""
        return self.table(epoch).total

    def table(self, epoch: int) -> PackTable:
        """The epoch's prefix table (counted once per process, from lengths only)."""
        table = self._tables.get(epoch)
        if table is None:
            packed = self.packed
            table = build_table(
                lambda start, stop: window_counts(
                    packed.lengths,
                    self.window,
                    packed.max_tokens,
                    strategy=packed.strategy,
                    overlong=packed.overlong,
                    ids=self.inner.ids(epoch, start, stop),
                ),
                self.samples,
                self.window,
            )
            self._tables.put(epoch, table)
        return table

    def window_plan(self, epoch: int, window: int) -> WindowPlan:
        """The packs of ``window`` of ``epoch``."""
        return self._window(epoch, window).plan

    def _window(self, epoch: int, window: int) -> WindowPieces:
        """The window's plan and its pieces' samples, kept for the window's next packs, which
        then only slice them."""
        kept = self._plans.get((epoch, window))
        if kept is None:
            first, stop = self.window_span(window)
            ids = self.inner.ids(epoch, first, stop)
            packed = self.packed
            plan = plan_window(
                packed.lengths[ids],
                packed.max_tokens,
                strategy=packed.strategy,
                overlong=packed.overlong,
            )
            tokens = np.concatenate(([0], np.cumsum(plan.length)))[plan.bounds]
            kept = WindowPieces(
                plan, ids[plan.sample], plan.sample + first, plan.bounds.tolist(), tokens.tolist()
            )
            self._plans.put((epoch, window), kept)
        return kept

    def run(self, epoch: int, pack_ids: Sequence[int]) -> WindowRun | None:
        """The packs ``pack_ids`` as a :class:`WindowRun` when they are consecutive packs of
        one window (a batch's, mostly), else None."""
        window, first = divmod(int(pack_ids[0]), self.slots)
        count = len(pack_ids)
        if int(pack_ids[-1]) != pack_ids[0] + count - 1 or first + count > self.slots:
            return None
        return WindowRun(self._checked(epoch, window, first + count - 1), first, count)

    def window_span(self, window: int) -> tuple[int, int]:
        """Sample positions [first, stop) of ``window``."""
        first = window * self.window
        return first, min(first + self.window, self.samples)

    def ids(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Pack ids (int64) at pack positions [start, stop) of ``epoch``."""
        table = self.table(epoch)
        if not 0 <= start <= stop <= table.total:
            raise ConfigError(f"pack positions [{start}, {stop}) outside [0, {table.total}]")
        positions = np.arange(start, stop, dtype=np.int64)
        windows = np.searchsorted(table.starts, positions, side="right") - 1
        return windows * self.slots + positions - table.starts[windows]

    def iter_ids(
        self, epoch: int, start: int = 0, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[np.ndarray]:
        """Pack ids from ``start`` to the epoch's end, ``chunk_size`` at a time."""
        total = self.epoch_length(epoch)
        for first in range(start, total, chunk_size):
            yield self.ids(epoch, first, min(first + chunk_size, total))

    def pack_pieces(self, epoch: int, pack_id: int) -> dict[str, np.ndarray]:
        """The pieces of pack ``pack_id``: sample ``ids``, ``positions`` (sample order),
        ``offsets`` (first token within the sample) and ``lengths``, in pack order."""
        pieces = self.packs_pieces(epoch, [pack_id])
        del pieces["bounds"]
        return pieces

    def packs_pieces(self, epoch: int, pack_ids: Sequence[int]) -> dict[str, np.ndarray]:
        """The pieces of the packs ``pack_ids``, back to back, as :meth:`pack_pieces` gives one
        pack's, and ``bounds`` (int64, packs + 1): pack k is pieces ``bounds[k]:bounds[k+1]``.
        One pass of numpy per run of packs from one window (a batch's packs are mostly one)."""
        run = self.run(epoch, pack_ids)
        if run is not None:  # consecutive packs of one window: slices of the window's arrays
            wanted = slice(run.first, run.first + run.count)
            *columns, bounds = self._run_pieces(run.window, wanted)
        else:
            count = len(pack_ids)
            ids = np.asarray(pack_ids, dtype=np.int64)
            windows, index = np.divmod(ids, self.slots)
            cuts = [0, *(np.flatnonzero(windows[1:] != windows[:-1]) + 1).tolist(), count]
            parts = []
            for a, z in itertools.pairwise(cuts):
                window = self._checked(epoch, int(windows[a]), int(index[a:z].max()))
                parts.append(self._run_pieces(window, index[a:z]))
            columns = [np.concatenate([part[c] for part in parts]) for c in range(4)]
            counts = np.concatenate([np.diff(part[4]) for part in parts])
            bounds = np.concatenate(([0], counts.cumsum()))
        return dict(zip(("ids", "positions", "offsets", "lengths"), columns, strict=True)) | {
            "bounds": bounds
        }

    def _checked(self, epoch: int, window: int, last: int) -> WindowPieces:
        """The window's pieces, once its pack ``last`` is checked to exist."""
        pieces = self._window(epoch, window)
        if last >= pieces.plan.num_packs:
            raise ConfigError(
                f"pack id {last + window * self.slots} names pack {last} of window {window} of "
                f"epoch {epoch}, which has {pieces.plan.num_packs}; pack ids come from this "
                "loader's order"
            )
        return pieces

    def _run_pieces(
        self, window: WindowPieces, wanted: slice | np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """The pieces of packs ``wanted`` (indices in the window: a slice of consecutive ones,
        or an array) of one window: sample ids, positions, offsets, lengths, and the packs'
        bounds in them (int64, packs + 1, from 0)."""
        plan, sample_ids, positions = window.plan, window.ids, window.positions
        if isinstance(wanted, slice):  # consecutive packs: one run of pieces
            bounds = plan.bounds[wanted.start : wanted.stop + 1]
            pieces = slice(int(bounds[0]), int(bounds[-1]))
            bounds = bounds - bounds[0]
        else:
            begin, end = plan.bounds[wanted], plan.bounds[wanted + 1]
            counts = end - begin
            bounds = np.concatenate(([0], counts.cumsum()))
            pieces = np.arange(int(bounds[-1]), dtype=np.int64) + (begin - bounds[:-1]).repeat(
                counts
            )
        return (
            sample_ids[pieces],
            positions[pieces],
            plan.start[pieces],
            plan.length[pieces],
            bounds,
        )

    def frontier(self, epoch: int, position: int) -> int:
        """The sample position the first ``position`` packs of ``epoch`` have reached: every
        sample before it is delivered or planned into a delivered window."""
        table = self.table(epoch)
        if position >= table.total:
            return self.samples
        window, index = table.locate(position)
        first, stop = self.window_span(window)
        return first if index == 0 else stop

    def pack_of(self, epoch: int, position: int) -> list[dict[str, int]]:
        """Where the sample at ``position`` of the epoch's sample order went: per piece (one
        unless split) the pack ``position`` in the pack stream, its ``pack_id``, and the
        ``pack_offset`` (token) and ``offset`` within the sample of that piece."""
        if not 0 <= position < self.samples:
            raise ConfigError(f"sample position {position} outside [0, {self.samples})")
        window = position // self.window
        plan = self.window_plan(epoch, window)
        start = int(self.table(epoch).starts[window])
        found = []
        for index in range(plan.num_packs):
            pieces = plan.pack(index)
            local = plan.sample[pieces]
            before = np.concatenate([[0], np.cumsum(plan.length[pieces])])
            for at in np.flatnonzero(local == position - window * self.window).tolist():
                found.append(
                    {
                        "position": start + index,
                        "pack_id": window * self.slots + index,
                        "pack_offset": int(before[at]),
                        "offset": int(plan.start[pieces][at]),
                    }
                )
        return found

    def settings(self) -> dict[str, int | str]:
        """What the cursor's fingerprint checks: the sample order's settings and the packing's
        (a change of max_tokens, window, strategy, overlong or lengths is refused by name)."""
        inner = dict(self.inner.settings())
        packed = self.packed
        return {
            "order": f"packed:{inner.pop('order', '?')}",
            **{f"sample_{key}": value for key, value in inner.items()},
            "packing": PACKING_ALGORITHM,
            "max_tokens": packed.max_tokens,
            "window": packed.window,
            "strategy": packed.strategy,
            "overlong": packed.overlong,
            "lengths": packed.lengths_digest,
        }

    # -- the loader's resumable-order protocol (build_refs.ResumableOrder) --------------------

    def _resumable_inner(self) -> Any:
        from resumable_loader.loader.build_refs import resumable_order

        return resumable_order(self.inner)

    def resumed_settings(self, saved: Any) -> dict[str, int | str]:
        """The fingerprint fields a state whose ``order_state`` is ``saved`` holds, where they
        differ from :meth:`settings`: over a Mixture whose sources changed since the save (a
        source added for the future), the lengths digest over the saved run's sources, each
        source's lengths as they are now (so a changed one still shows)."""
        inner = self._resumable_inner()
        names = None if inner is None else inner.saved_sources(saved)
        digest = None if names is None else self.packed.sources_lengths_digest(names)
        return {} if digest is None else {"lengths": digest}

    def resume_state(self, epoch: int, position: int) -> Any:
        """The sample order's own state (a Mixture's) at the frontier, else None."""
        inner = self._resumable_inner()
        return None if inner is None else inner.resume_state(epoch, self.frontier(epoch, position))

    def check_resume(self, saved: Any, epoch: int, position: int, *, log: bool = True) -> None:
        """The sample order's own check (a Mixture's past) at the frontier (``log``: as
        the inner order's)."""
        if position > self.epoch_length(epoch):
            raise StateDictError(
                f"position {position} is past the {self.epoch_length(epoch)} packs of epoch "
                f"{epoch}; pass an unmodified state_dict()"
            )
        inner = self._resumable_inner()
        if inner is not None:
            inner.check_resume(saved, epoch, self.frontier(epoch, position), log=log)

    def provenance(self, epoch: int, position: int) -> dict[str, Any]:
        """Which pack position ``position`` of ``epoch`` delivers, without loading it: its id,
        and per piece the sample id, its position in the sample order, the token offset within
        the sample and within the pack, and its length."""
        table = self.table(epoch)
        window, index = table.locate(position)
        pack_id = window * self.slots + index
        pieces = self.pack_pieces(epoch, pack_id)
        starts = np.concatenate([[0], np.cumsum(pieces["lengths"])[:-1]])
        return {
            "epoch": epoch,
            "position": position,
            "id": pack_id,
            "window": window,
            "samples": [
                {
                    "id": int(sample),
                    "position": int(at),
                    "offset": int(offset),
                    "pack_offset": int(pack_offset),
                    "length": int(length),
                }
                for sample, at, offset, pack_offset, length in zip(
                    pieces["ids"],
                    pieces["positions"],
                    pieces["offsets"],
                    starts,
                    pieces["lengths"],
                    strict=True,
                )
            ],
        }

    def progress(self, epoch: int, position: int) -> dict[str, Any]:
        """The sample order's progress (a Mixture's) at the frontier."""
        inner = self._resumable_inner()
        if inner is None:
            raise ConfigError("progress() needs a Mixture inside the Packed dataset")
        return inner.progress(epoch, self.frontier(epoch, position))

    def __repr__(self) -> str:
        return f"PackedOrder({self.inner!r}, max_tokens={self.packed.max_tokens})"
