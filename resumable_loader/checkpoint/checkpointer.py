"""Checkpointer: the whole training state in one versioned, validated, self-describing checkpoint.

Tensors, resharding and asynchronous writes are torch.distributed.checkpoint's (DCP) job; this
module adds what a resume needs besides: every rank's RNG states, the loader's cursor, the step
and what was seen, a manifest that describes it all, a load that checks everything before it
applies anything, and a record of what each resume did.
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

from resumable_loader._checks import check_int
from resumable_loader.checkpoint import collective, decision, manifest, rng_state, validate
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
from resumable_loader.errors import CheckpointError, ConfigError, StateDictError

MODES = ("strict", "flexible")


class Checkpointer:
    """Saves and loads ``{"model": model, "optimizer": optim, "loader": loader, ...}`` exactly.

    ``save(step, state)`` writes a checkpoint of every component (models and optimizers through
    ``torch.distributed.checkpoint.state_dict``, anything with ``state_dict()`` as it is, a
    ``resumable_loader.DataLoader`` as its cursor) plus each rank's RNG states and a manifest,
    into ``directory/step-N``, made visible by one atomic rename. ``load(state)`` inspects the
    newest complete checkpoint, validates all of it against ``state``, then applies it, and
    returns the decision (see :mod:`resumable_loader.checkpoint.decision`). Works in one
    process without a process group and under torchrun.

    Args:
        directory: where the checkpoints live (one folder per saved step).
        keep_last: complete checkpoints kept; older ones are removed after each new one is
            complete.
        async_save: write through ``dcp.async_save``: ``save`` returns once the state is copied
            to memory; the next ``save``, ``load`` or :meth:`wait` waits for the write.
        seed: the seed RNG states are re-derived from when the rank layout changed; default
            the loader's (saved) seed.
        process_group: the group DCP's collectives use; with ``async_save`` under a process
            group, default a new gloo group of the Checkpointer's own.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep_last: int = 3,
        async_save: bool = False,
        seed: int | None = None,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        self.directory = CheckpointDirectory(directory)
        self.keep_last = check_int("keep_last", keep_last, low=1)
        self.async_save = bool(async_save)
        self.seed = None if seed is None else check_int("seed", seed, high=2**64)
        if process_group is None and self.async_save and collective.active():
            # DCP's thread must not share the training loop's group: collectives of the two
            # threads would interleave (a collective: every rank makes its Checkpointer)
            process_group = dist.new_group(backend="gloo")
        self.process_group = process_group
        self._pending: Future | None = None
        self._finished = threading.Event()
        self._finish_error: BaseException | None = None

    def __repr__(self) -> str:
        return (
            f"Checkpointer(directory={str(self.directory.root)!r}, keep_last={self.keep_last}, "
            f"async_save={self.async_save}, seed={self.seed})"
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
    ) -> Path:
        """Checkpoint ``state`` as global step ``step``; return the checkpoint's folder.

        Call it on every rank. ``samples_seen`` defaults to what the loader's cursor gives
        (exact without ``drop_last``), ``tokens_seen`` to that times the dataset's ``seq_len``
        (a TokenDataset); ``metadata`` is any JSON dict of yours, kept in the manifest.
        """
        step = check_int("step", step)
        self.wait()
        found = components(state)
        rank, world_size = collective.rank(), collective.world_size()
        tmp = self.directory.tmp_dir(step)
        if rank == 0:
            self.directory.prepare(step)
        collective.barrier()
        cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        rng_state.write(tmp, rng_state.capture(rank=rank, world_size=world_size, step=step))
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
        )
        app_state = {n: c.stateful for n, c in found.items() if c.kind != LOADER}
        kwargs = {"checkpoint_id": tmp, "process_group": self.process_group}
        kwargs["no_dist"] = not collective.active()
        if self.async_save:
            if kwargs["no_dist"]:
                collective.silence_single_process_notice()
            future = dcp.async_save(app_state, **kwargs)
            if not isinstance(future, Future):  # an AsyncSaveResponse
                future = future.upload_completion
            self._finished.clear()
            self._finish_error = None
            future.add_done_callback(lambda done: self._finish_async(done, step, record))
            self._pending = future
            return self.directory.step_dir(step)
        with collective.single_process_quiet():
            dcp.save(app_state, **kwargs)
        if rank == 0:
            self._commit(step, record)
        collective.barrier()
        return self.directory.step_dir(step)

    def _commit(self, step: int, record: dict[str, Any]) -> None:
        """Rank 0, once every rank's data is written: manifest, rename, latest, prune."""
        manifest.write(self.directory.tmp_dir(step), record)
        self.directory.commit(step)
        self.directory.prune(self.keep_last)

    def _finish_async(self, done: Future, step: int, record: dict[str, Any]) -> None:
        try:
            done.result()
            if collective.rank() == 0:
                self._commit(step, record)
        except BaseException as error:  # handed to wait(), which raises it
            self._finish_error = error
        finally:
            self._finished.set()

    def wait(self) -> None:
        """Block until the pending asynchronous save is committed; raise its error if it failed."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        pending.exception()  # waits; the callback records the outcome
        self._finished.wait()
        if self._finish_error is not None:
            error, self._finish_error = self._finish_error, None
            raise CheckpointError(f"the asynchronous save failed: {error}") from error

    # -- load ------------------------------------------------------------------------------

    def load(
        self, state: Mapping[str, Any], *, step: int | None = None, mode: str = "strict"
    ) -> dict[str, Any]:
        """Inspect, validate, then apply the checkpoint of ``step`` (default: the newest).

        Call it on every rank. ``mode="strict"`` resumes the same layout and data stream, every
        RNG state restored per rank; ``mode="flexible"`` also accepts another world size,
        batch size, num_workers or an appended data phase (the model and optimizer reshard
        through DCP; RNG states are restored where the rank layout matches, else re-derived
        from (seed, step, rank)).

        Returns:
            The decision: what was restored, re-derived and changed (also logged as one line
            and written to ``directory/resume-N.json``).

        Raises:
            CheckpointError: before anything is modified, naming the component, the field,
                both values and the fix.
        """
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if step is not None:
            step = check_int("step", step)
        self.wait()
        rank, world_size = collective.rank(), collective.world_size()
        found: dict[str, Component] = {}
        plan: dict[str, Any] = {}
        error = None
        try:
            found = components(state)
            path = self.directory.find(step)
            plan = self._validate(path, found, mode=mode, rank=rank, world_size=world_size)
        except Exception as failure:  # every rank hears of it before any enters dcp.load
            error = failure
        try:
            collective.raise_if_any(error)
        except Exception:
            _undo(found)
            raise
        return self._apply(path, found, plan, mode=mode, rank=rank, world_size=world_size)

    def _validate(
        self, path: Path, found: dict[str, Component], *, mode: str, rank: int, world_size: int
    ) -> dict[str, Any]:
        """Every check, against the manifest and DCP's metadata; the plan of what to apply."""
        saved = manifest.read(path)
        metadata = validate.read_metadata(path)
        validate.component_names(saved, found)
        cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        changed = validate.topology(saved, mode=mode, world_size=world_size, cuda_devices=cuda)
        for name, component in found.items():
            if component.kind == LOADER:
                entry = saved["loaders"][name]
                changed.update(validate.loader(name, entry, component.obj, mode=mode))
        if not changed.keys() & {"world_size", "cuda_devices"}:
            rng = rng_state.read(path, rank)
        else:
            rng = None
            self._rederive_seed(saved)  # fails now, not after the weights are loaded
        current = {n: c.stateful.state_dict() for n, c in found.items() if c.kind != LOADER}
        validate.tensors(metadata, current, found)
        return {"manifest": saved, "changed": changed, "rng": rng}

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

    def _apply(
        self,
        path: Path,
        found: dict[str, Component],
        plan: dict[str, Any],
        *,
        mode: str,
        rank: int,
        world_size: int,
    ) -> dict[str, Any]:
        saved = plan["manifest"]
        loaders = {n: c.obj for n, c in found.items() if c.kind == LOADER}
        before = {name: loader.state_dict() for name, loader in loaders.items()}
        error = None
        try:  # all-or-nothing per loader (it checks, then sets), so first: cheap to take back
            for name, loader in loaders.items():
                loader.load_state_dict(saved["loaders"][name]["state"])
        except StateDictError as refused:
            error = CheckpointError(f"component '{name}' (loader): {refused}")
        try:
            collective.raise_if_any(error)
        except CheckpointError:
            for name, loader in loaders.items():
                loader.load_state_dict(before[name])
            _undo(found)
            raise
        app_state = {n: c.stateful for n, c in found.items() if c.kind != LOADER}
        with collective.single_process_quiet():
            dcp.load(
                app_state,
                checkpoint_id=path,
                process_group=self.process_group,
                no_dist=not collective.active(),
            )
        actions = {name: decision.RESTORED for name in found}
        if plan["rng"] is not None:
            rng_state.restore(plan["rng"])
            actions["rng"] = decision.RESTORED
        else:
            rng_state.rederive(seed=self._rederive_seed(saved), step=saved["step"], rank=rank)
            actions["rng"] = decision.REDERIVED
        result = decision.record(
            checkpoint=path,
            manifest=saved,
            mode=mode,
            components=actions,
            changed=plan["changed"],
            versions_now=manifest.versions(),
            rank=rank,
            world_size=world_size,
        )
        target = self.directory.resume_record(saved["step"]) if rank == 0 else None
        decision.publish(result, target)
        return result


def _undo(found: dict[str, Component]) -> None:
    for component in found.values():
        component.undo()
