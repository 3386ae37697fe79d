"""Reads each checkpoint file once, whole and in order: tensors into staged ones, every byte hashed.

The default load stages the checkpoint beside the live state (:mod:`staging`) and must verify
every file's content checksum before anything is applied. Hashing the files in a pass of its
own and then reading them costs two reads; :class:`StagingReader` does both in one: for each
file it needs, it ``os.preadv``s the whole file, in file order, in runs of at most
:data:`CHUNK` bytes, each byte into its destination (a whole tensor's bytes straight into the
staged tensor it loads into, as :mod:`direct_read` places them; an item DCP must decode, such
as a non-tensor value or a slice of a saved chunk, into a buffer of its own; the bytes between
items into a small scratch buffer), and feeds each run to the file's xxh3 hasher while it is
still in the CPU's cache; the staged memory, fresh, is mapped from the back on a second thread
meanwhile (:mod:`prefault`). Only when every file's digest and length equal the manifest's are
the buffered items decoded (``torch.load`` of bytes that passed the checksum): a damaged file
raises a CheckpointError naming it before anything is decoded, and :attr:`problems` lists
what was found for the load's fallback.
"""

from __future__ import annotations

import ctypes
import dataclasses
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.futures import Future

from resumable_loader.checkpoint import direct_read, integrity
from resumable_loader.checkpoint.prefault import Prefaulter
from resumable_loader.errors import CheckpointError

CHUNK = 1 << 20  # bytes per preadv: hashed while still in the cache
_IOV_MAX = 1024  # iovecs per preadv (Linux's limit)


class StagingReader(FileSystemReader):
    """DCP's reader of a checkpoint folder that reads each file it needs once, whole, hashing it.

    Args:
        path: the checkpoint's folder.
        files: the manifest's ``files`` (name -> digest entry), or None to check nothing
            (``checksums="trust"``, or a version-1 manifest).
    """

    def __init__(self, path: str | os.PathLike, files: dict[str, Any] | None) -> None:
        super().__init__(path)
        self.files = files
        self.hashed: dict[str, int] = {}  # file name -> bytes hashed (files wholly read)
        self.problems: list[str] = []
        self.in_place = self.decoded = 0  # items read straight into their target, or decoded

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        per_file: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            name = self.storage_data[item.storage_index].relative_path
            per_file.setdefault(name, []).append(item)
        later: list[Callable[[], None]] = []
        transformed: list[ReadItem] = []
        for name, items in sorted(per_file.items()):
            later += self._read_file(name, items, planner, transformed)
        if self.problems:  # nothing decoded, nothing committed
            raise CheckpointError("; ".join(self.problems))
        for action in later:
            action()
        if transformed:  # stream transforms (none of our writer's): DCP's own way, re-read
            return super().read_data(dataclasses.replace(plan, items=transformed), planner)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _read_file(
        self,
        name: str,
        items: list[ReadItem],
        planner: LoadPlanner,
        transformed: list[ReadItem],
    ) -> list[Callable[[], None]]:
        """Read and hash file ``name`` whole; return what commits or decodes its items once the
        checksums passed (nothing if this file failed: its problem is recorded)."""
        path = Path(self.fs.concat_path(self.path, name))
        expected = None if self.files is None else self.files.get(name)
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if expected is not None and size != expected["bytes"]:
                found = {integrity.ALGORITHM: "", "bytes": size}
                self.problems.append(str(integrity.compare(path, found, expected)))
                return []
            runs, actions = self._plan_file(stream, items, planner, transformed)
            hasher = integrity.new_hasher() if expected is not None else None
            _read_runs(stream.fileno(), runs, size, hasher, path)
        if hasher is not None and expected is not None:
            problem = integrity.compare(path, integrity.entry(hasher, size), expected)
            if problem is not None:
                self.problems.append(problem)
                return []
            self.hashed[name] = size
        return actions

    def _plan_file(
        self,
        stream: Any,
        items: list[ReadItem],
        planner: LoadPlanner,
        transformed: list[ReadItem],
    ) -> tuple[list[tuple[int, memoryview]], list[Callable[[], None]]]:
        """(the file's runs that have a destination: (offset, memory), the actions after)."""
        by_chunk: dict[Any, list[ReadItem]] = {}
        for item in items:
            by_chunk.setdefault(item.storage_index, []).append(item)
        runs: list[tuple[int, memoryview]] = []
        actions: list[Callable[[], None]] = []
        native: bool | None = None  # the file's byte order is ours (asked once)
        for index, chunk_items in by_chunk.items():
            info = self.storage_data[index]
            if info.transform_descriptors:
                transformed += chunk_items
                continue
            first = chunk_items[0]
            placed = None
            if len(chunk_items) == 1 and first.type == LoadItemType.TENSOR:
                if native is None:
                    native = direct_read.native_order(stream, info)
                placed = direct_read.place(stream, first, info, planner) if native else None
            if placed is not None:
                target, offset = placed
                if target.numel():
                    runs.append((offset, _bytes_of(target)))
                actions.append(_committer(planner, first, target))
                self.in_place += 1
                continue
            kept = bytearray(info.length)  # decoded once its file's checksum passed
            runs.append((info.offset, memoryview(kept)))
            for item in chunk_items:
                actions.append(_decoder(planner, item, kept))
                self.decoded += 1
        return sorted(runs, key=lambda run: run[0]), actions


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def _committer(planner: LoadPlanner, item: ReadItem, target: torch.Tensor) -> Callable[[], None]:
    return lambda: planner.commit_tensor(item, target)


