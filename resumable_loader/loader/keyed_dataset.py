"""A dataset view that reads sample i of epoch e under the key (seed, e, i), whoever reads it.

For loaders that are not ours (the plain transformers ``Trainer`` builds its own): each read
installs the sample's key first, so the global RNGs are reseeded from it and
``sample_numpy_generator()`` / ``sample_torch_generator()`` work inside ``__getitem__``. The key
depends on the sample id and the epoch alone, not on the position in the order, so a sample's
augmentations are the same whichever loader, worker, batch size or resume reads it; the epoch
comes from ``set_epoch``, which the reader must call before each epoch (for the Trainer,
``integrations.transformers.DatasetEpochCallback``). In the main process the global RNG states
are put back after each read, so the training loop's randomness is not perturbed.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset, get_worker_info

from resumable_loader.order.philox import Purpose, check_epoch, check_seed
from resumable_loader.rngs.process import this_process
from resumable_loader.rngs.sample import clear_key, install_key


class KeyedDataset(Dataset):
    """``dataset`` read under per-sample keys (see the module docstring).

    Args:
        dataset: a map-style dataset.
        seed: the keys' seed, 0 <= seed < 2**64.
        reseed_globals: reseed ``random``, numpy's and torch's global RNGs per sample.
    """

    def __init__(self, dataset: Dataset, *, seed: int, reseed_globals: bool = True) -> None:
        self.dataset = dataset
        self.seed = check_seed(seed)
        self.reseed_globals = reseed_globals
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the reads that follow (the key's second part)."""
        self.epoch = check_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        rngs = this_process() if get_worker_info() is None and self.reseed_globals else None
        saved = rngs.save() if rngs is not None else None
        try:
            key = (self.seed, self.epoch, int(index), Purpose.SAMPLE)
            install_key(*key, reseed_globals=self.reseed_globals)
            return self.dataset[index]
        finally:
            clear_key()
            if rngs is not None:
                rngs.restore(saved)

    def __repr__(self) -> str:
        return f"KeyedDataset({self.dataset!r}, seed={self.seed}, epoch={self.epoch})"
