"""The checkpoint directory: one ``step-N`` folder per save, made visible by one atomic rename.

A save writes into ``.tmp-step-N`` and renames it to ``step-N`` once complete, its manifest
(written last) inside; the ``latest`` pointer file is replaced afterwards, and only then are
the oldest complete checkpoints beyond ``keep_last`` removed. A save of a step that already has
a checkpoint moves that one aside to ``.old-step-N`` just before the rename, and a process killed
between the two renames leaves it there: the next listing of the directory puts it back, before
any cleanup could remove it. A process killed at any moment therefore leaves every earlier
checkpoint as it was, and at worst a ``.tmp-`` folder that the next save of that step removes.
A checkpoint counts as complete when its folder has the final name and a manifest:
:meth:`CheckpointDirectory.complete_steps` never lists anything else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path

from resumable_loader.errors import CheckpointError

MANIFEST_NAME = "manifest.json"
LATEST_NAME = "latest"
VERIFIED_NAME = "verified"  # names the newest checkpoint that passed verification
_STEP_DIGITS = 10
_STEP_NAME = re.compile(r"step-(\d+)")
_OLD = ".old-"  # an earlier checkpoint of the step being saved, moved aside by commit()
_REMOVING = ".removing-"  # a checkpoint prune() is removing (never put back)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_inside(path: Path, data: bytes) -> None:
    """Write a file of an uncommitted checkpoint: fsynced, but neither renamed nor its folder
    fsynced, since nothing in the temporary folder is visible before :meth:`commit`, which
    fsyncs the folder once for all its files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class CheckpointDirectory:
    """Names, lists, commits and prunes the checkpoints under one directory.

    Args:
        root: the directory holding ``step-N`` folders, ``latest`` and ``resume-N.json``.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"CheckpointDirectory(root={str(self.root)!r})"

    def step_dir(self, step: int) -> Path:
        """Where the complete checkpoint of ``step`` lives."""
        return self.root / f"step-{step:0{_STEP_DIGITS}d}"

    def tmp_dir(self, step: int) -> Path:
        """Where a save of ``step`` is written before it is committed."""
        return self.root / f".tmp-step-{step:0{_STEP_DIGITS}d}"

    def prepare(self, step: int) -> Path:
        """An empty temporary folder for ``step`` (a stale one from a killed save is removed)."""
        tmp = self.tmp_dir(step)
        self.root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        return tmp

    def discard(self, step: int) -> None:
        """Remove the temporary folder of a save of ``step`` that failed (its partial files
        take space on a disk that may be full)."""
        shutil.rmtree(self.tmp_dir(step), ignore_errors=True)

    def commit(self, step: int) -> Path:
        """Make the temporary folder of ``step`` the checkpoint of ``step``, in one rename, and
        point ``latest`` at it (replaced atomically, after the rename).

        A checkpoint of the same step saved before is moved aside to ``.old-step-N`` first and
        removed after the rename, so there is never a half-replaced ``step-N``; if the process
        dies between the two renames, :meth:`complete_steps` puts the earlier one back.
        """
        tmp, final = self.tmp_dir(step), self.step_dir(step)
        if not (tmp / MANIFEST_NAME).is_file():
            raise CheckpointError(
                f"{tmp}: no {MANIFEST_NAME}, so the save is incomplete and is not committed"
            )
        self.forget_verified(final)  # a re-save replaces what was verified
        _fsync_dir(tmp)  # the entries of the files written inside
        old, replaced = self.root / f"{_OLD}{final.name}", False
        while True:
            if final.exists():
                if old.exists():  # left by a kill after an earlier re-save's second rename
                    shutil.rmtree(old)
                os.rename(final, old)
                replaced = True
            try:
                os.rename(tmp, final)
                break
            except OSError as error:
                # a listing (another thread or process) put the earlier checkpoint back
                # between the two renames: move it aside again
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        # latest is a pointer for people and tools (load() finds the newest complete folder
        # itself), so it is replaced atomically but not fsynced: the root's fsync below
        # makes the rename and the pointer durable together
        pointer = self.root / f".{LATEST_NAME}.tmp-{os.getpid()}"
        pointer.write_text(f"{final.name}\n")
        os.replace(pointer, self.root / LATEST_NAME)
        _fsync_dir(self.root)
        if replaced:
            shutil.rmtree(old)
        return final

    def read_latest(self) -> str | None:
        """The folder name ``latest`` points at, or None if there is no pointer."""
        try:
            return (self.root / LATEST_NAME).read_text().strip() or None
        except FileNotFoundError:
            return None

    def complete_steps(self) -> list[int]:
        """Steps with a committed checkpoint (final name and a manifest), oldest first; an
        earlier checkpoint that a killed re-save left moved aside is put back first."""
        return [s for s in self.step_folders() if (self.step_dir(s) / MANIFEST_NAME).is_file()]

    def step_folders(self) -> list[int]:
        """Steps with a ``step-N`` folder, oldest first, complete or not: a commit renames a
        whole folder into place and a prune renames one away first, so a ``step-N`` without
        its manifest was damaged since (what a load says it skipped)."""
        if not self.root.is_dir():
            return []
        self._put_back_moved_aside()
        steps = []
        for entry in self.root.iterdir():
            match = _STEP_NAME.fullmatch(entry.name)
            if match and entry.is_dir():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def _put_back_moved_aside(self) -> None:
        """Rename every ``.old-step-N`` that has its manifest but no ``step-N`` back to
        ``step-N``: the earlier checkpoint of a step whose re-save was killed between the two
        renames of :meth:`commit`, whole (it was complete when it was moved aside), which
        :meth:`prune`'s cleanup would otherwise remove."""
        for entry in self.root.iterdir():
            name = entry.name.removeprefix(_OLD)
            if name == entry.name or not _STEP_NAME.fullmatch(name):
                continue
            final = self.root / name
            if not final.exists() and (entry / MANIFEST_NAME).is_file():
                # another process may put it back first, or the root may be read-only: then
                # it stays as it is
                with contextlib.suppress(OSError):
                    os.rename(entry, final)

    def find(self, step: int | None) -> Path:
        """The checkpoint of ``step``, or the newest complete one when ``step`` is None."""
        if not self.root.is_dir():
            raise CheckpointError(
                f"{self.root}: no such directory, so no checkpoint; check the path, or start "
                "the run afresh without load()"
            )
        steps = self.complete_steps()
        if not steps:
            raise CheckpointError(
                f"{self.root}: no complete checkpoint (a step-N folder with a {MANIFEST_NAME}); "
                "check the directory, or start the run afresh without load()"
            )
        if step is None:
            return self.step_dir(steps[-1])
        if step not in steps:
            raise CheckpointError(
                f"{self.root}: no complete checkpoint of step {step}; complete steps are "
                f"{steps}; pass one of them, or no step for the newest"
            )
        return self.step_dir(step)

    def mark_verified(self, step: int) -> None:
        """Record that the checkpoint of ``step`` passed verification (if newer than the one
        recorded): :meth:`prune` keeps it until a newer one passes."""
        verified = self.verified_step()
        if verified is not None and verified >= step:
            return
        pointer = self.root / f".{VERIFIED_NAME}.tmp-{os.getpid()}"
        pointer.write_text(f"{self.step_dir(step).name}\n")
        os.replace(pointer, self.root / VERIFIED_NAME)

    def forget_verified(self, folder: Path) -> None:
        """The checkpoint in ``folder`` no longer counts as verified: it failed a check since,
        or a re-save of its step replaces it. If the record names it, the record goes, so that
        the next checkpoint to pass (an older one a fallback took, say) is recorded and kept."""
        match = _STEP_NAME.fullmatch(folder.name)
        if match and self.verified_step() == int(match.group(1)):
            (self.root / VERIFIED_NAME).unlink(missing_ok=True)

    def verified_step(self) -> int | None:
        """The step of the newest checkpoint that passed verification and still exists."""
        try:
            match = _STEP_NAME.fullmatch((self.root / VERIFIED_NAME).read_text().strip())
        except FileNotFoundError:
            return None
        step = int(match.group(1)) if match else None
        return step if step is not None and step in self.complete_steps() else None

    def prune(self, keep_last: int) -> list[int]:
        """Remove all but the newest ``keep_last`` complete checkpoints (and the records of
        resumes from them), and what killed saves left (temporary folders, half-removed
        checkpoints, an earlier checkpoint moved aside whose step has a new one, a resume
        record half written); return the removed steps. The newest checkpoint that passed
        verification is kept whatever its age.

        Called right after a commit, when no other save of this directory is in progress.
        """
        verified = self.verified_step()
        removed = [s for s in self.complete_steps()[:-keep_last] if s != verified]
        for step in removed:
            # renamed first, so a kill during rmtree leaves no step-N without all its files
            # (and to a name that complete_steps() never puts back)
            doomed = self.root / f"{_REMOVING}{self.step_dir(step).name}"
            os.rename(self.step_dir(step), doomed)
            shutil.rmtree(doomed)
            self.resume_record(step).unlink(missing_ok=True)
        for entry in self.root.iterdir():
            if entry.name.startswith((".tmp-step-", f"{_OLD}step-", f"{_REMOVING}step-")):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith((f".{LATEST_NAME}.tmp-", f".{VERIFIED_NAME}.tmp-")) or (
                entry.name.startswith(".resume-") and ".json.tmp-" in entry.name
            ):
                entry.unlink(missing_ok=True)
        return removed

    def resume_record(self, step: int) -> Path:
        """Where the decision of a resume from ``step`` is written."""
        return self.root / f"resume-{step:0{_STEP_DIGITS}d}.json"
