"""HF Accelerate: keep the resumable loader through a run, with its cursor in save_state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from resumable_loader.errors import ConfigError
from resumable_loader.loader import ResumableDataLoader


class DeviceLoader:
    """Iterates a ResumableDataLoader, moving each batch to the Accelerator's device.

    Stands where ``accelerator.prepare(loader)`` would put Accelerate's own DataLoaderShard,
    which rebuilds a plain torch DataLoader from the visible sampler (another order, no cursor).
    ``len``, ``set_epoch``, ``state_dict`` and ``load_state_dict`` are the loader's.

    Args:
        loader: the resumable loader, built with this process's rank and world size.
        device: where batches go (``accelerator.device``).
        non_blocking: passed to the copy (``accelerator.non_blocking``).
    """

    def __init__(self, loader: ResumableDataLoader, device: Any, *, non_blocking: bool = False):
        self.loader = loader
        self.device = device
        self.non_blocking = non_blocking

    def __iter__(self) -> Iterator[Any]:
        from accelerate.utils import send_to_device

        for batch in self.loader:
            yield send_to_device(batch, self.device, non_blocking=self.non_blocking)

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
        ConfigError: not a ResumableDataLoader, or its rank/world size are not the
            Accelerator's process index/number of processes.
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
    accelerator.register_for_checkpointing(loader)
    return DeviceLoader(loader, accelerator.device, non_blocking=accelerator.non_blocking)
