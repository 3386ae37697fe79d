"""torchtitan: TitanDataLoader through torchtitan's config build and its CheckpointManager.

The torchrun jobs (tests/torchtitan_job.py) save at data-parallel degree 2, are killed, and load
at 1 with another local batch size, which torchtitan's own dataloader refuses ("dataloader
resharding is not supported yet"); the global stream of token windows must continue exactly,
and the losses with it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torchtitan", reason="pip install -e '.[test-frameworks]' -c constraints.txt")
import torch
from torch.distributed.checkpoint.stateful import Stateful
from torchrun_harness import rank_pickles
from torchrun_harness import torchrun as run_job
from torchtitan.components.dataloader import BaseDataLoader
from torchtitan_job import SEQ_LEN

from resumable_loader import ConfigError
from resumable_loader.integrations.torchtitan import TitanDataLoader
from resumable_loader.tokens import MegatronWriter

JOB = Path(__file__).with_name("torchtitan_job.py")


@pytest.fixture
def shards(tmp_path) -> str:
    writer = MegatronWriter(tmp_path / "shard", dtype=np.uint16)
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 20, 30)
    writer.add_documents(rng.integers(0, 50, lengths.sum()), lengths)
    writer.close()
    return str(tmp_path / "shard")


def torchrun(nproc: int, shards: str, out: Path, *args: str, killed: bool = False) -> list[dict]:
    out.mkdir(exist_ok=True)
    # torchtitan's own warnings stay warnings here
    run_job(JOB, nproc, shards, out, *args, timeout=300, killed=killed, PYTHONWARNINGS="default")
    return rank_pickles(out, nproc)


def global_windows(per_rank: list[dict]) -> list:
    """Step by step, rank 0's windows then rank 1's: the loader's global stream."""
    steps = zip(*(result["windows"] for result in per_rank), strict=True)
    return [w for step in steps for batch in step for w in batch]


@pytest.mark.slow
def test_killed_at_two_ranks_resumes_on_one_with_another_batch_size(shards, tmp_path):
    """Data-parallel degree 2 with local batches of 2, killed after step 5 with a checkpoint of
    step 3, resumed through the CheckpointManager at degree 1 with batches of 4: the global
    stream of windows and the losses are those of an uninterrupted run at degree 1."""
    (continuous,) = torchrun(1, shards, tmp_path / "continuous", "--batch-size=4", "--steps=6")
    killed = torchrun(
        2, shards, tmp_path / "killed", "--batch-size=2", "--steps=6", "--save-at=3",
        "--kill-at=5", killed=True,
    )  # fmt: skip
    (tmp_path / "tail").mkdir()
    shutil.copytree(tmp_path / "killed" / "checkpoint", tmp_path / "tail" / "checkpoint")
    (tail,) = torchrun(1, shards, tmp_path / "tail", "--batch-size=4", "--steps=3", "--load-step=3")
    stream = global_windows([continuous])
    assert len(stream) == 6 * 4 and stream[:12] != stream[12:]
    assert global_windows(killed) == stream[: 5 * 4]
    assert global_windows([tail]) == stream[12:]
    assert tail["losses"] == continuous["losses"][3:]  # degree 1 both: bit for bit
    # the same global batches at degree 2; only the order of the float sums differs
    assert killed[0]["losses"] == killed[1]["losses"]
    assert np.allclose(killed[0]["losses"], continuous["losses"][:5], rtol=1e-6, atol=1e-7)
    assert len(set(continuous["losses"])) == 6  # the model learns: the losses are not constant


def test_the_adapter_follows_torchtitans_interface(shards):
    loader = TitanDataLoader.Config(dataset_path=shards, seed=1).build(
        dp_world_size=2, dp_rank=1, tokenizer=None, seq_len=SEQ_LEN, local_batch_size=3
    )
    assert isinstance(loader, BaseDataLoader) and isinstance(loader, Stateful)
    batches = iter(loader)
    inputs, labels = next(batches)
    assert inputs["input"].shape == labels.shape == (3, SEQ_LEN)
    assert inputs["input"].dtype == labels.dtype == torch.int64
    assert torch.equal(inputs["input"][:, 1:], labels[:, :-1])
    assert loader.state_dict()["position"] == 2 * 3  # one global batch of 2 ranks
    for _ in range(2 * len(loader.loader)):  # runs on into the next epochs
        next(batches)
    assert loader.state_dict()["epoch"] >= 2


def test_a_missing_dataset_path_is_a_config_error():
    with pytest.raises(ConfigError, match="dataset_path"):
        TitanDataLoader.Config().build(
            dp_world_size=1, dp_rank=0, tokenizer=None, seq_len=4, local_batch_size=1
        )
