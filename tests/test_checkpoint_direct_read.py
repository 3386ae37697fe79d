"""The load's direct read: whole tensors straight into place, the rest through DCP, same result.

Each test compares against DCP's own ``FileSystemReader`` on the same files, bit for bit, and
counts what was read in place, so that a fallback that silently took over would be seen.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from resumable_loader.checkpoint import collective, direct_read
from resumable_loader.errors import CheckpointError


def saved_tensors(root: Path) -> dict[str, torch.Tensor]:
    """A raw DCP checkpoint of tensors of several dtypes and shapes, one a 0-dim one."""
    torch.manual_seed(0)
    tensors = {
        "w": torch.randn(64, 32),
        "half": torch.randn(7, 5).to(torch.bfloat16),
        "ints": torch.arange(-50, 50, dtype=torch.int64),
        "step": torch.tensor(3.0),
        "slice": torch.randn(10, 10)[2:5],  # a view of a bigger storage
    }
    with collective.single_process_quiet():
        dcp.save(tensors, checkpoint_id=root, no_dist=True)
    return tensors


def load(root: Path, targets: dict, reader: FileSystemReader) -> None:
    with collective.single_process_quiet():
        dcp.load(targets, checkpoint_id=root, storage_reader=reader, no_dist=True)


def blank(like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: torch.full_like(value, 9) for key, value in like.items()}


class Counting(direct_read.DirectReader):
    """A DirectReader that counts the items it read in place and those it left to DCP."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.in_place = self.through_dcp = 0

    def _read_in_place(self, *args, **kwargs) -> bool:
        done = super()._read_in_place(*args, **kwargs)
        self.in_place += done
        self.through_dcp += not done
        return done


def test_whole_tensors_are_read_in_place_and_equal_dcps_own_read(tmp_path):
    saved = saved_tensors(tmp_path)
    ours, theirs = blank(saved), blank(saved)
    targets = {key: value.data_ptr() for key, value in ours.items()}
    reader = Counting(tmp_path)
    load(tmp_path, ours, reader)
    load(tmp_path, theirs, FileSystemReader(tmp_path))
    for key, value in saved.items():
        assert torch.equal(ours[key], value) and torch.equal(theirs[key], value), key
        assert ours[key].data_ptr() == targets[key], key  # into the same memory
    assert (reader.in_place, reader.through_dcp) == (len(saved), 0)


def test_a_target_that_is_not_one_run_of_memory_goes_through_dcp(tmp_path):
    saved = saved_tensors(tmp_path)
    transposed = torch.zeros(32, 64).t()  # shape (64, 32), not contiguous
    targets = blank(saved) | {"w": transposed}
    reader = Counting(tmp_path)
    load(tmp_path, targets, reader)
    assert torch.equal(transposed, saved["w"])
    assert all(torch.equal(targets[key], value) for key, value in saved.items())
    assert (reader.in_place, reader.through_dcp) == (len(saved) - 1, 1)


def test_a_conjugate_view_target_goes_through_dcp(tmp_path):
    """A conjugate view's memory holds the conjugates: read in place it would be wrong."""
    complex_values = torch.randn(4, 3, dtype=torch.complex64)
    with collective.single_process_quiet():
        dcp.save({"c": complex_values}, checkpoint_id=tmp_path, no_dist=True)
    target = torch.zeros(4, 3, dtype=torch.complex64).conj()
    reader = Counting(tmp_path)
    load(tmp_path, {"c": target}, reader)
    assert torch.equal(target, complex_values)
    assert (reader.in_place, reader.through_dcp) == (0, 1)


def test_a_file_written_in_another_byte_order_goes_through_dcp(tmp_path, monkeypatch):
    """torch.load swaps the bytes of such a file; a read in place would not, so it is left
    to DCP whole (the order is asked once a file)."""
    saved = saved_tensors(tmp_path)
    asked = []
    monkeypatch.setattr(direct_read, "_native_order", lambda item: bool(asked.append(item)))
    targets, reader = blank(saved), Counting(tmp_path)
    load(tmp_path, targets, reader)
    assert all(torch.equal(targets[key], value) for key, value in saved.items())
    assert (reader.in_place, len(asked)) == (0, 1)


def test_the_byte_order_record_of_a_torch_save_is_read(tmp_path):
    path = tmp_path / "item.pt"
    torch.save(torch.ones(3), path)
    with open(path, "rb") as item:
        assert direct_read._native_order(item)


def test_a_file_cut_between_the_parse_and_the_read_raises_naming_it(tmp_path):
    """The run of bytes a tensor needs ends early only if the file is cut while it is read."""
    path = tmp_path / "short.distcp"
    path.write_bytes(bytes(range(100)))
    target = torch.zeros(10, dtype=torch.int64)  # 80 bytes
    with (
        open(path, "rb") as f,
        pytest.raises(CheckpointError, match=r"short.distcp: ends at byte 100"),
    ):
        direct_read._pread_into(f.fileno(), target, 40, path)
