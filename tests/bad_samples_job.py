"""One rank of tests/test_bad_samples.py's torchrun jobs: a dataset with corrupt samples.

Launched as ``python -m torch.distributed.run --standalone --nproc-per-node=W
bad_samples_job.py OUT QUARANTINE --num-workers K --batch-size B --bad I,J --save-after S``:
each rank reads one epoch of :class:`Corrupt` with ``on_sample_error="substitute"``, keeps
the cursor after S batches, and pickles its batches and that cursor to ``OUT/<rank>.pkl``.
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from resumable_loader import DataLoader

LENGTH = 48
SEED = 11


class Corrupt(Dataset):
    """Samples (id, an augmentation draw) whose ids in ``bad`` raise, as a corrupt JPEG does.

    ``flaky`` ids raise only while ``flag`` (a file) exists, and remove it: a read that fails
    once. ``reads`` counts the reads of bad ids in this process.
    """

    def __init__(self, bad: set[int], flaky: set[int] = frozenset(), flag: str = "") -> None:
        self.bad, self.flaky, self.flag, self.reads = set(bad), set(flaky), flag, []

    def __len__(self) -> int:
        return LENGTH

    def __getitem__(self, index: int) -> torch.Tensor:
        if index in self.bad:
            self.reads.append(index)
            raise OSError(f"image file is truncated: sample {index}")
        if index in self.flaky and os.path.exists(self.flag):
            os.unlink(self.flag)
            raise ConnectionError(f"read timed out: sample {index}")
        return torch.tensor([index, int(torch.randint(0, 10**6, ()))])


def loader(dataset: Dataset, quarantine: str | None, **kwargs) -> DataLoader:
    """The jobs' and tests' loader: shuffled, substitute mode, up to 20% bad samples."""
    settings = {"shuffle": True, "seed": SEED, "on_sample_error": "substitute"}
    settings.update(max_bad_fraction=0.2, quarantine_dir=quarantine)
    return DataLoader(dataset, **{**settings, **kwargs})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out")
    parser.add_argument("quarantine")
    parser.add_argument("--num-workers", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--bad", required=True)
    parser.add_argument("--save-after", type=int, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        bad = {int(i) for i in args.bad.split(",")}
        data = loader(
            Corrupt(bad), args.quarantine, batch_size=args.batch_size, num_workers=args.num_workers
        )
        batches, saved = [], None
        for batch in data:
            batches.append(batch.tolist())
            if len(batches) == args.save_after:
                saved = data.state_dict(check_ranks=True)
        counts = [torch.tensor(len(batches))] * 1
        dist.all_reduce(counts[0], op=dist.ReduceOp.MAX)  # every rank got here: no one waits
    finally:
        dist.destroy_process_group()
    with open(os.path.join(args.out, f"{data.rank}.pkl"), "wb") as f:
        pickle.dump({"batches": batches, "state": saved, "most": int(counts[0])}, f)


if __name__ == "__main__":
    main()
