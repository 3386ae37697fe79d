"""Packed over a prefetching dataset: the look-ahead sees through the packs to their samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from shard_factory import write_tar_shards

from resumable_loader import DataLoader, Packed, TarShardDataset
from resumable_loader.packing.collate import collate_varlen
from resumable_loader.storage.reader import Prefetch

SAMPLES = 6 * 60


class Tokens(TarShardDataset):
    """A tar sample's ``.bin`` bytes as its tokens, read a sample at a time."""

    __getitems__ = None

    def __getitem__(self, sample_id: int) -> dict[str, Any]:
        data = super().__getitem__(sample_id)["bin"]
        return {"input_ids": torch.from_numpy(np.frombuffer(data, np.uint8).astype(np.int64))}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_tar_shards(tmp_path_factory.mktemp("packs"), num_shards=6, samples_per_shard=60)


def run(dataset: Tokens, lengths: np.ndarray, workers: int) -> tuple[list[list[int]], Any]:
    loader = DataLoader(
        Packed(dataset, 128, lengths=lengths, window=32),
        batch_size=3,
        shuffle=True,
        seed=5,
        num_workers=workers,
        collate_fn=collate_varlen,
    )
    packs = [batch["input_ids"][0].tolist() + batch["sample_ids"].tolist() for batch in loader]
    return packs, loader


@pytest.mark.parametrize(("workers", "depth_batches"), [(0, None), (2, None), (0, 4), (2, 4)])
def test_the_look_ahead_plans_the_samples_of_the_packs_to_come(
    shards: list[str], tmp_path: Path, workers: int, depth_batches: int | None
) -> None:
    """Without it a read finds nothing planned and fetches at once (67 of the 360 reads here,
    the rest hitting the blocks those fetched); with it the reads find their bytes planned,
    fetched or in flight, and the stream is the local one; a depth in global batches counts
    the packs' samples (the sample schedule's global batch)."""
    local = Tokens(shards)
    lengths = np.array([len(local[i]["input_ids"]) for i in range(SAMPLES)])
    expected, _ = run(local, lengths, 0)
    prefetch = Prefetch(cache_dir=tmp_path, wait_seconds=10.0, depth_batches=depth_batches)
    remote = Tokens(shards, read_ahead=16384, cache_bytes=64 * 2**20, prefetch=prefetch)
    got, loader = run(remote, lengths, workers)
    assert got == expected
    stats = loader.storage_stats()
    assert stats.reads == SAMPLES and stats.requests > 0
    assert stats.fetched_reads <= SAMPLES // 20, stats  # 0 here; 67 with no look-ahead
