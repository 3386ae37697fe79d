"""resumable_loader: deterministic, resumable data loading for PyTorch.

The order of every epoch is a pure function of (seed, epoch, dataset index) and every sample's
randomness a pure function of (seed, epoch, position), so the loader's cursor is a few numbers
from which any worker count, batch size or world size continues the same stream bit for bit.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from resumable_loader.errors import (
    CheckpointError,
    ConfigError,
    NotResumableError,
    PipelineError,
    ResumableLoaderError,
    ResumeWarning,
    SampleIndexError,
    ShardError,
    StateDictError,
    TopologyWarning,
    WorkerError,
)
from resumable_loader.index.sharded import ShardedIndex
from resumable_loader.loader.cursor import Cursor
from resumable_loader.loader.dataloader import ResumableDataLoader
from resumable_loader.loader.identity import dataset_fingerprint
from resumable_loader.loader.keyed_fetch import batch_sample_keys
from resumable_loader.mixture import EpochKeyedDataset, Mixture, MixtureSource
from resumable_loader.order.shard_local import ShardShuffle
from resumable_loader.packing.packed import Packed
from resumable_loader.rngs.sample import (
    SampleKey,
    sample_key,
    sample_numpy_generator,
    sample_torch_generator,
)
from resumable_loader.sources import ParquetDataset, TarShardDataset
from resumable_loader.storage.reader import Prefetch
from resumable_loader.tokens import TokenDataset, TokenDocuments
from resumable_loader.verify import VerifyReport, verify_pipeline

try:
    __version__ = version("resumable-loader")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

DataLoader = ResumableDataLoader

if TYPE_CHECKING:
    from resumable_loader.checkpoint import Checkpointer


def __getattr__(name: str) -> Any:
    """``Checkpointer``, imported when first asked for: it needs torch.distributed.checkpoint,
    ~0.65 s of a process's start (a third of ``import resumable_loader``), which a loader, a
    DataLoader worker started by spawn or a CLI command reading data does not use."""
    if name == "Checkpointer":
        from resumable_loader.checkpoint import Checkpointer

        return Checkpointer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "Checkpointer",
    "ConfigError",
    "Cursor",
    "DataLoader",
    "EpochKeyedDataset",
    "Mixture",
    "MixtureSource",
    "NotResumableError",
    "Packed",
    "ParquetDataset",
    "PipelineError",
    "Prefetch",
    "ResumableDataLoader",
    "ResumableLoaderError",
    "ResumeWarning",
    "SampleIndexError",
    "SampleKey",
    "ShardError",
    "ShardShuffle",
    "ShardedIndex",
    "StateDictError",
    "TarShardDataset",
    "TokenDataset",
    "TokenDocuments",
    "TopologyWarning",
    "VerifyReport",
    "WorkerError",
    "__version__",
    "batch_sample_keys",
    "dataset_fingerprint",
    "sample_key",
    "sample_numpy_generator",
    "sample_torch_generator",
    "verify_pipeline",
]
assert __all__ == sorted(__all__), "keep __all__ sorted"
