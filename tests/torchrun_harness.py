"""Starts a job script under torchrun (``python -m torch.distributed.run``, with this
interpreter) on CPU and reads back what each rank wrote, for the tests of real launches."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any


def torchrun(
    job: Path,
    nproc: int,
    *args: str | Path,
    timeout: float = 180,
    killed: bool = False,
    **env: str,
) -> None:
    """Run ``job`` on ``nproc`` ranks with ``args``; the ranks turn warnings into errors, as
    pytest does here, and see ``env`` on top of this environment. Fails the test, with the
    output's tail, unless every rank exits 0 (``killed``: unless the job failed, as one whose
    ranks kill themselves does)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={nproc}", str(job), *map(str, args)]
    environment = {**os.environ, "PYTHONWARNINGS": "error", **env}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=environment, cwd=job.parent
    )
    failed = done.returncode != 0
    assert failed == killed, (
        f"torchrun exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )


def rank_pickles(out: Path, nproc: int) -> list[Any]:
    """What ranks 0..nproc-1 pickled to ``out / f"{rank}.pkl"``, by rank."""
    results = []
    for rank in range(nproc):
        with open(out / f"{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))
    return results
