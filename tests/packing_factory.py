"""The packing tests' data and harness: token samples whose tokens show their key, one record
per pack, and a packed loader with the tests' defaults (shared with the torchrun job)."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from resumable_loader import DataLoader, Packed
from resumable_loader.packing.collate import collate_varlen

Record = tuple[int, tuple[int, ...], tuple[int, ...], str]


class Texts(Dataset):
    """Sample i: ``lengths[i]`` tokens drawn from torch's global RNG (an augmentation, so a
    pack's tokens show the key each sample was loaded under), offset by 1000 * i."""

    def __init__(self, lengths: np.ndarray, name: str = "texts") -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.fingerprint = f"{name}-{len(lengths)}"

    def __len__(self) -> int:
        return len(self.lengths)

    def sample_lengths(self) -> np.ndarray:
        return self.lengths

    def __getitem__(self, index: int) -> dict[str, Any]:
        tokens = torch.randint(0, 1000, (int(self.lengths[index]),)) + 1000 * index
        return {"input_ids": tokens}


def lengths(count: int, seed: int = 0, longest: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, longest, size=count)
    values[:4] = [0, 1, 32, 33]  # empty, one token, exactly max_tokens=32, longer
    return values


def packs(batch: dict[str, Any]) -> list[Record]:
    """One record per pack of a collate_varlen batch: ids, positions, digest of its tokens."""
    bounds = batch["pack_bounds"].tolist()
    cu = batch["cu_seqlens"].tolist()
    tokens = batch["input_ids"][0]
    out = []
    for first, stop in itertools.pairwise(bounds):
        part = tokens[cu[first] : cu[stop]].numpy().tobytes()
        out.append(
            (
                -1,
                tuple(batch["sample_ids"][first:stop].tolist()),
                tuple(batch["sample_positions"][first:stop].tolist()),
                hashlib.blake2b(part, digest_size=8).hexdigest(),
            )
        )
    return out


def make(dataset: Dataset, *, max_tokens: int = 32, **kwargs: Any) -> DataLoader:
    keys = ("window", "strategy", "overlong", "lengths")
    packed_args = {k: kwargs.pop(k) for k in keys if k in kwargs}
    packed_args.setdefault("window", 8)
    packed_args.setdefault("overlong", "split")
    return DataLoader(
        Packed(dataset, max_tokens, **packed_args),
        collate_fn=kwargs.pop("collate_fn", collate_varlen),
        **{"shuffle": True, "seed": 7, **kwargs},
    )


def stream(loader: DataLoader, epochs: int, stop_after: int | None = None) -> list[Record]:
    """The packs the loop sees over ``epochs`` (or until ``stop_after`` batches), each tagged
    with its epoch."""
    records: list[Record] = []
    batches = 0
    for _ in range(epochs):
        for batch in loader:
            epoch = loader.state_dict()["epoch"]
            records += [(epoch, *record[1:]) for record in packs(batch)]
            batches += 1
            if batches == stop_after:
                return records
    return records


DATA = Texts(lengths(61))


def epochs_left(loader: DataLoader, total_epochs: int) -> int:
    """Epochs a loader that loaded a state must run to reach the end of ``total_epochs - 1``
    (a state at an epoch's last pack continues with the next epoch)."""
    state = loader.state_dict()
    done = state["position"] == loader.order.epoch_length(state["epoch"])
    return total_epochs - state["epoch"] - done
