"""Content checksums, all-or-nothing loads, fallback, verified checkpoints kept, the probe.

Every damage is made to a copy of one saved checkpoint; the state it is loaded into is
snapshotted first and must be bit for bit the same after the refusal (weights, EMA, optimizer,
scheduler, scaler, loader cursor, the three CPU generators).
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from checkpoint_damage import flip, reseal, truncate
from checkpoint_job import SCHEDULE, batches, build, digest, train_step
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_checkpoint import trained
from test_checkpoint_refusals import snapshot
from torch.distributed.checkpoint import FileSystemReader

from resumable_loader.checkpoint import Checkpointer
from resumable_loader.checkpoint import manifest as manifest_mod
from resumable_loader.checkpoint.cli import verify as cli_verify
from resumable_loader.errors import CheckpointError

SAVED = "step-0000000004"
FILES = ["__0_0.distcp", ".metadata", "rng-rank-00000.json", "manifest.json"]


def loss_fn(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return F.mse_loss(model(batch["x"]), batch["y"])


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A checkpoint of step 4 with a probe (copied per test, since tests damage it)."""
    root = tmp_path_factory.mktemp("saved")
    state, _ = trained(4)
    Checkpointer(root).save(4, state, probe=loss_fn)
    return root


def copy_of(saved: Path, root: Path) -> Path:
    shutil.copytree(saved / SAVED, root / SAVED)
    return root / SAVED


def assert_refused_unchanged(root: Path, message: str, **load_args) -> CheckpointError:
    state = build(4, 0)
    before = snapshot(state)
    with pytest.raises(CheckpointError, match=message) as refused:
        Checkpointer(root).load(state, **load_args)
    assert snapshot(state) == before
    assert not state["optimizer"].state
    return refused.value


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(FILES), where=st.floats(0, 1, exclude_max=True))
def test_a_flipped_byte_anywhere_is_refused_naming_the_file(saved, tmp_path_factory, name, where):
    root = tmp_path_factory.mktemp("flip")
    folder = copy_of(saved, root)
    path = folder / name
    flip(path, int(where * path.stat().st_size))
    assert_refused_unchanged(root, rf"{name}: ")


@pytest.mark.parametrize("name", FILES)
def test_a_truncated_file_is_refused(saved, tmp_path, name):
    folder = copy_of(saved, tmp_path)
    truncate(folder / name)
    assert_refused_unchanged(tmp_path, rf"{name}")


def test_a_flipped_byte_inside_an_adam_moment_is_named_by_its_checksum(saved, tmp_path):
    """The issue's case: a byte of a tensor DCP would read without a word."""
    folder = copy_of(saved, tmp_path)
    flip(folder / "__0_0.distcp", -200)  # the data file ends with the last tensors' bytes
    assert_refused_unchanged(
        tmp_path, r"__0_0.distcp: content checksum xxh3_64 [0-9a-f]+, the manifest says [0-9a-f]+"
    )


@pytest.mark.parametrize("edit", [5, 2], ids=["4->5", "4->2"])
@pytest.mark.parametrize("resealed", [False, True])
def test_an_edited_manifest_step_is_refused(saved, tmp_path, edit, resealed):
    folder = copy_of(saved, tmp_path)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["step"] = edit
    if resealed:  # the manifest's own checksum is right: the folder's step still disagrees
        reseal(path, manifest)
        message = rf"field 'step' is {edit}, but the folder is step 4"
    else:
        path.write_text(json.dumps(manifest))
        message = r"manifest.json: content checksum .* the manifest was edited or damaged"
    assert_refused_unchanged(tmp_path, message)


