"""Checkpointer in one process: round trip, modes, the decision, layout, async saves."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_damage import reseal
from checkpoint_job import batches, build, digest, train_step

from resumable_loader import DataLoader
from resumable_loader.checkpoint import Checkpointer, rng_state
from resumable_loader.checkpoint.integrity import of_bytes
from resumable_loader.checkpoint.layout import CheckpointDirectory
from resumable_loader.cli import main
from resumable_loader.errors import CheckpointError, ConfigError


def trained(steps: int) -> tuple[dict, object]:
    """A training state after ``steps`` steps, and its live batch iterator."""
    state = build(4, 0)
    stream = batches(state["loader"])
    for _ in range(steps):
        train_step(state, state["model"], next(stream))
    return state, stream


def draws() -> tuple[float, float, float]:
    """One draw from each generator a training loop reads."""
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_load_restores_every_component_and_rng(tmp_path, caplog):
    state, stream = trained(5)
    Checkpointer(tmp_path).save(5, state)
    expected_rng = draws()
    expected_next = train_step(state, state["model"], next(stream))
    expected = digest(state)

    fresh = build(4, 0)
    random.seed(99)  # the load must replace these states
    with caplog.at_level(logging.INFO, logger="resumable_loader.checkpoint"):
        decision = Checkpointer(tmp_path).load(fresh)
    assert draws() == expected_rng
    fresh_stream = batches(fresh["loader"])
    assert train_step(fresh, fresh["model"], next(fresh_stream)) == expected_next
    assert digest(fresh) == expected

    assert decision["step"] == 5 and decision["mode"] == "strict"
    assert decision["components"] == {
        **{name: "restored" for name in state},
        "rng": "restored",
    }
    assert decision["rederived"] == [] and decision["changed"] == {}
    assert decision["data"]["loader"]["position"] == 20
    record = json.loads((tmp_path / "resume-0000000005.json").read_text())
    assert record == decision
    records = [r for r in caplog.records if r.name == "resumable_loader.checkpoint"]
    assert [r.getMessage() for r in records] == [
        f"resumed step 5 from {tmp_path / 'step-0000000005'} (mode strict): restored model, "
        "optimizer, scheduler, scaler, ema, loader, rng; re-derived nothing; changed nothing; "
        "checksums verified"
    ]


def test_manifest_describes_the_run(tmp_path):
    state, _ = trained(3)
    Checkpointer(tmp_path).save(3, state, tokens_seen=1234, metadata={"run": "abc", "lr": 0.05})
    manifest = json.loads((tmp_path / "step-0000000003" / "manifest.json").read_text())
    assert manifest["step"] == 3 and manifest["samples_seen"] == 12
    assert manifest["tokens_seen"] == 1234
    assert manifest["metadata"] == {"run": "abc", "lr": 0.05}
    assert manifest["world_size"] == manifest["data_parallel_size"] == 1
    assert manifest["versions"]["torch"] == torch.__version__
    assert {n: e["kind"] for n, e in manifest["components"].items()} == {
        "model": "model",
        "optimizer": "optimizer",
        "scheduler": "stateful",
        "scaler": "stateful",
        "ema": "model",
        "loader": "loader",
    }
    loader = manifest["loaders"]["loader"]
    assert (loader["batch_size"], loader["num_workers"], loader["seed"]) == (4, 0, 7)
    assert loader["state"] == state["loader"].state_dict()
    assert manifest["rng"] == {"files": ["rng-rank-00000.json"], "cuda_devices": 0}


def test_metadata_must_be_json(tmp_path):
    state, _ = trained(1)
    with pytest.raises(CheckpointError, match=r"metadata .* not plain JSON"):
        Checkpointer(tmp_path).save(1, state, metadata={"when": object()})


def test_flexible_batch_size_is_recorded_and_strict_refuses_it(tmp_path):
    state, _ = trained(4)
    Checkpointer(tmp_path).save(4, state)
    other = build(6, 0)
    with pytest.raises(CheckpointError, match=r"field 'batch_size': saved 4, now 6.*flexible"):
        Checkpointer(tmp_path).load(other)
    decision = Checkpointer(tmp_path).load(other, mode="flexible")
    assert decision["changed"] == {"loader.batch_size": {"old": 4, "new": 6}}
    assert decision["components"]["rng"] == "restored"  # same rank layout
    assert other["loader"].state_dict() == state["loader"].state_dict()


def test_keep_last_and_latest(tmp_path):
    state, stream = trained(0)
    checkpointer = Checkpointer(tmp_path, keep_last=2)
    for step in range(1, 5):
        train_step(state, state["model"], next(stream))
        checkpointer.save(step, state)
    layout = CheckpointDirectory(tmp_path)
    assert layout.complete_steps() == checkpointer.steps() == [3, 4]
    assert layout.read_latest() == "step-0000000004"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert Checkpointer(tmp_path).load(build(4, 0), step=3)["step"] == 3
    assert (tmp_path / "resume-0000000003.json").is_file()
    (tmp_path / ".resume-0000000004.json.tmp-99999").write_text("{")  # a kill mid-publish
    for step in (5, 6):
        train_step(state, state["model"], next(stream))
        checkpointer.save(step, state)

    def records() -> list[str]:
        return sorted(p.name for p in tmp_path.iterdir() if "resume" in p.name)

    # step 3 is kept as the verified one, with its record; the cut one went with the prune
    assert checkpointer.steps() == [3, 5, 6] and records() == ["resume-0000000003.json"]
    assert checkpointer.verify() == []  # step 6 verified: step 3 may go, and its record
    checkpointer.save(7, state)
    assert checkpointer.steps() == [6, 7] and records() == []


def test_newest_complete_checkpoint_wins_over_debris_and_the_next_save_clears_it(tmp_path):
    state, _ = trained(2)
    Checkpointer(tmp_path).save(2, state)
    (tmp_path / ".tmp-step-0000000009").mkdir()  # a save killed before its rename
    (tmp_path / ".removing-step-0000000001").mkdir()  # a prune killed during its rmtree
    (tmp_path / "step-0000000008").mkdir()  # a folder without a manifest is not complete
    assert Checkpointer(tmp_path).load(build(4, 0))["step"] == 2
    Checkpointer(tmp_path).save(3, state)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_resave_of_a_step_replaces_it(tmp_path):
    state, stream = trained(2)
    Checkpointer(tmp_path).save(2, state)
    train_step(state, state["model"], next(stream))
    Checkpointer(tmp_path).save(2, state)
    fresh = build(4, 0)
    Checkpointer(tmp_path).load(fresh)
    assert digest(fresh) == digest(state)


def test_a_listing_between_the_renames_of_a_resave_does_not_break_it(tmp_path, monkeypatch):
    """A listing while a re-save commits (steps() in another thread during an async save, a
    CLI) puts back the earlier checkpoint the commit has just moved aside: the commit moves it
    aside again and goes on."""
    state, stream = trained(2)
    Checkpointer(tmp_path).save(2, state)
    train_step(state, state["model"], next(stream))
    real, listed = os.rename, []

    def rename(src: os.PathLike, dst: os.PathLike, *args, **kwargs) -> None:
        real(src, dst, *args, **kwargs)
        if Path(dst).name.startswith(".old-step-") and not listed:
            listed.append(CheckpointDirectory(tmp_path).complete_steps())

    monkeypatch.setattr(os, "rename", rename)
    Checkpointer(tmp_path).save(2, state)
    assert listed == [[2]]  # the earlier checkpoint was put back in between
    fresh = build(4, 0)
    Checkpointer(tmp_path).load(fresh)
    assert digest(fresh) == digest(state)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_async_save_snapshots_at_save_time_and_next_save_waits(tmp_path):
    state, stream = trained(3)
    checkpointer = Checkpointer(tmp_path, async_save=True)
    checkpointer.save(3, state)
    expected = digest(state)
    train_step(state, state["model"], next(stream))  # changes the weights during the write
    checkpointer.save(4, state)  # waits for step 3's commit first
    checkpointer.wait()
    assert CheckpointDirectory(tmp_path).complete_steps() == [3, 4]
    fresh = build(4, 0)
    Checkpointer(tmp_path).load(fresh, step=3)
    assert digest(fresh) == expected


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="keep_last"):
        Checkpointer(tmp_path, keep_last=0)
    with pytest.raises(ConfigError, match="mode must be one of"):
        Checkpointer(tmp_path).load(build(4, 0), mode="lenient")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        Checkpointer(tmp_path).load(build(4, 0))
    with pytest.raises(CheckpointError, match=r"absent: no such directory, so no checkpoint"):
        Checkpointer(tmp_path / "absent").load(build(4, 0))
    with pytest.raises(CheckpointError, match="has no state_dict"):
        Checkpointer(tmp_path).save(1, {"model": torch.nn.Linear(2, 2), "count": 3})
    with pytest.raises(CheckpointError, match="optimizer's parameters belong to no"):
        Checkpointer(tmp_path).save(
            1, {"optimizer": torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1)}
        )


def test_cli_inspect_and_verify(tmp_path, capsys):
    state, _ = trained(5)
    Checkpointer(tmp_path).save(5, state, metadata={"run": "abc"})
    assert main(["checkpoint", "inspect", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "step:       5 (samples seen 20, tokens -)" in shown
    assert "optimizer   optimizer torch.optim.adamw.AdamW  (25 entries," in shown
    assert "loader      loader    resumable_loader" in shown and "(manifest)" in shown
    assert "loader loader: epoch 0, position 20 of 36, seed 7, batch size 4, workers 0" in shown
    assert 'metadata:   {"run": "abc"}' in shown
    assert main(["checkpoint", "inspect", str(tmp_path / "step-0000000005"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 5

    assert main(["checkpoint", "verify", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("OK ")
    (tmp_path / "step-0000000005" / "rng-rank-00000.json").unlink()
    assert main(["checkpoint", "verify", str(tmp_path), "--step", "5"]) == 1
    assert "rank-00000.json: missing" in capsys.readouterr().out


def test_cli_verify_names_each_problem(tmp_path, capsys):
    state, _ = trained(2)
    Checkpointer(tmp_path).save(2, state)
    folder = tmp_path / "step-0000000002"
    data = folder / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[:-10])
    assert main(["checkpoint", "verify", str(tmp_path)]) == 1
    assert "__0_0.distcp: " in capsys.readouterr().out
    shutil.rmtree(folder)
    assert main(["checkpoint", "verify", str(tmp_path)]) == 1
    assert "no complete checkpoint" in capsys.readouterr().out


def test_cli_verify_of_a_run_names_a_newer_folder_that_lost_its_manifest(tmp_path, capsys):
    state, _ = trained(2)
    for step in (2, 4):
        Checkpointer(tmp_path).save(step, state)
    (tmp_path / "step-0000000004" / "manifest.json").unlink()
    assert main(["checkpoint", "verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "step-0000000004: no manifest.json" in out and "skips it for step 2" in out
    assert main(["checkpoint", "verify", str(tmp_path / "step-0000000002")]) == 0
    assert main(["checkpoint", "verify", str(tmp_path), "--step", "2"]) == 0


def test_rng_states_round_trip_exactly(tmp_path):
    random.gauss(0, 1), np.random.standard_normal()  # cached Gaussians are state too
    rng_state.write(tmp_path, rng_state.capture(rank=0, world_size=1, step=3))
    expected = draws(), random.gauss(0, 1), float(np.random.standard_normal())
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    rng_state.restore(rng_state.read(tmp_path, 0))
    assert (draws(), random.gauss(0, 1), float(np.random.standard_normal())) == expected


def test_rederived_rng_is_a_function_of_seed_step_and_rank():
    def rederived(seed: int, step: int, rank: int) -> tuple[float, float, float]:
        rng_state.rederive(seed=seed, step=step, rank=rank)
        return draws()

    first = rederived(7, 100, 1)
    draws()
    assert rederived(7, 100, 1) == first
    others = [rederived(7, 100, 0), rederived(7, 101, 1), rederived(8, 100, 1)]
    assert len({first, *others}) == 4


def test_another_world_size_rederives_rng_from_the_loader_seed(tmp_path):
    # the manifest of a 2-rank run, as far as this process can tell (the real 2 -> 1 run is
    # tests/test_checkpoint_torchrun.py); strict refuses it, flexible re-derives the RNG
    state, _ = trained(3)
    Checkpointer(tmp_path).save(3, state)
    folder = tmp_path / "step-0000000003"
    path = folder / "manifest.json"
    rank_1 = json.loads((folder / "rng-rank-00000.json").read_text()) | {"rank": 1}
    (folder / "rng-rank-00001.json").write_text(json.dumps(rank_1))
    manifest = json.loads(path.read_text())
    manifest["world_size"] = 2
    manifest["rng"]["files"].append("rng-rank-00001.json")
    manifest["files"]["rng-rank-00001.json"] = of_bytes(json.dumps(rank_1).encode())
    reseal(path, manifest)
    with pytest.raises(CheckpointError, match=r"field 'world_size': saved 2, now 1; mode='str"):
        Checkpointer(tmp_path).load(build(4, 0))
    decision = Checkpointer(tmp_path).load(build(4, 0), mode="flexible")
    assert decision["rederived"] == ["rng"]
    assert decision["changed"] == {"world_size": {"old": 2, "new": 1}}
    after_load = draws()
    rng_state.rederive(seed=7, step=3, rank=0)  # the loader's seed
    assert draws() == after_load
    without_loader = {k: v for k, v in build(4, 0).items() if k != "loader"}
    manifest["components"].pop("loader"), manifest["loaders"].pop("loader")
    reseal(path, manifest)
    with pytest.raises(CheckpointError, match=r"has 0 loader seeds .* Checkpointer\(\.\.\., seed="):
        Checkpointer(tmp_path).load(without_loader, mode="flexible")
    decision = Checkpointer(tmp_path, seed=11).load(without_loader, mode="flexible")
    assert decision["components"]["rng"] == "re-derived"


class Windows(torch.utils.data.Dataset):
    """Stands in for a TokenDataset: fixed windows of ``seq_len`` tokens."""

    seq_len, fingerprint = 8, "windows-v1"

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.full((self.seq_len,), index)


def test_tokens_seen_defaults_to_samples_times_seq_len(tmp_path):
    loader = DataLoader(Windows(), batch_size=2, seed=1)
    stream = iter(loader)
    next(stream), next(stream), next(stream)
    Checkpointer(tmp_path).save(3, {"loader": loader, "model": torch.nn.Linear(1, 1)})
    manifest = json.loads((tmp_path / "step-0000000003" / "manifest.json").read_text())
    assert (manifest["samples_seen"], manifest["tokens_seen"]) == (6, 48)


def test_a_failed_async_save_is_raised_by_the_next_call_and_never_committed(tmp_path, monkeypatch):
    from concurrent.futures import Future

    from resumable_loader.checkpoint import checkpointer as module

    def failing(*args, **kwargs):
        future = Future()
        future.set_exception(OSError("No space left on device"))
        return future

    state, _ = trained(1)
    checkpointer = Checkpointer(tmp_path, async_save=True)
    monkeypatch.setattr(module.dcp, "async_save", failing)
    checkpointer.save(1, state)
    with pytest.raises(CheckpointError, match=r"asynchronous save failed \(OSError: No space"):
        checkpointer.save(2, state)
    assert checkpointer.steps() == [] and not list(tmp_path.glob(".tmp-*"))


def test_a_save_that_cannot_write_is_a_checkpoint_error_and_leaves_no_partial_folder(tmp_path):
    """A full disk (here a file size limit): DCP raises its CheckpointException, which is not
    an Exception and whose text is a traceback per rank; the save removes what it wrote."""
    import resource

    state, _ = trained(1)
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(1, state)
    big = {**state, "big": torch.nn.Linear(1000, 1000)}  # 4 MB, past the limit below
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, hard))
    try:
        with pytest.raises(
            CheckpointError,
            match=r"save of step 2 into .* failed \(rank 0: OSError: \[Errno 27\] File too large",
        ):
            checkpointer.save(2, big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert checkpointer.steps() == [1] and not list(tmp_path.glob(".tmp-*"))
