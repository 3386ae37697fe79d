"""The default load: each file read once into a staged state and hashed, then swapped in.

Checks that the staged read equals DCP's own read and reads every data file exactly once (no
second hashing pass), that the swap keeps the Python objects (Parameters, their grad and
requires_grad, the optimizer's param_groups) and copies nothing for the rollback, and that a
failure at any point after the staging (the read, a component's load_state_dict after the
swap, an allocation) leaves every component as it was, bit for bit.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from checkpoint_job import build, digest
from test_checkpoint import trained
from test_checkpoint_direct_read import blank, load, saved_tensors
from test_checkpoint_refusals import snapshot
from torch import nn
from torch.distributed.checkpoint import FileSystemReader

from resumable_loader.checkpoint import (
    Checkpointer,
    collective,
    direct_read,
    integrity,
    staged_read,
    staging,
)
from resumable_loader.errors import CheckpointError


def test_the_staged_read_equals_dcps_and_hashes_each_file_whole(tmp_path):
    saved = saved_tensors(tmp_path)
    data = sorted(p.name for p in tmp_path.glob("*.distcp"))
    files = {name: integrity.digest_file(tmp_path / name) for name in data}
    ours, theirs = blank(saved), blank(saved)
    reader = staged_read.StagingReader(tmp_path, files)
    load(tmp_path, ours, reader)
    load(tmp_path, theirs, FileSystemReader(tmp_path))
    for key, value in saved.items():
        assert torch.equal(ours[key], value) and torch.equal(theirs[key], value), key
    # the slice was saved with its whole storage: placed by the full parse, still in place
    assert (reader.in_place, reader.decoded) == (len(saved), 0)
    assert reader.hashed == {name: files[name]["bytes"] for name in data}
    assert reader.problems == []


def test_a_flipped_byte_is_named_and_nothing_decoded(tmp_path):
    saved = saved_tensors(tmp_path)
    (name,) = [p.name for p in tmp_path.glob("*.distcp")]
    files = {name: integrity.digest_file(tmp_path / name)}
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    reader = staged_read.StagingReader(tmp_path, files)
    with pytest.raises(BaseException):  # noqa: B017 (DCP wraps it: a CheckpointException)
        load(tmp_path, blank(saved), reader)
    assert "its bytes changed after the save" in reader.problems[0]
    assert len(reader.problems) == 1 and name in reader.problems[0]
    assert reader.hashed == {}


def test_runs_cover_the_file_once_in_order_across_chunks(tmp_path, monkeypatch):
    """Gaps longer than the scratch buffer, tensors longer than a chunk, several iovecs per
    call: every byte read once, in order, hashed in order, each tensor's bytes in place."""
    monkeypatch.setattr(staged_read, "CHUNK", 64)
    payload = os.urandom(1000)
    path = tmp_path / "f.bin"
    path.write_bytes(payload)
    first, second = bytearray(150), bytearray(7)
    offsets = []
    preadv = os.preadv

    def recording(fd, views, offset):
        offsets.append((offset, sum(len(v) for v in views)))
        return preadv(fd, views, offset)

    monkeypatch.setattr(os, "preadv", recording)
    hasher = integrity.new_hasher()
    runs = [(200, memoryview(first)), (351, memoryview(second))]
    with open(path, "rb") as f:
        staged_read._read_runs(f.fileno(), runs, len(payload), hasher, path)
    assert bytes(first) == payload[200:350] and bytes(second) == payload[351:358]
    assert hasher.hexdigest() == integrity.of_bytes(payload)[integrity.ALGORITHM]
    position = 0
    for offset, length in offsets:
        assert offset == position and 0 < length <= 64
        position += length
    assert position == len(payload)


def test_a_load_reads_every_data_file_once(tmp_path, monkeypatch):
    """No hashing pass before the read: the data files are hashed by the read itself."""
    state, _ = trained(4)
    Checkpointer(tmp_path).save(4, state)
    hashed_apart: list[str] = []
    digest_file = integrity.digest_file

    def recording(path: Path) -> dict:
        hashed_apart.append(Path(path).name)
        return digest_file(path)

    monkeypatch.setattr(integrity, "digest_file", recording)
    target = build(4, 0)
    decision = Checkpointer(tmp_path).load(target)
    assert digest(target) == digest(state)
    assert hashed_apart and not [n for n in hashed_apart if n.endswith(".distcp")]
    data = list(Path(decision["checkpoint"]).glob("*.distcp"))
    assert decision["checksums"]["mode"] == "verified"
    assert decision["checksums"]["bytes"] >= sum(p.stat().st_size for p in data)


