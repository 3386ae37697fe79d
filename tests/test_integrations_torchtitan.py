"""torchtitan: TitanDataLoader through torchtitan's config build and its CheckpointManager.

The torchrun jobs (tests/torchtitan_job.py) save at data-parallel degree 2 and load at 1 with
another local batch size, which torchtitan's own dataloader refuses ("dataloader resharding is
not supported yet"); the global stream of token windows must continue exactly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
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


def torchrun(nproc: int, shards: str, out: Path, *args: str) -> list[list]:
    # torchtitan's own warnings stay warnings here
    run_job(JOB, nproc, shards, out, *args, timeout=300, PYTHONWARNINGS="default")
    return rank_pickles(out, nproc)


def global_windows(per_rank: list[list]) -> list:
    """Step by step, rank 0's windows then rank 1's: the loader's global stream."""
    return [w for step in zip(*per_rank, strict=True) for batch in step for w in batch]


@pytest.mark.slow
def test_a_checkpoint_at_two_ranks_loads_on_one_with_another_batch_size(shards, tmp_path):
    head = torchrun(2, shards, tmp_path / "head", "--batch-size=2", "--steps=6", "--save-at=3")
    continuous = global_windows(head)
    assert len(continuous) == 6 * 2 * 2
    (tmp_path / "tail").mkdir()
    shutil.copytree(tmp_path / "head" / "checkpoint", tmp_path / "tail" / "checkpoint")
    tail = torchrun(1, shards, tmp_path / "tail", "--batch-size=4", "--steps=3", "--load-step=3")
    assert continuous[:12] != continuous[12:]
    assert global_windows(tail) == continuous[12:]


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
