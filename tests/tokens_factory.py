"""Small token corpora for the token tests, in every format, and a loader run over ranks."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from resume_harness import digest, epochs_left, transport
from torch.utils.data import Dataset

from resumable_loader import ResumableDataLoader, sample_key
from resumable_loader.tokens import MegatronWriter

Entry = tuple[int, int, int, str]  # epoch, position, window, digest of the sample's tensors


def documents(seed: int, count: int, *, max_len: int = 40, vocab: int = 50_000) -> list:
    """``count`` documents of 1..max_len random token ids."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, rng.integers(1, max_len + 1)) for _ in range(count)]


def offsets_of(docs: list) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)


def write_megatron(directory: os.PathLike, name: str, docs: list, dtype=np.uint16) -> str:
    prefix = os.path.join(directory, name)
    writer = MegatronWriter(prefix, dtype=dtype)
    writer.add_documents(np.concatenate(docs), [len(d) for d in docs])
    writer.close()
    return prefix


def write_plain(directory: os.PathLike, name: str, docs: list, dtype=np.uint32, npy=True) -> str:
    stem = os.path.join(directory, name)
    tokens = np.concatenate(docs).astype(dtype)
    path = stem + (".npy" if npy else ".bin")
    if npy:
        np.save(path, tokens)
    else:
        tokens.tofile(path)
    np.save(stem + ".offsets.npy", offsets_of(docs))
    return path


def write_parquet(
    directory: os.PathLike, name: str, docs: list, column="input_ids", value_type=None
) -> str:
    path = os.path.join(directory, name + ".parquet")
    values = pa.array([d.tolist() for d in docs], pa.list_(value_type or pa.int32()))
    pq.write_table(pa.table({column: values}), path, row_group_size=7)
    return path


class Keyed(Dataset):
    """A token dataset whose samples also carry their window, epoch and key position."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = sample_key()
        return {"id": index, "epoch": key.epoch, "pos": key.position, **self.inner[index]}


FIELDS = ("input_ids", "labels", "position_ids", "cu_seqlens")


def entries(batch: dict[str, Any]) -> list[Entry]:
    out = []
    for i in range(len(batch["id"])):
        tensors = b"".join(batch[f][i].numpy().tobytes() for f in FIELDS)
        out.append(
            (int(batch["epoch"][i]), int(batch["pos"][i]), int(batch["id"][i]), digest(tensors))
        )
    return out


def run_ranks(
    make: Callable[[int, int], ResumableDataLoader],
    world_size: int,
    epochs: int,
    *,
    stop_after: int | None = None,
    state: dict | None = None,
) -> tuple[list[Entry], dict]:
    """The global stream of ``world_size`` in-process ranks (padding dropped) and the cursor.

    ``make(rank, world_size)`` builds one rank's loader; global batches are the ranks' batches
    side by side; ``stop_after`` global batches end the run early.
    """
    if stop_after is not None and stop_after < 0:  # would never match: an endless run
        raise ValueError(f"stop_after must be >= 0 global batches, got {stop_after}")
    loaders = [make(rank, world_size) for rank in range(world_size)]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(transport(state, "msgpack"))
        epochs = epochs_left(state, epochs)
    length = len(loaders[0].dataset)
    stream: list[Entry] = []
    batches = 0
    for _ in range(epochs):
        if batches == stop_after:
            break
        for global_batch in zip(*loaders, strict=True):
            for batch in global_batch:
                stream.extend(e for e in entries(batch) if e[1] < length)
            batches += 1
            if batches == stop_after:
                break
    return stream, loaders[0].state_dict()
