"""Writes the golden fixtures beside it: run ``python tests/data/make_golden.py`` only when a
change of stream is intended (and say so in the commit), since the tests compare against them.

- ``cursor_v1.json``: a version-1 cursor as the release of 2026-12 wrote it (before the
  ``reseed_globals`` fingerprint field existed); every later release must keep loading it.
- ``cursor_shard_local_feistel_v2.json``: a shard-local cursor as the releases before
  ``shard-blocks-v1`` wrote it (their shuffle buffer, replayed from the epoch's start); it must
  be refused, naming the algorithm.
- ``streams.json``: the first outputs of ``derive_words`` and of each reseeded global
  generator (Python's ``random``, numpy's legacy RNG, torch's CPU generator), and of the
  sample generators, for a few keys; and the first ids of a shuffled and a shard-local order.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from resumable_loader.order import Purpose, ShardLocalOrder, ShuffledOrder, derive_words
from resumable_loader.rngs.process import this_process
from resumable_loader.rngs.sample import clear_key, install_key, sample_key

HERE = Path(__file__).parent
KEYS = [(0, 0, 0), (2026, 3, 4096), (2**64 - 1, 2**32 - 1, 2**62)]  # (seed, epoch, position)


def streams() -> dict:
    """What the fixtures hold, computed by the current code."""
    out: dict = {"derive_words": [], "globals": [], "sample_generators": [], "orders": {}}
    for seed, epoch, position in KEYS:
        for purpose in Purpose:
            words = derive_words(seed, epoch, position, purpose)
            out["derive_words"].append([seed, epoch, position, purpose.name, list(words)])
        rngs = this_process()
        saved = rngs.save()
        try:
            rngs.reseed(derive_words(seed, epoch, position, Purpose.SAMPLE))
            out["globals"].append(
                {
                    "key": [seed, epoch, position],
                    "random": [random.getrandbits(32) for _ in range(4)],
                    "numpy": np.random.randint(0, 2**31, size=4).tolist(),
                    "torch": torch.randint(0, 2**31, (4,)).tolist(),
                    "torch_initial_seed": torch.initial_seed(),
                }
            )
        finally:
            rngs.restore(saved)
        install_key(seed, epoch, position, Purpose.SAMPLE, reseed_globals=False)
        try:
            key = sample_key()
            out["sample_generators"].append(
                {
                    "key": [seed, epoch, position],
                    "numpy": key.numpy_generator().integers(0, 2**31, size=4).tolist(),
                    "torch": torch.randint(
                        0, 2**31, (4,), generator=key.torch_generator()
                    ).tolist(),
                }
            )
        finally:
            clear_key()
    out["orders"]["shuffled_1000_seed7_epoch2"] = ShuffledOrder(1000, seed=7).ids(2, 0, 16).tolist()
    shard_local = ShardLocalOrder([30, 50, 20], seed=7, window=2, buffer_size=16)
    out["orders"]["shard_local_30_50_20_seed7_epoch1"] = shard_local.ids(1, 0, 16).tolist()
    return out


CURSOR_V1 = {  # written by ResumableDataLoader.state_dict() at 5ce09d8 (seed 2026, shuffled)
    "format": "resumable_loader.cursor",
    "version": 1,
    "seed": 2026,
    "epoch": 3,
    "position": 4096,
    "fingerprint": {
        "dataset": "",
        "order": "shuffled",
        "length": 50000,
        "algorithm": "feistel-v2",
        "drop_last": 0,
    },
}


# written by ResumableDataLoader.state_dict() at 2e4dbb6 (seed 2026, a dataset with shard_sizes
# [30, 50, 20], ShardShuffle(window=2, buffer_size=16), after two batches of 4)
CURSOR_SHARD_LOCAL_FEISTEL_V2 = {
    "format": "resumable_loader.cursor",
    "version": 1,
    "seed": 2026,
    "epoch": 0,
    "position": 8,
    "fingerprint": {
        "dataset": "",
        "reseed_globals": 1,
        "order": "shard_local",
        "algorithm": "feistel-v2",
        "length": 100,
        "shards": 3,
        "window": 2,
        "buffer_size": 16,
        "drop_last": 0,
    },
}


def main() -> None:
    from resumable_loader.loader import cursor

    for name, saved in (
        ("cursor_v1.json", CURSOR_V1),
        ("cursor_shard_local_feistel_v2.json", CURSOR_SHARD_LOCAL_FEISTEL_V2),
    ):
        fields = {k: saved[k] for k in ("seed", "epoch", "position", "fingerprint")}
        written = dict(saved, checksum=cursor.make_cursor(**fields)["checksum"])
        (HERE / name).write_text(json.dumps(written, indent=1) + "\n")
    (HERE / "streams.json").write_text(json.dumps(streams(), indent=1) + "\n")


if __name__ == "__main__":
    main()