def _decoder(planner: LoadPlanner, item: ReadItem, data: bytearray) -> Callable[[], None]:
    """What DCP's FileSystemReader does with an item's bytes, from ``data``."""

    def decode() -> None:
        if item.type == LoadItemType.BYTE_IO:
            planner.load_bytes(item, io.BytesIO(data))
            return
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        saved = narrow_tensor_by_index(saved, item.storage_offsets, item.lengths)
        target = planner.resolve_tensor(item).detach()
        if target.size() != saved.size():
            raise CheckpointError(
                f"item {item.storage_index}: the checkpoint holds {tuple(saved.size())}, the "
                f"state {tuple(target.size())}"
            )
        target.copy_(saved)
        planner.commit_tensor(item, target)

    return decode


def _read_runs(
    fd: int, runs: list[tuple[int, memoryview]], size: int, hasher: Any, path: Path
) -> None:
    """Read bytes 0..``size`` of ``fd`` once, in order: each run of ``runs`` into its memory,
    the bytes between them into a scratch buffer, all of it through ``hasher`` (if any); the
    runs' memory is mapped ahead of the read on another thread (:class:`Prefaulter`)."""
    regions = [(offset, _address(memory), len(memory)) for offset, memory in runs if len(memory)]
    with Prefaulter(regions) as prefaulter:
        _read_in_order(fd, runs, size, hasher, path, prefaulter)


def _address(memory: memoryview) -> int:
    """Where ``memory`` (writable) starts."""
    return ctypes.addressof(ctypes.c_char.from_buffer(memory))


def _read_in_order(
    fd: int,
    runs: list[tuple[int, memoryview]],
    size: int,
    hasher: Any,
    path: Path,
    prefaulter: Prefaulter,
) -> None:
    """:func:`_read_runs`' reads, telling ``prefaulter`` where they have got to."""
    scratch = memoryview(bytearray(CHUNK))
    batch: list[memoryview] = []
    batch_start = filled = used = 0  # file offset of the batch, its bytes, scratch used
    position = 0

    def flush() -> None:
        nonlocal batch, filled, used, batch_start
        if batch:
            prefaulter.reached(position)
            _preadv_all(fd, batch, batch_start, hasher, path)
        batch, filled, used, batch_start = [], 0, 0, position

    def add(view: memoryview, scratch_bytes: int = 0) -> None:
        nonlocal filled, used, position
        if filled + len(view) > CHUNK or len(batch) == _IOV_MAX or used + scratch_bytes > CHUNK:
            flush()
        batch.append(view)
        filled += len(view)
        used += scratch_bytes
        position += len(view)

    def gap(end: int) -> None:
        while position < end:
            if used == CHUNK or filled == CHUNK or len(batch) == _IOV_MAX:
                flush()  # so that add() below keeps this scratch slice in this batch
            length = min(end - position, CHUNK - max(used, filled))
            add(scratch[used : used + length], length)

    for offset, memory in runs:
        gap(offset)
        if offset < position:  # overlapping runs: the metadata is inconsistent
            raise CheckpointError(f"{path}: two items claim byte {offset}; the file is damaged")
        for piece in range(0, len(memory), CHUNK):
            add(memory[piece : piece + CHUNK])
    gap(size)
    flush()


def _preadv_all(fd: int, views: list[memoryview], offset: int, hasher: Any, path: Path) -> None:
    """Fill every view of ``views`` from ``offset`` on (short reads continued), hashing each
    byte in order."""
    views = list(views)
    while views:
        got = os.preadv(fd, views, offset)
        if got == 0:
            raise CheckpointError(
                f"{path}: ends at byte {offset}, short of what the checkpoint's metadata places "
                "there (truncated while it was read?)"
            )
        offset += got
        while got:
            view = views[0]
            taken = min(len(view), got)
            if hasher is not None:
                hasher.update(view[:taken])
            got -= taken
            if taken == len(view):
                views.pop(0)
            else:
                views[0] = view[taken:]
