"""Checkpointer: the whole training state in one versioned, validated, self-describing checkpoint.

Tensors, resharding and asynchronous writes are torch.distributed.checkpoint's (DCP) job; this
module adds what a resume needs besides: every rank's RNG states, the loader's cursor, the step
and what was seen, a manifest that describes it all with a content checksum of every file, a
load that checks everything before it applies anything (and applies all or nothing, falling
back to an earlier checkpoint when the newest is damaged), a resume probe, and a record of
what each resume did.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from resumable_loader._checks import check_int
from resumable_loader.checkpoint import (
    collective,
    decision,
    inspection,
    integrity,
    loading,
    manifest,
    rng_state,
)
from resumable_loader.checkpoint import probe as probe_mod
from resumable_loader.checkpoint.components import (
    LOADER,
    Component,
    components,
    count_samples,
    count_tokens,
    data_parallel_size,
    loader_entry,
)
from resumable_loader.checkpoint.layout import CheckpointDirectory
from resumable_loader.errors import CheckpointError, ConfigError

MODES = ("strict", "flexible")
CHECKSUMS = ("verify", "trust")


class Checkpointer:
    """Saves and loads ``{"model": model, "optimizer": optim, "loader": loader, ...}`` exactly.

    ``save(step, state)`` writes a checkpoint of every component (models and optimizers through
    ``torch.distributed.checkpoint.state_dict``, anything with ``state_dict()`` as it is, a
    ``resumable_loader.DataLoader`` as its cursor) plus each rank's RNG states and a manifest
    holding every file's content checksum, into ``directory/step-N``, made visible by one
    atomic rename. ``load(state)`` verifies the newest complete checkpoint (falling back to an
    earlier one if it is damaged), validates it against ``state``, then applies every component
    or none, and returns the decision (see :mod:`resumable_loader.checkpoint.decision`). Works
    in one process without a process group and under torchrun.

    Args:
        directory: where the checkpoints live (one folder per saved step).
        keep_last: complete checkpoints kept; older ones are removed after each new one is
            complete, except the newest one that passed verification (by :meth:`load` or
            :meth:`verify`), which is kept until a newer one passes.
        async_save: write through ``dcp.async_save``: ``save`` returns once the state is copied
            to memory; the next ``save``, ``load`` or :meth:`wait` waits for the write.
        seed: the seed RNG states are re-derived from when the rank layout changed; default
            the loader's (saved) seed.
        process_group: the group DCP's collectives use; with ``async_save`` under a process
            group, default a new gloo group of the Checkpointer's own.
        probe_samples: the size of the resume probe's batch (see :meth:`save`'s ``probe``).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep_last: int = 3,
        async_save: bool = False,
        seed: int | None = None,
        process_group: dist.ProcessGroup | None = None,
        probe_samples: int = 4,
    ) -> None:
        self.directory = CheckpointDirectory(directory)
        self.keep_last = check_int("keep_last", keep_last, low=1)
        self.async_save = bool(async_save)
        self.seed = None if seed is None else check_int("seed", seed, high=2**64)
        self.probe_samples = check_int("probe_samples", probe_samples, low=1)
        if process_group is None and self.async_save and collective.active():
            # DCP's thread must not share the training loop's group: collectives of the two
            # threads would interleave (a collective: every rank makes its Checkpointer)
            process_group = dist.new_group(backend="gloo")
        self.process_group = process_group
        self._pending: Future | None = None
        self._finished = threading.Event()
        self._finish_error: BaseException | None = None
        self._loaded: tuple[dict[str, Any], dict[str, Component], str] | None = None

    def __repr__(self) -> str:
        return (
            f"Checkpointer(directory={str(self.directory.root)!r}, keep_last={self.keep_last}, "
            f"async_save={self.async_save}, seed={self.seed}, "
            f"probe_samples={self.probe_samples})"
        )

    def steps(self) -> list[int]:
        """The steps with a complete checkpoint, oldest first (empty before the first save)."""
        return self.directory.complete_steps()

    # -- save ------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Mapping[str, Any],
        *,
        samples_seen: int | None = None,
        tokens_seen: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        probe: probe_mod.LossFn | None = None,
    ) -> Path:
        """Checkpoint ``state`` as global step ``step``; return the checkpoint's folder.

        Call it on every rank. ``samples_seen`` defaults to what the loader's cursor gives
        (exact without ``drop_last``), ``tokens_seen`` to that times the dataset's ``seq_len``
        (a TokenDataset); ``metadata`` is any JSON dict of yours, kept in the manifest.
        ``probe(model, batch) -> loss`` records the resume probe: the loss and a digest of the
        gradients of the first ``probe_samples`` samples of the loader's epoch 0, for
        :meth:`probe` to recompute after a load (nothing of the state changes).
        """
        step = check_int("step", step)
        self.wait()
        steps = collective.all_gather(step) if collective.active() else [step]
        if len(set(steps)) > 1:  # each rank would write another folder, none of them whole
            raise CheckpointError(
                f"save(): the ranks gave different steps ({dict(enumerate(steps))}); call it "
                "with the same step on every rank"
            )
        found = components(state)
        probed = None if probe is None else probe_mod.record(found, probe, self.probe_samples)
        app_state = _state_dicts(found)  # before anything is written
        rank, world_size = collective.rank(), collective.world_size()
        tmp = self.directory.tmp_dir(step)
        if rank == 0:
            self.directory.prepare(step)
        collective.barrier()
        cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        rng = rng_state.write(tmp, rng_state.capture(rank=rank, world_size=world_size, step=step))
        rng_files = dict(collective.all_gather((manifest.rng_name(rank), rng)))
        loaders = {n: loader_entry(c.obj) for n, c in found.items() if c.kind == LOADER}
        samples = count_samples(samples_seen, found)
        record = manifest.build(
            step=step,
            samples_seen=samples,
            tokens_seen=count_tokens(tokens_seen, samples, found),
            world_size=world_size,
            data_parallel_size=data_parallel_size(found, world_size),
            components={n: {"kind": c.kind, "type": c.type_name} for n, c in found.items()},
            loaders=loaders,
            cuda_devices=cuda,
            metadata=dict(metadata or {}),
            optimizers=loading.optimizer_entries(found),
            probe=probed,
        )
        writer = integrity.HashingWriter(tmp)
        kwargs = {"storage_writer": writer, "process_group": self.process_group}
        kwargs["no_dist"] = not collective.active()
        if self.async_save:
            if kwargs["no_dist"]:
                collective.silence_single_process_notice()
            future = dcp.async_save(app_state, **kwargs)
            if not isinstance(future, Future):  # an AsyncSaveResponse
                future = future.upload_completion
            self._finished.clear()
            self._finish_error = None
            future.add_done_callback(
                lambda done: self._finish_async(done, step, record, {**rng_files}, writer)
            )
            self._pending = future
            return self.directory.step_dir(step)
        try:
            with collective.single_process_quiet():
                dcp.save(app_state, **kwargs)
            if rank == 0:
                self._commit(step, record, {**rng_files, **writer.files})
        except BaseException as error:  # DCP's CheckpointException is not an Exception
            if rank == 0:
                self.directory.discard(step)
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            raise CheckpointError(
                f"the save of step {step} into {self.directory.root} failed ({_cause(error)}); "
                "nothing was committed and its partial files are removed: the newest "
                "checkpoint is unchanged. Free space or fix the folder, then save again"
            ) from error
        collective.barrier()
        return self.directory.step_dir(step)

    def _commit(self, step: int, record: dict[str, Any], files: dict[str, Any]) -> None:
        """Rank 0, once every rank's data is written: manifest, rename, latest, prune."""
        manifest.write(self.directory.tmp_dir(step), manifest.seal(record, files))
        self.directory.commit(step)
        self.directory.prune(self.keep_last)

    def _finish_async(
        self,
        done: Future,
        step: int,
        record: dict[str, Any],
        rng_files: dict[str, Any],
        writer: integrity.HashingWriter,
    ) -> None:
        try:
            done.result()
            if collective.rank() == 0:
                self._commit(step, record, {**rng_files, **writer.files})
        except BaseException as error:  # handed to wait(), which raises it
            self._finish_error = error
            if collective.rank() == 0:
                self.directory.discard(step)
        finally:
            self._finished.set()

    def wait(self) -> None:
        """Block until the pending asynchronous save is committed; raise its error if it failed.

        Call it on every rank (``save()`` and ``load()`` do): it returns on none before rank 0
        committed the checkpoint, and a failure on any rank is raised on all (other ranks
        went on before the commit, and a load right after an asynchronous save could take the
        previous checkpoint on some ranks and the new one on others)."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        pending.exception()  # waits; the callback records the outcome
        self._finished.wait()
        error, self._finish_error = self._finish_error, None
        failure = None
        if error is not None:
            failure = CheckpointError(
                f"the asynchronous save failed ({_cause(error)}); nothing was committed: the "
                "newest checkpoint is unchanged"
            )
            failure.__cause__ = error
        collective.raise_if_any(failure, "failed its asynchronous save")

    # -- load ------------------------------------------------------------------------------

    def load(
        self,
        state: Mapping[str, Any],
        *,
        step: int | None = None,
        mode: str = "strict",
        fallback: bool | None = None,
        checksums: str = "verify",
        rollback: bool = True,
    ) -> dict[str, Any]:
        """Verify, validate, then apply the checkpoint of ``step`` (default: the newest).

        Call it on every rank. ``mode="strict"`` resumes the same layout, data stream and
        optimizer, every RNG state restored per rank; ``mode="flexible"`` also accepts another
        world size, batch size, num_workers, an appended data phase or another optimizer class
        or hyperparameters (the model and optimizer reshard through DCP; RNG states are
        restored where the rank layout matches, else re-derived from (seed, step, rank)); every
        such change is listed in the decision.

        ``checksums="verify"`` checks every file's content checksum before anything is applied;
        ``checksums="trust"`` skips that for checkpoints too large to hash (the decision says
        so). ``fallback`` (default: on when ``step`` is None) tries the next older checkpoint
        when one is damaged (a problem found by :meth:`verify`'s checks); the decision's
        ``skipped`` names each one skipped and why.

        By default (``rollback=True``) the checkpoint is staged: each data file is read once
        into fresh tensors beside the live ones, hashed as it is read, and only once every
        checksum and check has passed are the storages swapped into the live tensors (the
        same Python objects: the optimizer keeps the model's Parameters). The old storages
        are the rollback, so a failure after that puts every component back without any
        copy; the cost is fresh memory the size of the state for the length of the load (see
        docs/checkpoint.md). ``rollback=False`` stages nothing (for a state too large to hold
        twice): every file is hashed first and every check still comes first, then the
        checkpoint is read straight into the live tensors, so a read or ``load_state_dict``
        that fails after that leaves the components partly loaded (the decision says which
        way it ran).

        Returns:
            The decision: what was restored, re-derived, changed and skipped (also logged as
            one line and written to ``directory/resume-N.json``).

        Raises:
            CheckpointError: before anything is modified, naming the component, the field,
                both values and the fix; if applying a component raises (any exception), the
                components already set are put back first and the error is raised as it was.
        """
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if checksums not in CHECKSUMS:
            raise ConfigError(f"checksums must be one of {CHECKSUMS}, got {checksums!r}")
        if step is not None:
            step = check_int("step", step)
        fallback = step is None if fallback is None else bool(fallback)
        self.wait()
        found: dict[str, Component] = {}
        candidates: list[Path] = []
        error = None
        try:
            found = components(state)
            candidates = self._candidates(step, fallback)
        except Exception as failure:
            error = failure
        collective.raise_if_any(error)
        try:
            return self._load_chosen(
                candidates,
                found,
                mode=mode,
                fallback=fallback or step is not None,  # one candidate: nothing to fall back on
                checksums=checksums == "verify",
                staged=bool(rollback),
            )
        except BaseException:
            _undo(found)  # a fresh optimizer whose state the checks created is fresh again
            raise

    def _load_chosen(
        self,
        candidates: list[Path],
        found: dict[str, Component],
        *,
        mode: str,
        fallback: bool,
        checksums: bool,
        staged: bool,
    ) -> dict[str, Any]:
        """:meth:`load` once the components and candidates are known: choose a sound
        checkpoint, check it, stage it (if ``staged``), apply it."""
        rank, world_size = collective.rank(), collective.world_size()

        def prepare(inspected: inspection.Inspection) -> loading.Prepared:
            error = None
            plan: dict[str, Any] = {}
            try:
                plan = loading.check(inspected, found, mode=mode, rank=rank, world_size=world_size)
                if plan["rng"] is None:
                    self._rederive_seed(plan["manifest"])  # fails now, not after the weights
            except Exception as failure:  # every rank hears of it before any enters dcp.load
                error = failure
            collective.raise_if_any(error)
            if not staged:
                return loading.Prepared(plan)
            return loading.stage(
                inspected, found, plan, checksums=checksums, process_group=self.process_group
            )

        chosen, prepared, skipped, integrity_note = loading.choose(
            candidates, checksums=checksums, fallback=fallback, prepare=prepare, staged=staged
        )
        if rank == 0:
            for entry in skipped:  # found unsound: no longer what a fallback can count on
                self.directory.forget_verified(Path(entry["checkpoint"]))
            if integrity_note["mode"] == "verified":
                self.directory.mark_verified(chosen.manifest["step"])
        plan = prepared.plan
        saved = plan["manifest"]

        def rederive() -> Any:
            return rng_state.rederive(
                seed=self._rederive_seed(saved), step=saved["step"], rank=rank
            )

        if prepared.staged is not None:
            actions = loading.apply_staged(found, plan, prepared.staged, rederive=rederive)
        else:
            actions = loading.apply_in_place(
                chosen.checkpoint,
                found,
                plan,
                rederive=rederive,
                process_group=self.process_group,
            )
        result = decision.record(
            checkpoint=chosen.checkpoint,
            manifest=saved,
            mode=mode,
            components=actions,
            changed=plan["changed"],
            versions_now=manifest.versions(),
            rank=rank,
            world_size=world_size,
            checksums=integrity_note,
            skipped=skipped,
            rollback=staged,
        )
        target = self.directory.resume_record(saved["step"]) if rank == 0 else None
        decision.publish(result, target)
        self._loaded = (saved, found, mode)
        return result

    def _candidates(self, step: int | None, fallback: bool) -> list[Path]:
        """The checkpoints a load may take, newest first (only ``step``'s if given); with the
        fallback, the step folders without a manifest too, which it then skips by name."""
        if step is not None or not fallback:
            return [self.directory.find(step)]
        self.directory.find(None)  # raises if there is none
        return [self.directory.step_dir(s) for s in reversed(self.directory.step_folders())]

    def _rederive_seed(self, saved: dict[str, Any]) -> int:
        if self.seed is not None:
            return self.seed
        seeds = {entry["state"]["seed"] for entry in saved["loaders"].values()}
        if len(seeds) != 1:
            raise CheckpointError(
                f"RNG states: the rank layout changed, so they are re-derived from (seed, step, "
                f"rank), but the checkpoint has {len(seeds)} loader seeds ({sorted(seeds)}); "
                "pass Checkpointer(..., seed=...) to choose the seed"
            )
        return seeds.pop()

    # -- verify and probe ------------------------------------------------------------------

    def verify(self, step: int | None = None) -> list[str]:
        """Every problem of the checkpoint of ``step`` (default the newest), content checksums
        included; none means it is sound, and it is then kept by ``keep_last`` until a newer
        one is verified. One process reads every file (call it on one rank)."""
        checkpoint = self.directory.find(None if step is None else check_int("step", step))
        found = inspection.inspect(checkpoint)
        if not found.problems and found.manifest is not None:
            self.directory.mark_verified(found.manifest["step"])
        elif found.problems:
            self.directory.forget_verified(checkpoint)
        return found.problems

    def probe(self, model: nn.Module, loss_fn: probe_mod.LossFn) -> dict[str, Any]:
        """Recompute the resume probe the loaded checkpoint recorded, on ``model``.

        After :meth:`load`, before training on: the loss and gradients of the saved probe
        batch must equal the saved ones bit for bit if the load was strict, and be within
        ``probe.RELATIVE_TOLERANCE`` if it was flexible. Changes no RNG, optimizer, loader
        or gradient state.

        Returns:
            The report: sample ids, loss and gradient norm saved and now, both digests.

        Raises:
            CheckpointError: nothing was loaded, the checkpoint has no probe, or the probe
                does not match (both values named).
        """
        if self._loaded is None:
            raise CheckpointError("probe: nothing was loaded yet; call load() first")
        saved, found, mode = self._loaded
        return probe_mod.check(saved, found, model, loss_fn, exact=mode == "strict")


def _undo(found: dict[str, Component]) -> None:
    for component in found.values():
        component.undo()


def _state_dicts(found: dict[str, Component]) -> dict[str, Any]:
    """Every component's ``state_dict()`` for DCP, taken here so that one raising on one
    rank is raised on every rank (inside ``dcp.save`` the other ranks waited for it in a
    collective for ever)."""
    state, error = {}, None
    try:
        for name, component in found.items():
            if component.kind != LOADER:
                state[name] = component.stateful.state_dict()
    except Exception as failure:
        error = CheckpointError(
            f"the save's component '{name}': state_dict() raised {type(failure).__name__}: "
            f"{failure}; nothing was written"
        )
        error.__cause__ = failure
    collective.raise_if_any(error, "could not save")
    return state


def _cause(error: BaseException) -> str:
    """What made a save fail, in one line: each failed rank's innermost exception (DCP wraps
    a rank's ``OSError: [Errno 28] No space left`` in a RuntimeError, in its
    CheckpointException, whose text is a traceback per rank)."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        return "; ".join(
            f"rank {rank}: {_innermost(wrapped[0])}" for rank, wrapped in sorted(failures.items())
        )
    return _innermost(error)


def _innermost(error: BaseException) -> str:
    for _ in range(16):  # a chain of causes, never a cycle
        inner = error.__cause__ or error.__context__
        if inner is None:
            break
        error = inner
    lines = str(error).splitlines() or [""]
    return f"{type(error).__name__}: {lines[0]}"[:300]
