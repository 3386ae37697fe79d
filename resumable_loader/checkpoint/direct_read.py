"""Reads a checkpoint's tensors straight into the tensors they load into, without DCP's copies.

DCP's ``FileSystemReader`` reads every tensor item with ``torch.load`` into a fresh tensor and
copies that into its target: for a 1 GiB state, 1 GiB of fresh memory (whose page faults cost
more than the copy here) and a second copy. :class:`DirectReader` reads each item whose bytes
are one run in the file (a contiguous tensor saved whole by ``torch.save``, no stream
transforms, the machine's byte order) with ``os.preadv`` into its target, when that is a
contiguous CPU tensor of the same dtype and shape. The run's place comes from ``torch.load(...,
map_location="meta")``, which parses the item's zip records and pickle without reading its
data (the storage's ``_checkpoint_offset``). Any other item (non-tensor values, a slice of a
saved chunk when resharding, another dtype) goes through DCP's own read.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import pickle
import sys
from collections import OrderedDict
from typing import IO, Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.filesystem import _create_file_view
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.futures import Future

from resumable_loader.errors import CheckpointError

_BYTE_ORDER = "byteorder"  # the record torch.save writes the writer's byte order in


class DirectReader(FileSystemReader):
    """DCP's reader of a checkpoint folder, reading whole tensors in place (see the module)."""

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        per_file: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            per_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(
                item
            )
        rest: list[ReadItem] = []
        for relative_path, items in per_file.items():
            path = self.fs.concat_path(self.path, relative_path)
            with self.fs.create_stream(path, "rb") as stream:
                native: bool | None = None  # the file's byte order is ours (asked once)
                for item in items:
                    info = self.storage_data[item.storage_index]
                    if item.type != LoadItemType.TENSOR or info.transform_descriptors:
                        rest.append(item)
                        continue
                    if native is None:
                        native = native_order(stream, info)
                    if not (native and self._read_in_place(stream, item, info, planner, path)):
                        rest.append(item)
        if rest:  # DCP's own way, for what cannot be read in place
            return super().read_data(dataclasses.replace(plan, items=rest), planner)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _read_in_place(
        self, stream: IO[bytes], item: ReadItem, info: Any, planner: LoadPlanner, path: Any
    ) -> bool:
        """Read ``item`` into its target if both are one contiguous run; False if not."""
        found = place(stream, item, info, planner)
        if found is None:
            return False
        target, offset = found
        _pread_into(stream.fileno(), target, offset, path)
        planner.commit_tensor(item, target)
        return True


def place(
    stream: IO[bytes], item: ReadItem, info: Any, planner: LoadPlanner
) -> tuple[torch.Tensor, int] | None:
    """(the target of ``item``, the file offset of its bytes) if both are one contiguous run
    of the same dtype and shape (see the module); None if not. Reads the item's zip records
    and pickle only, not its data."""
    target = planner.resolve_tensor(item).detach()
    if target.device.type != "cpu" or not plain(target) or any(item.storage_offsets):
        return None
    if tuple(item.lengths) != tuple(target.shape):
        return None
    start = _record_offset(_slice(stream, info), target)
    if start is None:  # not the usual pickle of a whole tensor: torch parses it
        try:
            saved = torch.load(_slice(stream, info), map_location="meta", weights_only=True)
        except Exception:  # what the meta parse does not take, DCP reads (or names the error)
            return None
        start = getattr(saved.untyped_storage(), "_checkpoint_offset", None)
        if start is None or not plain(saved) or saved.shape != target.shape:
            return None
        if saved.dtype != target.dtype:
            return None
        start += saved.storage_offset() * saved.element_size()
    return target, info.offset + start


def _record_offset(item: IO[bytes], target: torch.Tensor) -> int | None:
    """The offset in ``item`` (a ``torch.save`` zip) of its tensor's bytes, if its pickle is
    byte for byte the one ``torch.save`` writes for a whole contiguous tensor of ``target``'s
    dtype and shape (storage "0" on the CPU, offset 0, no grad); None if not.

    torch's ``weights_only`` unpickler takes ~0.6 ms per item (a 1 GiB AdamW state has 96
    items); comparing the pickle with that template takes microseconds, and anything else
    (another torch's pickle, a view, another layout) goes to the full parse."""
    try:
        records = torch._C.PyTorchFileReader(item)
        if not records.has_record(_STORAGE):
            return None
        pickled = bytes(records.get_record(_PICKLE))
        if pickled != _pickle_of(target.dtype, tuple(target.shape)):
            return None
        return int(records.get_record_offset(_STORAGE))
    except Exception:  # not a zip torch reads: the full parse names the problem
        return None


_PICKLE, _STORAGE = "data.pkl", "data/0"


class _Storage:
    """Stands for a tensor's storage in :func:`_pickle_of` (given a persistent id there)."""


class _WholeTensor:
    """Pickles as ``torch.save`` pickles a whole contiguous CPU tensor (a ``__reduce_ex__``
    of ``torch._utils._rebuild_tensor_v2`` on storage "0")."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape, self.storage = shape, _Storage()
        strides, numel = [], 1
        for size in reversed(shape):
            strides.append(numel)
            numel *= size
        self.strides, self.numel = tuple(reversed(strides)), numel

    def __reduce_ex__(self, protocol: Any) -> Any:
        rebuild = torch._utils._rebuild_tensor_v2
        return rebuild, (self.storage, 0, self.shape, self.strides, False, OrderedDict())


@functools.lru_cache(maxsize=1024)
def _pickle_of(dtype: torch.dtype, shape: tuple[int, ...]) -> bytes:
    """The pickle ``torch.save`` writes (protocol 2) for a whole contiguous tensor."""
    tensor = _WholeTensor(shape)
    storage_type = getattr(torch, torch.storage._dtype_to_storage_type_map()[dtype])

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if obj is tensor.storage:
                return ("storage", storage_type, "0", "cpu", tensor.numel)
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(tensor)
    return buffer.getvalue()


def native_order(stream: IO[bytes], info: Any) -> bool:
    """Whether the item ``info`` of the open file ``stream`` is in this machine's byte order."""
    return _native_order(_slice(stream, info))


def _slice(stream: IO[bytes], info: Any) -> IO[bytes]:
    """The item ``info`` of the open file ``stream`` as a file of its own (DCP's slice)."""
    return _create_file_view(stream, info.offset, info.length)


def plain(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s values are its memory's bytes, in one run (no view bits)."""
    return (
        type(tensor) is torch.Tensor
        and tensor.layout == torch.strided
        and not tensor.is_quantized
        and not tensor.is_conj()
        and not tensor.is_neg()
        and tensor.is_contiguous()
    )


def _native_order(item: IO[bytes]) -> bool:
    """Whether the item (a ``torch.save`` zip) was written in this machine's byte order."""
    records = torch._C.PyTorchFileReader(item)
    if not records.has_record(_BYTE_ORDER):  # old writers; torch.load guesses, so shall DCP
        return False
    return bytes(records.get_record(_BYTE_ORDER)).decode() == sys.byteorder


def _pread_into(fd: int, target: torch.Tensor, offset: int, path: Any) -> None:
    """Fill ``target`` (contiguous, on the CPU) with the file's bytes from ``offset``."""
    if target.numel() == 0:
        return
    view = memoryview(target.reshape(-1).view(torch.uint8).numpy())
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise CheckpointError(
                f"{path}: ends at byte {offset + done}, but a tensor's data runs to byte "
                f"{offset + len(view)} (truncated after it was verified?)"
            )
        done += got
