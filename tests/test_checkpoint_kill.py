"""A process SIGKILLed during a save never damages an earlier checkpoint (nor makes a torn one).

The save is killed at each of its durable points in turn: the K-th ``os.fsync`` of the save
(the RNG file, DCP's data and metadata, the manifest, the rename, the ``latest`` pointer) in
a forked child, for K = 1, 2, ... until a save runs to its end. After every kill, the earlier
checkpoint loads to exactly the state it saved, the killed one is either absent or complete,
and the next save of the same step succeeds over the debris. A save of a step that already has
a checkpoint is also killed between its two renames (the earlier one moved aside, the new one
not yet in its place): the earlier one still loads, and the next save keeps it.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from checkpoint_job import batches, build, digest, kill_at_fsync, train_step

from resumable_loader.checkpoint import Checkpointer
from resumable_loader.checkpoint.layout import CheckpointDirectory


def killed_save(root, state, step: int, arm: Callable[[], None]) -> bool:
    """Save ``step`` in a forked child that ``arm()`` has set to SIGKILL itself at some point;
    False if the save finished first."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            arm()
            Checkpointer(root).save(step, state)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the child's save raised"
    return False


def kill_after_rename_to(prefix: str) -> None:
    """SIGKILL this process right after an os.rename to a name that starts with ``prefix``."""
    real = os.rename

    def rename(src: os.PathLike, dst: os.PathLike, *args, **kwargs) -> None:
        real(src, dst, *args, **kwargs)
        if Path(dst).name.startswith(prefix):
            os.kill(os.getpid(), signal.SIGKILL)

    os.rename = rename


def loaded_digest(root, step: int) -> str:
    fresh = build(4, 0)
    assert Checkpointer(root).load(fresh, step=step)["step"] == step
    return digest(fresh)


def test_sigkill_at_every_fsync_of_a_save(tmp_path):
    state = build(4, 0)
    stream = batches(state["loader"])
    for _ in range(3):
        train_step(state, state["model"], next(stream))
    baseline = tmp_path / "baseline"
    Checkpointer(baseline).save(3, state)
    at_3 = digest(state)
    for _ in range(3):
        train_step(state, state["model"], next(stream))
    at_6 = digest(state)

    kills = 0
    while True:
        root = tmp_path / f"kill-{kills + 1}"
        shutil.copytree(baseline, root)
        if not killed_save(root, state, 6, functools.partial(kill_at_fsync, kills + 1)):
            break
        kills += 1
        steps = CheckpointDirectory(root).complete_steps()
        assert steps in ([3], [3, 6]), f"kill at fsync {kills}: complete steps {steps}"
        assert loaded_digest(root, 3) == at_3
        if steps == [3, 6]:  # killed after the rename: the new checkpoint is whole
            assert loaded_digest(root, 6) == at_6
        Checkpointer(root).save(6, state)  # over whatever the kill left
        assert loaded_digest(root, 6) == at_6
        assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    # the RNG file, DCP's data and metadata, the manifest, the folder, the root
    assert kills >= 6, f"only {kills} fsyncs in a save: the kill points did not cover it"


def test_sigkill_between_the_renames_of_a_resave_keeps_the_earlier_checkpoint(tmp_path):
    state = build(4, 0)
    stream = batches(state["loader"])
    for _ in range(3):
        train_step(state, state["model"], next(stream))
    Checkpointer(tmp_path).save(3, state)
    at_3 = digest(state)
    train_step(state, state["model"], next(stream))
    assert killed_save(tmp_path, state, 3, functools.partial(kill_after_rename_to, ".old-step-"))
    steps = sorted(p.name for p in tmp_path.iterdir() if "step-" in p.name)
    assert steps == [".old-step-0000000003", ".tmp-step-0000000003"]  # killed in between
    Checkpointer(tmp_path).save(4, state)  # its cleanup removes what killed saves left
    assert CheckpointDirectory(tmp_path).complete_steps() == [3, 4]
    assert loaded_digest(tmp_path, 3) == at_3
    assert loaded_digest(tmp_path, 4) == digest(state)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
