"""One resume harness for every stateful piece: continuous stream vs interrupted-and-resumed.

A stream is the list of (epoch, sample id, digest of what the transform produced) the training
loop saw, one entry per delivered sample. Comparing whole streams as equality is the test.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np
import torch
from torch.utils.data import Dataset

from resumable_loader import ResumableDataLoader

Record = tuple[int, int, str]


class AugmentedDataset(Dataset):
    """Map-style dataset whose samples draw from torch, numpy and random, like real transforms."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        noise = torch.rand(3) + torch.from_numpy(np.random.rand(3)).float() + random.random()
        return {"id": index, "aug": noise}


def digest(value: Any) -> str:
    """A stable hash of a tensor, array, bytes or str (what the transform produced)."""
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    if isinstance(value, np.ndarray):
        value = value.tobytes()
    if isinstance(value, str):
        value = value.encode()
    return hashlib.blake2b(value, digest_size=8).hexdigest()


def split_batch(batch: dict[str, Any]) -> Iterator[tuple[int, str]]:
    """(sample id, digest) per sample of a collated batch with "id" and "aug" entries."""
    ids = batch["id"]
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    for i, sample_id in enumerate(ids):
        yield int(sample_id), digest(batch["aug"][i])


def run(
    loader: ResumableDataLoader,
    epochs: int,
    *,
    stop_after: int | None = None,
    per_sample: Callable[[Any], Iterator[tuple[int, str]]] = split_batch,
) -> tuple[list[Record], dict[str, Any]]:
    """Consume ``epochs`` epochs (or stop after ``stop_after`` batches); return stream and state."""
    stream: list[Record] = []
    batches = 0
    for _ in range(epochs):
        if stop_after is not None and batches == stop_after:
            break
        for batch in loader:
            epoch = loader.state_dict()["epoch"]
            stream.extend((epoch, sample_id, d) for sample_id, d in per_sample(batch))
            batches += 1
            if batches == stop_after:
                break
    return stream, loader.state_dict()


def transport(state: dict[str, Any], how: str) -> dict[str, Any]:
    """Send a state through a serialization a checkpoint would use."""
    if how == "msgpack":
        return msgpack.unpackb(msgpack.packb(state))
    if how == "json":
        return json.loads(json.dumps(state))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def epochs_left(state: dict[str, Any], total_epochs: int) -> int:
    """Epochs a resumed loader must run to reach the end of epoch ``total_epochs - 1``."""
    done = state["position"] == state["fingerprint"]["length"]
    return total_epochs - state["epoch"] - (1 if done else 0)


def interrupted_stream(
    make_first: Callable[[], ResumableDataLoader],
    make_second: Callable[[], ResumableDataLoader],
    *,
    epochs: int,
    stop_after: int,
    how: str = "msgpack",
    **kwargs: Any,
) -> list[Record]:
    """Run ``make_first()`` for ``stop_after`` batches, resume ``make_second()`` from its state."""
    head, state = run(make_first(), epochs, stop_after=stop_after, **kwargs)
    resumed = make_second()
    resumed.load_state_dict(transport(state, how))
    tail, _ = run(resumed, epochs_left(state, epochs), **kwargs)
    return head + tail
