"""Runs a function on W real ranks (gloo on CPU) and merges what the ranks received.

Each rank is a forked process with an initialized torch.distributed process group; it returns
its batches (lists of (position, id, digest)) and its cursor. ``global_stream`` concatenates
the ranks' batches global batch by global batch, dropping padding (virtual positions past the
epoch's end), which must equal the single-process stream.
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from resume_harness import AugmentedDataset, digest, epochs_left, transport
from torch.utils.data import Dataset

from resumable_loader import ResumableDataLoader, sample_key

Entry = tuple[int, int, int, str]  # epoch, position, sample id, digest


class PositionedDataset(Dataset):
    """Wraps a dataset; each sample also reports the position its key was derived from."""

    def __init__(self, inner: Dataset, describe: Callable[[Any], Any]) -> None:
        self.inner = inner
        self.describe = describe

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = sample_key()
        return {
            "id": index,
            "epoch": key.epoch,
            "pos": key.position,
            "digest": digest(self.describe(self.inner[index])),
        }


def augmented(length: int) -> PositionedDataset:
    return PositionedDataset(AugmentedDataset(length), lambda sample: sample["aug"])


def unpack(batch: dict[str, Any]) -> list[Entry]:
    return [
        (int(e), int(p), int(i), d)
        for e, p, i, d in zip(
            batch["epoch"], batch["pos"], batch["id"], batch["digest"], strict=True
        )
    ]


def consume(
    loader: ResumableDataLoader, epochs: int, stop_after: int | None = None
) -> list[list[Entry]]:
    """This rank's batches over ``epochs`` epochs, or until ``stop_after`` batches."""
    batches: list[list[Entry]] = []
    for _ in range(epochs):
        for batch in loader:
            batches.append(unpack(batch))
            if len(batches) == stop_after:
                return batches
    return batches


def _rank_main(
    rank: int, world_size: int, init_file: str, out_dir: str, fn: Callable, args: tuple
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        result = fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def launch(world_size: int, fn: Callable, *args: Any) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` ranks; return each rank's result.

    A gloo rendezvous that fails while the ranks connect (``connectFullMesh ... Connection
    closed by peer``, seen now and then with 4 forked ranks on 2 cores, before any of ``fn``
    runs) is retried once with a fresh rendezvous; any other failure is the test's.
    """
    try:
        return _launch_once(world_size, fn, args)
    except mp.ProcessRaisedException as error:
        if "connectFullMesh" not in str(error):
            raise
        return _launch_once(world_size, fn, args)


def _launch_once(world_size: int, fn: Callable, args: tuple) -> list[Any]:
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.start_processes(
            _rank_main,
            args=(world_size, init_file, tmp, fn, args),
            nprocs=world_size,
            start_method="fork",
        )
        results = []
        for rank in range(world_size):
            with open(os.path.join(tmp, f"{rank}.pkl"), "rb") as f:
                results.append(pickle.load(f))
    return results


def global_stream(per_rank_batches: list[list[list[Entry]]], length: int) -> list[Entry]:
    """Concatenate ranks' batches global batch by global batch, without padding positions."""
    counts = {len(batches) for batches in per_rank_batches}
    assert len(counts) == 1, f"ranks got different numbers of batches: {counts}"
    stream = []
    for global_batch in zip(*per_rank_batches, strict=True):
        stream.extend(e for batch in global_batch for e in batch if e[1] < length)
    return stream


def resume_job(
    rank: int,
    world_size: int,
    make_loader: Callable[..., ResumableDataLoader],
    epochs: int,
    stop_after: int | None,
    state: dict | None,
) -> tuple[list[list[Entry]], dict]:
    """One rank of a job: optionally resume from ``state``, consume, return batches and cursor."""
    loader = make_loader()
    if state is not None:
        loader.load_state_dict(transport(state, "msgpack"))
        epochs = epochs_left(state, epochs)
    batches = consume(loader, epochs, stop_after)
    return batches, loader.state_dict(check_ranks=True)


def job_arguments(
    argv: Sequence[str] | None, description: str | None, saved: str, saved_help: str
) -> argparse.Namespace:
    """The arguments of a torchrun job that stops and saves, or loads and goes on: the saved
    state's path (positional ``saved``), the output directory for each rank's ``<rank>.pkl``,
    ``--batch-size``, ``--num-workers`` and ``--stop-after`` (batches before saving; else load)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(saved, help=saved_help)
    parser.add_argument("out", help="directory for each rank's <rank>.pkl")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--num-workers", type=int, required=True)
    parser.add_argument("--stop-after", type=int, help="batches before saving; else load")
    return parser.parse_args(argv)
