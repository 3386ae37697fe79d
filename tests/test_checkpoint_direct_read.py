"""The load's direct read: whole tensors straight into place, the rest through DCP, same result.

Each test compares against DCP's own ``FileSystemReader`` on the same files, bit for bit, and
counts what was read in place, so that a fallback that silently took over would be seen.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from checkpoint_job import build, digest
from test_checkpoint import trained
from test_checkpoint_refusals import snapshot
from torch.distributed.checkpoint import FileSystemReader

from resumable_loader.checkpoint import Checkpointer, collective, direct_read, staging
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


def test_a_read_failing_midway_puts_every_component_back(tmp_path, monkeypatch):
    """The read begins (some tensors already hold the checkpoint's values), then fails: the
    copy kept for the rollback puts back the model, optimizer and the rest bit for bit."""
    state, _ = trained(4)
    Checkpointer(tmp_path).save(4, state)
    target, _ = trained(2)  # a trained optimizer: its moments are copied, then put back
    before = snapshot(target)
    reads = [0]
    pread = direct_read._pread_into

    def failing(*args) -> None:
        reads[0] += 1
        if reads[0] == 3:
            raise OSError(5, "Input/output error")
        pread(*args)

    monkeypatch.setattr(direct_read, "_pread_into", failing)
    with pytest.raises(CheckpointError, match=r"(?s)reading the checkpoint failed.*Input/output"):
        Checkpointer(tmp_path).load(target)
    assert reads[0] == 3 and snapshot(target) == before
    monkeypatch.setattr(direct_read, "_pread_into", pread)
    Checkpointer(tmp_path).load(target)
    assert digest(target) == digest(state)


def test_a_fresh_optimizer_is_emptied_again_without_a_copy_of_its_moments(tmp_path, monkeypatch):
    """Only what a failure must put back is copied: an optimizer without state when the load
    began is emptied again on a failure, so its moments are not cloned (a trained one's are)."""
    state, _ = trained(4)
    Checkpointer(tmp_path).save(4, state)
    clone, clones = torch.Tensor.clone, []

    def counting(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if threading.current_thread().name == staging.Previous.THREAD:
            clones.append(tensor)
        return clone(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "clone", counting)
    counts = []
    for target in (build(4, 0), trained(2)[0]):
        clones.clear()
        Checkpointer(tmp_path).load(target)
        assert digest(target) == digest(state)
        counts.append(len(clones))
    moments = sum(len(per_param) for per_param in state["optimizer"].state.values())
    assert counts[0] > 0 and counts[1] - counts[0] == moments


def test_a_copy_that_fails_refuses_the_load_before_anything_changes(tmp_path, monkeypatch):
    state, _ = trained(4)
    Checkpointer(tmp_path).save(4, state)
    target, _ = trained(2)
    before = snapshot(target)
    clone = torch.Tensor.clone

    def failing(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if threading.current_thread().name == staging.Previous.THREAD:
            raise MemoryError("no room for the copy")
        return clone(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "clone", failing)
    with pytest.raises(
        CheckpointError, match=r"for the rollback failed .*MemoryError.*rollback=False"
    ):
        Checkpointer(tmp_path).load(target)
    assert snapshot(target) == before