def test_the_swap_keeps_every_python_object_and_copies_nothing(tmp_path, monkeypatch):
    state, _ = trained(4)
    Checkpointer(tmp_path).save(4, state)
    target, _ = trained(2)
    model, optimizer = target["model"], target["optimizer"]
    params = list(model.parameters())
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    grads = [p.grad for p in params]
    storages = [p.untyped_storage().data_ptr() for p in params]
    versions = [p._version for p in params]
    clones = []
    clone = torch.Tensor.clone

    def counting(tensor, *args, **kwargs):
        clones.append(tuple(tensor.shape))
        return clone(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "clone", counting)
    Checkpointer(tmp_path).load(target)
    monkeypatch.setattr(torch.Tensor, "clone", clone)
    assert digest(target) == digest(state)
    assert clones == []  # the old storages are the rollback
    assert list(model.parameters()) == params and all(
        a is b for a, b in zip(model.parameters(), params, strict=True)
    )
    assert all(q is p for q, p in zip(optimizer.param_groups[0]["params"], params, strict=True))
    assert all(p.grad is g for p, g in zip(params, grads, strict=True))
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in params)
    assert all(p.untyped_storage().data_ptr() != s for p, s in zip(params, storages, strict=True))
    assert all(p._version > v for p, v in zip(params, versions, strict=True))
    # and it trains on: the optimizer steps the model's parameters
    before = [p.detach().clone() for p in params]
    optimizer.step()
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_the_hooks_on_each_parameter_s_gradient_accumulator_still_fire(tmp_path):
    """DDP all-reduces gradients from hooks on each parameter's AccumulateGrad node: a swap
    through set_() gave the parameters new nodes, and after a load every rank trained on its
    own gradient (the weights drifted apart, no error). Also after a load rolled back."""
    state, _ = trained(4)
    state["last"] = Exploding(RuntimeError("boom"))
    state["last"].value = 2
    Checkpointer(tmp_path).save(4, state)
    target, _ = trained(2)
    params = list(target["model"].parameters())
    fired: list[int] = []
    nodes = []  # held, as DDP's reducer holds them (autograd keeps them only weakly)
    for number, p in enumerate(params):
        nodes.append(p.expand_as(p).grad_fn.next_functions[0][0])  # as the reducer finds it
        nodes[-1].register_hook(lambda *_, number=number: fired.append(number))

    def backward() -> list[int]:
        fired.clear()
        sum((p * 2).sum() for p in params).backward()
        return sorted(fired)

    target["last"] = Exploding(RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        Checkpointer(tmp_path).load(target)  # swapped in, then back
    assert backward() == list(range(len(params)))
    target["last"].value = 2
    Checkpointer(tmp_path).load(target)
    assert backward() == list(range(len(params)))


class Exploding:
    """A component whose load_state_dict raises, applied after the tensors were swapped."""

    def __init__(self, error: BaseException) -> None:
        self.error, self.value = error, 1

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        if state["value"] != self.value:
            raise self.error
        self.value = state["value"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_component_raising_after_the_swap_puts_everything_back(tmp_path, error):
    state, _ = trained(4)
    state["last"] = Exploding(error)
    state["last"].value = 2
    Checkpointer(tmp_path).save(4, state)
    target, _ = trained(2)
    target["last"] = Exploding(error)
    params = list(target["model"].parameters())
    storages = [p.untyped_storage().data_ptr() for p in params]
    moments = {id(v) for s in target["optimizer"].state.values() for v in s.values()}
    before = snapshot(target)
    with pytest.raises(type(error)):
        Checkpointer(tmp_path).load(target)
    assert snapshot(target) == before
    assert [p.untyped_storage().data_ptr() for p in params] == storages  # swapped back
    assert {id(v) for s in target["optimizer"].state.values() for v in s.values()} == moments
    target["last"] = Exploding(error)
    target["last"].value = 2
    Checkpointer(tmp_path).load(target)  # and a load after it works
    del state["last"], target["last"]
    assert digest(target) == digest(state)


class Odd(nn.Module):
    """Parameters that cannot be swapped: a view into a bigger storage, a transposed one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.flat = torch.randn(30)
        self.view = nn.Parameter(self.flat[10:20])
        self.transposed = nn.Parameter(torch.randn(3, 4).t())
        self.plain = nn.Parameter(torch.randn(5))


def test_tensors_that_cannot_be_swapped_are_copied_in_and_put_back(tmp_path):
    saved = Odd()
    with torch.no_grad():
        for p in saved.parameters():
            p.mul_(2)
    Checkpointer(tmp_path).save(1, {"model": saved, "last": Exploding(RuntimeError("x"))})
    target = Odd()
    view_ptr = target.view.data_ptr()
    transposed_ptr = target.transposed.data_ptr()
    original = {k: v.clone() for k, v in target.state_dict().items()}
    failing = Exploding(RuntimeError("after the copies"))
    failing.value = 2
    with pytest.raises(RuntimeError, match="after the copies"):
        Checkpointer(tmp_path).load({"model": target, "last": failing})
    assert all(torch.equal(v, original[k]) for k, v in target.state_dict().items())
    Checkpointer(tmp_path).load({"model": target, "last": Exploding(RuntimeError("x"))})
    for key, value in saved.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    # copied into their own memory (the view still views its storage), not swapped
    assert target.view.data_ptr() == view_ptr and target.transposed.data_ptr() == transposed_ptr
    assert torch.equal(target.flat[10:20], saved.view)


def test_only_plain_tensors_owning_their_memory_are_swapped(tmp_path):
    target = Odd()
    current = {"model": {k: v for k, v in target.state_dict().items()}}
    components = {"model": staging.Component("model", "model", target, None)}
    staged = staging.Staged(components, current)
    assert [live for live, _, _ in staged.swaps] == [target.plain]


def test_a_read_failing_midway_changes_nothing(tmp_path, monkeypatch):
    """The read fails after some tensors were staged: nothing live was touched yet, and the
    files are sound, so the load is refused as a failed read (not a damaged checkpoint)."""
    state, _ = trained(4)
    Checkpointer(tmp_path).save(4, state)
    target, _ = trained(2)
    before = snapshot(target)
    calls = [0]
    preadv_all = staged_read._preadv_all

    def failing(*args) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(5, "Input/output error")
        preadv_all(*args)

    monkeypatch.setattr(staged_read, "_preadv_all", failing)
    monkeypatch.setattr(staged_read, "CHUNK", 256)  # several reads per file
    with pytest.raises(
        CheckpointError, match=r"(?s)reading the checkpoint failed.*Input/output.*checksum is"
    ):
        Checkpointer(tmp_path).load(target)
    assert calls[0] == 3 and snapshot(target) == before
    monkeypatch.setattr(staged_read, "_preadv_all", preadv_all)
    Checkpointer(tmp_path).load(target)
    assert digest(target) == digest(state)


def test_no_memory_to_stage_refuses_before_anything_changes(tmp_path, monkeypatch):
    state, _ = trained(4)
    Checkpointer(tmp_path).save(4, state)
    target, _ = trained(2)
    before = snapshot(target)

    def failing(tensor: torch.Tensor) -> torch.Tensor:
        raise MemoryError("no room for the staged state")

    monkeypatch.setattr(staging, "_fresh", failing)
    with pytest.raises(CheckpointError, match=r"staging .* failed .*MemoryError.*rollback=False"):
        Checkpointer(tmp_path).load(target)
    assert snapshot(target) == before
    monkeypatch.undo()
    decision = Checkpointer(tmp_path).load(target, rollback=False)  # reads in place instead
    assert digest(target) == digest(state) and decision["rollback"] is False


def test_a_fresh_optimizer_is_emptied_again_when_a_later_step_fails(tmp_path):
    state, _ = trained(4)
    state["last"] = Exploding(RuntimeError("late"))
    state["last"].value = 2
    Checkpointer(tmp_path).save(4, state)
    target = build(4, 0)
    target["last"] = Exploding(RuntimeError("late"))
    with pytest.raises(RuntimeError, match="late"):
        Checkpointer(tmp_path).load(target)
    assert target["optimizer"].state == {}


def test_the_template_of_a_whole_tensor_finds_the_same_bytes_as_torchs_parse():
    for tensor in (
        torch.randn(3, 4),
        torch.tensor(2.5),
        torch.arange(300, dtype=torch.int64),
        torch.randn(2, 3, 4, 5).to(torch.bfloat16),
        torch.zeros(0, 3),
    ):
        buffer = io.BytesIO()
        torch.save(tensor, buffer)
        buffer.seek(0)
        meta = torch.load(io.BytesIO(buffer.getvalue()), map_location="meta", weights_only=True)
        expected = meta.untyped_storage()._checkpoint_offset
        assert direct_read._record_offset(buffer, tensor) == expected, tensor.shape
    for view in (torch.randn(10, 10)[2:5], torch.randn(4, 3).t()):  # the full parse's
        buffer = io.BytesIO()
        torch.save(view, buffer)
        buffer.seek(0)
        assert direct_read._record_offset(buffer, view.contiguous()) is None


def test_trust_stages_without_hashing(tmp_path, monkeypatch):
    state, _ = trained(4)
    Checkpointer(tmp_path).save(4, state)
    updates = []
    new_hasher = integrity.new_hasher
    monkeypatch.setattr(integrity, "new_hasher", lambda: updates.append(1) or new_hasher())
    target = build(4, 0)
    decision = Checkpointer(tmp_path).load(target, checksums="trust")
    assert digest(target) == digest(state) and updates == []
    assert decision["checksums"]["mode"].startswith("trusted")


def test_dcp_keeps_working_on_a_staged_dict_with_non_tensor_values(tmp_path):
    """Non-tensor values are read into the staged containers, never the live ones."""
    values = {"t": torch.arange(4.0), "meta": {"name": "x", "n": 3}}
    with collective.single_process_quiet():
        dcp.save(values, checkpoint_id=tmp_path, no_dist=True)
    live = {"t": torch.zeros(4), "meta": {"name": "", "n": 0}}
    components = {"s": staging.Component("s", "stateful", object(), None)}
    staged = staging.Staged(components, {"s": live})
    load(tmp_path, staged.state["s"], staged_read.StagingReader(tmp_path, None))
    assert staged.state["s"]["meta"] == {"name": "x", "n": 3}
    assert torch.equal(staged.state["s"]["t"], values["t"])
    assert live["meta"] == {"name": "", "n": 0} and torch.equal(live["t"], torch.zeros(4))


def test_memory_shared_with_other_processes_is_copied_into_not_swapped(tmp_path):
    saved = nn.Linear(4, 3)
    Checkpointer(tmp_path).save(1, {"model": saved})
    target = nn.Linear(4, 3).share_memory()
    pointers = [p.data_ptr() for p in target.parameters()]
    Checkpointer(tmp_path).load({"model": target})
    pairs = zip(target.parameters(), saved.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert [p.data_ptr() for p in target.parameters()] == pointers
    assert all(p.is_shared() for p in target.parameters())


class Tied(nn.Module):
    """An embedding and an output layer sharing one Parameter (two keys, one storage)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def test_tied_weights_stay_tied_and_load(tmp_path):
    torch.manual_seed(0)
    saved = Tied()
    optimizer = torch.optim.AdamW(saved.parameters())
    saved.head(saved.emb(torch.tensor([1, 2]))).sum().backward()
    optimizer.step()
    Checkpointer(tmp_path).save(1, {"model": saved, "optimizer": optimizer})
    torch.manual_seed(1)
    target = Tied()
    target_optimizer = torch.optim.AdamW(target.parameters())
    Checkpointer(tmp_path).load({"model": target, "optimizer": target_optimizer})
    assert target.head.weight is target.emb.weight
    assert torch.equal(target.emb.weight, saved.emb.weight)
    assert target_optimizer.param_groups[0]["params"][0] is target.emb.weight
    moments = target_optimizer.state[target.emb.weight]
    assert all(torch.equal(v, moments[k]) for k, v in optimizer.state[saved.emb.weight].items())


class SharedStorage(nn.Module):
    """Two Parameters over one storage: tied the old way (``.data``), and one a view of it."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 4)
        self.dec = nn.Linear(6, 4)
        self.dec.weight.data = self.enc.weight.data
        self.flat = nn.Parameter(self.enc.weight.detach().view(24))


def test_parameters_sharing_a_storage_stay_tied_and_are_put_back(tmp_path):
    torch.manual_seed(0)
    saved = SharedStorage()
    Checkpointer(tmp_path).save(1, {"model": saved, "last": Exploding(RuntimeError("boom"))})
    torch.manual_seed(1)
    target = SharedStorage()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    exploding = Exploding(RuntimeError("boom"))
    exploding.value = 2  # refuses the checkpoint's value, after the model was applied
    with pytest.raises(RuntimeError, match="boom"):
        Checkpointer(tmp_path).load({"model": target, "last": exploding})
    after = target.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # put back, all of them
    Checkpointer(tmp_path).load({"model": target, "last": Exploding(RuntimeError("boom"))})
    assert torch.equal(target.enc.weight, saved.enc.weight)
    pointers = {p.untyped_storage().data_ptr() for p in (target.enc.weight, target.dec.weight)}
    assert pointers == {target.flat.untyped_storage().data_ptr()}  # still one storage
    with torch.no_grad():
        target.enc.weight.add_(1)
    assert torch.equal(target.dec.weight, target.enc.weight)
    assert torch.equal(target.flat.view(4, 6), target.enc.weight)
