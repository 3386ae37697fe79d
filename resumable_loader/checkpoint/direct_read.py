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
import os
import sys
from typing import IO, Any

import torch
from torch.distributed.checkpoint import FileSystemReader
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
                        native = _native_order(self._slice_file(stream, info))
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
        try:
            saved = torch.load(
                self._slice_file(stream, info), map_location="meta", weights_only=True
            )
        except Exception:  # what the meta parse does not take, DCP reads (or names the error)
            return False
        start = getattr(saved.untyped_storage(), "_checkpoint_offset", None)
        whole = not any(item.storage_offsets) and tuple(item.lengths) == tuple(saved.shape)
        if start is None or not whole or not _plain(saved):
            return False
        target = planner.resolve_tensor(item).detach()
        if (
            target.device.type != "cpu"
            or target.dtype != saved.dtype
            or target.shape != saved.shape
            or not _plain(target)
        ):
            return False
        offset = info.offset + start + saved.storage_offset() * saved.element_size()
        _pread_into(stream.fileno(), target, offset, path)
        planner.commit_tensor(item, target)
        return True


def _plain(tensor: torch.Tensor) -> bool:
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
