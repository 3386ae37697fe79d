"""HF Accelerate: keep the resumable loader through a run, with its cursor in save_state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from accelerate.data_loader import DataLoaderStateMixin
from accelerate.state import GradientState
from accelerate.utils import send_to_device
from torch.utils.data import IterableDataset

from resumable_loader.errors import ConfigError
from resumable_loader.loader.dataloader import ResumableDataLoader


class DeviceLoader(DataLoaderStateMixin):
    """Iterates a ResumableDataLoader, moving each batch to the Accelerator's device.

    Stands where ``accelerator.prepare(loader)`` would put Accelerate's own DataLoaderShard,
    which rebuilds a plain torch DataLoader from the visible sampler (another order, no cursor).
    ``len``, ``set_epoch``, ``state_dict`` and ``load_state_dict`` are the loader's.

    Like DataLoaderShard, it tells Accelerate's ``GradientState`` where an iteration ends (the
    ``DataLoaderStateMixin`` protocol: ``begin()``, ``end_of_dataloader``, ``remainder``,
    ``end()``), so ``accelerator.accumulate()`` syncs gradients and steps at an epoch's last
    batch however many batches it has, and ``gather_for_metrics`` drops the padding of the
    last global batch. DataLoaderShard fetches a batch ahead to know the end; this needs no
    look-ahead (the loader knows a batch is its iteration's last as it hands it out), so the
    cursor never runs ahead of the batches the training loop received.

    Args:
        loader: the resumable loader (over a map-style dataset), built with this process's
            rank and world size.
        device: where batches go (``accelerator.device``).
        non_blocking: passed to the copy (``accelerator.non_blocking``).

    Raises:
        ConfigError: the loader iterates an IterableDataset, which has no cursor.
    """

    def __init__(self, loader: ResumableDataLoader, device: Any, *, non_blocking: bool = False):
        if isinstance(loader.dataset, IterableDataset):
            raise ConfigError(
                f"DeviceLoader needs a loader over a map-style dataset, got "
                f"{type(loader.dataset).__name__}, an IterableDataset: its order lives in its "
                "own __iter__, so no cursor resumes it; use a map-style Dataset (for shards: "
                "resumable_loader.TarShardDataset or ParquetDataset), or accelerator.prepare()"
            )
        self.loader = loader
        self.device = device
        self.non_blocking = non_blocking
        self.gradient_state = GradientState()  # the mixin's contract: a shared singleton

    def __getattr__(self, name: str) -> Any:
        # Only for attributes it lacks. ``dataset`` is what accelerate's skip_first_batches
        # reads first, to rebuild a plain DataLoader: say why there is none to skip.
        if name == "dataset":
            raise AttributeError(
                "DeviceLoader has no 'dataset' for accelerator.skip_first_batches to rebuild a "
                "plain DataLoader from: accelerator.load_state() already put this loader where "
                "the checkpoint was, so skip nothing and iterate it (docs/integrations.md, "
                "Accelerate)"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __iter__(self) -> Iterator[Any]:
        # Now the active loader of GradientState. (begin() leaves remainder at -1 here: its
        # guess reads DataLoaderShard's fields; ours is set at the last batch.)
        self.begin()
        try:
            batches = iter(self.loader)
            for batch in batches:
                advance, last = batches.latest
                if last:
                    self.end_of_dataloader = True
                    self.remainder = self._remainder(advance)
                yield send_to_device(batch, self.device, non_blocking=self.non_blocking)
        finally:  # also when the loop breaks out: an abandoned loader is no longer active
            self.end()

    def _remainder(self, last_advance: int) -> int:
        """What ``gather_for_metrics`` keeps of the gathered last batch: its real samples (the
        padding comes after them), 0 for a full batch; -1 (unknown) for a sampler each rank
        iterates itself. Known at the last batch only, as in DataLoaderDispatcher."""
        partition = self.loader.partition
        if partition is None:
            return -1
        return last_advance % partition.global_batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loader.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"DeviceLoader(loader={self.loader!r}, device={self.device!r})"


def prepare_loader(accelerator: Any, loader: ResumableDataLoader) -> DeviceLoader:
    """The supported way through Accelerate: instead of ``accelerator.prepare(loader)``.

    Checks that the loader splits the data over the Accelerator's processes (build it after
    ``Accelerator()``, whose process group gives it rank and world size), registers it for
    checkpointing, so ``accelerator.save_state`` stores its cursor and ``load_state`` restores
    it (at any number of processes, batch size or num_workers), and returns a
    :class:`DeviceLoader` that places batches on ``accelerator.device``.

    Raises:
        ConfigError: not a ResumableDataLoader, one over an IterableDataset, or its rank/world
            size are not the Accelerator's process index/number of processes.
    """
    if not isinstance(loader, ResumableDataLoader):
        raise ConfigError(
            f"prepare_loader() takes a ResumableDataLoader, got {type(loader).__name__}; "
            "pass other loaders to accelerator.prepare()"
        )
    expected = (accelerator.process_index, accelerator.num_processes)
    if (loader.rank, loader.world_size) != expected:
        raise ConfigError(
            f"the loader has rank={loader.rank}, world_size={loader.world_size} but the "
            f"Accelerator is process {expected[0]} of {expected[1]}: build the loader after "
            "Accelerator() (its process group then gives the rank and world size), or pass "
            f"rank={expected[0]}, world_size={expected[1]}"
        )
    batches = DeviceLoader(loader, accelerator.device, non_blocking=accelerator.non_blocking)
    accelerator.register_for_checkpointing(loader)
    return batches