def test_an_rng_file_from_another_checkpoint_is_refused(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    other = tmp_path / "other"
    state, _ = trained(2)
    Checkpointer(other).save(2, state)
    shutil.copy(other / "step-0000000002" / "rng-rank-00000.json", folder)
    assert_refused_unchanged(tmp_path, r"rng-rank-00000.json: content checksum")


def test_an_rng_file_missing_from_the_manifest_for_its_world_size_is_refused(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["world_size"] = 2  # resealed, yet only one rank's RNG file
    reseal(path, manifest)
    assert_refused_unchanged(
        tmp_path, r"field 'rng.files' lists \['rng-rank-00000.json'\], but 'world_size' 2 needs"
    )


@pytest.mark.parametrize("resealed", [False, True])
def test_a_manifest_edited_to_version_1_is_refused_as_damaged(tmp_path, capsys, resealed):
    """'version' 2 -> 1 (one byte) must not switch the manifest's own checksum off and let any
    other field be edited: fields only version 2 writes make it damaged, and a load falls
    back to the checkpoint before it."""
    _, digests = checkpoints(tmp_path, [2, 4])
    path = tmp_path / "step-0000000004" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(version=1, samples_seen=90)
    if resealed:
        reseal(path, manifest)
    else:
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    message = (
        r"step-0000000004/manifest.json: field 'version' is 1, but the manifest has fields "
        r"\['checksum', 'files', 'optimizers', 'probe'\], which version 1 does not have: the "
        "manifest was edited or damaged after the save"
    )
    assert_refused_unchanged(tmp_path, message, step=4)
    fresh = build(4, 0)
    decision = Checkpointer(tmp_path).load(fresh)
    assert decision["step"] == 2 and digest(fresh) == digests[2]
    assert [re.search(message, p) is not None for p in decision["skipped"][0]["problems"]] == [True]
    assert cli_verify(str(tmp_path)) == 1
    assert re.search(rf"FAIL .*{message}", capsys.readouterr().out)


def test_a_version_1_manifest_of_an_earlier_release_still_loads(saved, tmp_path):
    """Version 1 (before the checksums) has the fields of FIELDS only: loaded, without them."""
    folder = copy_of(saved, tmp_path)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    earlier = {key: manifest[key] for key in manifest_mod.FIELDS} | {"version": 1}
    path.write_text(json.dumps(earlier, indent=2, sort_keys=True))
    state = build(4, 0)
    decision = Checkpointer(tmp_path).load(state)
    assert decision["checksums"] == {"mode": "none recorded (a version-1 manifest)"}
    assert digest(state) == digest(trained(4)[0])


@pytest.mark.parametrize(
    ("source", "stray"),
    [("__0_0.distcp", "__1_0.distcp"), ("rng-rank-00000.json", "rng-rank-00001.json")],
)
def test_a_data_or_rng_file_the_manifest_does_not_list_is_refused(
    saved, tmp_path, capsys, source, stray
):
    """The manifest lists every file the save wrote (one rank's here): another rank's data or
    RNG file in the folder came later. A file of another kind (a note of the user's) is fine."""
    folder = copy_of(saved, tmp_path)
    (folder / "notes.txt").write_text("mine\n")
    shutil.copy(folder / source, folder / stray)
    message = rf"{SAVED}/{re.escape(stray)}: an? (data|RNG) file the manifest does not list"
    assert_refused_unchanged(tmp_path, message)
    assert cli_verify(str(tmp_path)) == 1
    assert re.search(rf"FAIL .*{message}", capsys.readouterr().out)
    (folder / stray).unlink()
    assert Checkpointer(tmp_path).load(build(4, 0))["step"] == 4


def test_verify_reports_every_problem_not_the_first(saved, tmp_path, capsys):
    folder = copy_of(saved, tmp_path)
    flip(folder / "__0_0.distcp", 100)
    flip(folder / "rng-rank-00000.json", 10)
    assert cli_verify(str(tmp_path)) == 1
    failures = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert any("__0_0.distcp: content checksum" in line for line in failures)
    assert any("rng-rank-00000.json: content checksum" in line for line in failures)


def test_trust_skips_the_checksums_and_says_so(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    decision = Checkpointer(tmp_path).load(build(4, 0), checksums="trust")
    assert decision["checksums"] == {"mode": "trusted (not checked: checksums='trust')"}
    verified = Checkpointer(tmp_path).load(build(4, 0))["checksums"]
    assert verified["mode"] == "verified" and verified["files"] == 3
    assert verified["bytes"] == sum((folder / n).stat().st_size for n in FILES[:3])


def test_another_optimizer_class_is_refused_in_strict_and_listed_in_flexible(saved, tmp_path):
    copy_of(saved, tmp_path)

    def with_adam() -> dict:
        state = build(4, 0)
        state["optimizer"] = torch.optim.Adam(state["model"].parameters(), lr=0.05)
        schedules = torch.optim.lr_scheduler
        state["scheduler"] = schedules.SequentialLR(
            state["optimizer"],
            [
                schedules.LinearLR(state["optimizer"], start_factor=0.1, total_iters=4),
                schedules.CosineAnnealingLR(state["optimizer"], T_max=SCHEDULE - 4),
            ],
            milestones=[4],
        )
        return state

    state = with_adam()
    before = snapshot(state)
    with pytest.raises(
        CheckpointError,
        match=r"component 'optimizer' \(optimizer\), field 'type': saved "
        r"'torch.optim.adamw.AdamW', now 'torch.optim.adam.Adam'",
    ):
        Checkpointer(tmp_path).load(state)
    assert snapshot(state) == before and not state["optimizer"].state
    decision = Checkpointer(tmp_path).load(with_adam(), mode="flexible")
    assert decision["changed"]["optimizer.type"] == {
        "old": "torch.optim.adamw.AdamW",
        "new": "torch.optim.adam.Adam",
    }
    assert decision["changed"]["optimizer.weight_decay"] == {"old": 0.01, "new": 0}


def test_changed_hyperparameters_are_refused_in_strict(saved, tmp_path):
    copy_of(saved, tmp_path)
    state = build(4, 0)
    state["optimizer"].defaults["betas"] = (0.8, 0.999)
    before = snapshot(state)
    with pytest.raises(CheckpointError, match=r"field 'betas': saved \[0.9, 0.999\], now \[0.8"):
        Checkpointer(tmp_path).load(state)
    assert snapshot(state) == before


class Exploding:
    """A component whose load_state_dict, while ``explode`` counts, changes itself and then
    raises a BaseException (once per count: the put-back that follows works)."""

    def __init__(self) -> None:
        self.value = torch.zeros(3)

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        if explode[0]:
            explode[0] -= 1
            self.value.fill_(-1.0)  # half-applied
            raise KeyboardInterrupt("midway")
        self.value.copy_(state["value"])


explode = [0]


@pytest.mark.parametrize("trained_target", [False, True], ids=["fresh", "trained"])
def test_a_load_state_dict_raising_midway_puts_back_what_was_applied(tmp_path, trained_target):
    """model, optimizer, scheduler, scaler and ema are set before the exploding component
    (dict order), the loader's cursor first of all: every one is put back."""
    state, _ = trained(4)
    state["late"] = Exploding()
    state["late"].value.fill_(7.0)
    Checkpointer(tmp_path).save(4, state)
    target = build(4, 0) | {"late": Exploding()}
    if trained_target:
        train_step(target, target["model"], next(batches(target["loader"])))
    before = snapshot(target)
    explode[0] = 1
    try:
        with pytest.raises(KeyboardInterrupt, match="midway"):
            Checkpointer(tmp_path).load(target)
    finally:
        explode[0] = 0
    assert snapshot(target) == before
    assert bool(target["optimizer"].state) == trained_target
    decision = Checkpointer(tmp_path).load(target)  # and the same load then goes through
    assert decision["components"]["late"] == "restored"
    assert digest(target) == digest(state) and target["late"].value.tolist() == [7.0] * 3


def test_without_rollback_a_failure_midway_is_logged_as_a_partly_loaded_state(tmp_path, caplog):
    """The documented window of rollback=False: no copy is kept, so the components read before
    the failure stay loaded; the loader's cursor and the generators are still put back."""
    state, _ = trained(4)
    state["late"] = Exploding()
    Checkpointer(tmp_path).save(4, state)
    target = build(4, 0) | {"late": Exploding()}
    cursor, generators = target["loader"].state_dict(), snapshot({})["rng"]
    explode[0] = 1
    try:
        with pytest.raises(KeyboardInterrupt, match="midway"):
            Checkpointer(tmp_path).load(target, rollback=False)
    finally:
        explode[0] = 0
    weights = snapshot({"model": target["model"]})["model"]
    assert weights == snapshot({"model": state["model"]})["model"]  # read first: loaded
    assert target["loader"].state_dict() == cursor and snapshot({})["rng"] == generators
    assert "rollback=False) failed after the read began" in caplog.text
    assert Checkpointer(tmp_path).load(target, rollback=False)["rollback"] is False


def checkpoints(root: Path, steps: list[int], **kwargs) -> tuple[dict, dict[int, str]]:
    """Saves at ``steps`` of one run; the state and each step's digest."""
    state, stream = trained(0)
    checkpointer, digests, done = Checkpointer(root, **kwargs), {}, 0
    for step in steps:
        for _ in range(step - done):
            train_step(state, state["model"], next(stream))
        done = step
        checkpointer.save(step, state)
        digests[step] = digest(state)
    return state, digests


def test_fallback_takes_the_newest_sound_checkpoint_and_names_what_it_skipped(tmp_path, caplog):
    _, digests = checkpoints(tmp_path, [2, 4, 6])
    flip(tmp_path / "step-0000000006" / "__0_0.distcp", 300)
    (tmp_path / "step-0000000004" / ".metadata").unlink()
    fresh = build(4, 0)
    decision = Checkpointer(tmp_path).load(fresh)
    assert decision["step"] == 2 and digest(fresh) == digests[2]
    skipped = {Path(e["checkpoint"]).name: e["problems"] for e in decision["skipped"]}
    assert list(skipped) == ["step-0000000006", "step-0000000004"]
    assert "__0_0.distcp: content checksum" in skipped["step-0000000006"][0]
    assert any(".metadata: unreadable" in p for p in skipped["step-0000000004"])
    with pytest.raises(CheckpointError, match=r"1 tried \(load\(\.\.\., fallback=True\) tries"):
        Checkpointer(tmp_path).load(build(4, 0), fallback=False)
    with pytest.raises(CheckpointError, match=r"no sound checkpoint among the 1 tried"):
        Checkpointer(tmp_path).load(build(4, 0), step=6)  # an explicit step: no fallback


def test_fallback_names_a_step_folder_that_lost_its_manifest(tmp_path):
    # a commit renames a whole folder into place, so a step-N without its manifest was
    # damaged since: it was passed over without a word (skipped=[])
    _, digests = checkpoints(tmp_path, [2, 4])
    (tmp_path / "step-0000000004" / "manifest.json").unlink()
    fresh = build(4, 0)
    decision = Checkpointer(tmp_path).load(fresh)
    assert decision["step"] == 2 and digest(fresh) == digests[2]
    ((name, problems),) = [(Path(e["checkpoint"]).name, e["problems"]) for e in decision["skipped"]]
    assert name == "step-0000000004" and "manifest.json: missing" in problems[0]


def test_fallback_does_not_skip_a_checkpoint_that_does_not_fit_the_state(tmp_path):
    checkpoints(tmp_path, [2, 4])
    with pytest.raises(CheckpointError, match=r"field 'batch_size': saved 4, now 3"):
        Checkpointer(tmp_path).load(build(3, 0))


def test_keep_last_never_deletes_the_last_verified_checkpoint(tmp_path):
    checkpoints(tmp_path, [2], keep_last=2)
    Checkpointer(tmp_path).load(build(4, 0))  # verified: kept from now on
    state, _ = checkpoints(tmp_path / "unused", [1])
    checkpointer = Checkpointer(tmp_path, keep_last=2)
    for step in (4, 6, 8):
        checkpointer.save(step, state)
    assert checkpointer.steps() == [2, 6, 8]
    assert checkpointer.verify() == []  # step 8 verified now: step 2 may go
    checkpointer.save(10, state)
    assert checkpointer.steps() == [8, 10]


def test_a_fallback_records_what_it_took_as_the_verified_checkpoint_and_keeps_it(tmp_path):
    """The verified one damaged since: the fallback's checkpoint is recorded instead, and kept
    by the saves of the run that trains on from it (also past a re-save of the damaged step),
    so a fallback still finds it when the newer ones are damaged too."""
    state, digests = checkpoints(tmp_path, [1, 2, 3, 4], keep_last=2)
    Checkpointer(tmp_path).load(build(4, 0))  # step 4 verified
    flip(tmp_path / "step-0000000004" / "__0_0.distcp", 300)
    checkpointer = Checkpointer(tmp_path, keep_last=2)
    assert checkpointer.load(build(4, 0))["step"] == 3
    assert (tmp_path / "verified").read_text() == "step-0000000003\n"
    for step in (4, 5, 6):  # trains on from step 3: re-saves step 4
        checkpointer.save(step, state)
    assert checkpointer.steps() == [3, 5, 6]
    for step in (5, 6):
        flip(tmp_path / f"step-{step:010d}" / "__0_0.distcp", 300)
    fresh = build(4, 0)
    assert Checkpointer(tmp_path).load(fresh)["step"] == 3 and digest(fresh) == digests[3]


def test_a_verified_checkpoint_that_fails_verify_or_is_saved_again_is_no_longer_recorded(
    tmp_path,
):
    state, _ = checkpoints(tmp_path, [1, 2])
    checkpointer = Checkpointer(tmp_path)
    assert checkpointer.verify(2) == [] and (tmp_path / "verified").exists()
    flip(tmp_path / "step-0000000002" / "__0_0.distcp", 300)
    assert checkpointer.verify(2) and not (tmp_path / "verified").exists()
    assert checkpointer.verify(1) == [] and (tmp_path / "verified").exists()
    checkpointer.save(1, state)  # a re-save: its content was never verified
    assert not (tmp_path / "verified").exists()


def test_loading_the_verified_checkpoint_again_leaves_its_pointer_alone(tmp_path):
    """Step 0 too: the pointer was rewritten (a rename) by every load of step 0."""
    checkpoints(tmp_path, [0])
    Checkpointer(tmp_path).load(build(4, 0))
    pointer = tmp_path / "verified"
    assert pointer.read_text() == "step-0000000000\n"
    written = pointer.stat().st_ino
    Checkpointer(tmp_path).load(build(4, 0))
    assert pointer.stat().st_ino == written


def test_the_probe_passes_after_a_correct_resume_and_changes_nothing(saved, tmp_path):
    copy_of(saved, tmp_path)
    state = build(4, 0)
    checkpointer = Checkpointer(tmp_path)
    checkpointer.load(state)
    random.seed(3)
    before = snapshot(state)
    grads = [p.grad for p in state["model"].parameters()]
    report = checkpointer.probe(state["model"], loss_fn)
    assert report["exact"] and report["ok"] and report["ids"] == saved_probe(saved)["ids"]
    assert snapshot(state) == before
    assert [p.grad for p in state["model"].parameters()] == grads
    assert state["loader"].state_dict()["position"] == 16


def test_the_probe_of_a_model_no_optimizer_of_the_state_trains_says_so(saved, tmp_path):
    """A DDP model's .module (here: a copy) is not the model the state's optimizer trains, so
    the recorded optimizer step cannot be taken again: a bare KeyError before."""
    import copy

    copy_of(saved, tmp_path)
    state = build(4, 0)
    checkpointer = Checkpointer(tmp_path)
    checkpointer.load(state)
    with pytest.raises(CheckpointError, match=r"no optimizer of the state trains the model"):
        checkpointer.probe(copy.deepcopy(state["model"]), loss_fn)


def test_a_damaged_checkpoint_asked_for_by_step_is_refused_without_fallback_advice(saved, tmp_path):
    """With step= only that checkpoint is tried: the message said fallback=True would try
    earlier ones, which it does not."""
    copy_of(saved, tmp_path)
    flip(tmp_path / SAVED / "__0_0.distcp", 300)
    step = int(SAVED.split("-")[1])
    for fallback in (False, True):
        with pytest.raises(CheckpointError, match="no sound checkpoint") as refused:
            Checkpointer(tmp_path).load(build(4, 0), step=step, fallback=fallback)
        assert "fallback=True" not in str(refused.value)


def saved_probe(saved: Path) -> dict:
    return json.loads((saved / SAVED / "manifest.json").read_text())["probe"]


def test_the_probe_fails_after_a_damaged_moment_the_checksums_were_told_to_trust(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    offset = moment_byte(folder, "optimizer.state.0.weight.exp_avg_sq")
    flip(folder / "__0_0.distcp", offset)
    state = build(4, 0)
    checkpointer = Checkpointer(tmp_path)
    assert checkpointer.load(state, checksums="trust")["step"] == 4  # loaded silently
    with pytest.raises(
        CheckpointError, match=r"resume probe \(samples \[.*\]\): loss saved .* after one optim"
    ):
        checkpointer.probe(state["model"], loss_fn)


def moment_byte(folder: Path, key: str) -> int:
    """The file offset of the high byte of the first float of tensor ``key``'s data (inside
    the torch.save archive DCP writes per item)."""
    metadata = FileSystemReader(folder).read_metadata()
    info = next(i for index, i in metadata.storage_data.items() if index.fqn == key)
    item = (folder / info.relative_path).read_bytes()[info.offset : info.offset + info.length]
    tensor = torch.load(io.BytesIO(item), weights_only=True)
    return info.offset + item.index(tensor.numpy().tobytes()) + 3


def test_the_probe_says_when_there_is_nothing_to_compare(tmp_path):
    state, _ = trained(2)
    checkpointer = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match=r"probe: nothing was loaded yet; call load\(\)"):
        checkpointer.probe(state["model"], loss_fn)
    checkpointer.save(2, state)  # without probe=
    checkpointer.load(build(4, 0))
    with pytest.raises(CheckpointError, match=r"recorded no probe; pass save\(\.\.\., probe="):
        checkpointer.probe(state["model"], loss_fn)
