"""resumable_loader: deterministic, resumable data loading for PyTorch.

The order of every epoch is a pure function of (seed, epoch, dataset index) and every sample's
randomness a pure function of (seed, epoch, position), so the loader's cursor is a few numbers
from which any worker count, batch size or world size continues the same stream bit for bit.
"""

from __future__ import annotations

from resumable_loader.errors import (
    ConfigError,
    PipelineError,
    ResumableLoaderError,
    ResumeWarning,
    SampleIndexError,
    ShardError,
    StateDictError,
    WorkerError,
)
from resumable_loader.index.atomic import atomic_write
from resumable_loader.index.sharded import ShardedIndex
from resumable_loader.loader import ResumableDataLoader
from resumable_loader.order.partition import Partition
from resumable_loader.order.permutation import Permutation, SequentialOrder, ShuffledOrder
from resumable_loader.order.philox import Purpose, derive_words
from resumable_loader.order.shard_local import ShardLocalOrder, ShardShuffle
from resumable_loader.rngs.sample import (
    SampleKey,
    sample_key,
    sample_numpy_generator,
    sample_torch_generator,
)
from resumable_loader.sources import ParquetDataset, TarShardDataset
from resumable_loader.verify import VerifyReport, verify_pipeline

DataLoader = ResumableDataLoader

__all__ = [
    "ConfigError",
    "DataLoader",
    "ParquetDataset",
    "Partition",
    "Permutation",
    "PipelineError",
    "Purpose",
    "ResumableDataLoader",
    "ResumableLoaderError",
    "ResumeWarning",
    "SampleIndexError",
    "SampleKey",
    "SequentialOrder",
    "ShardError",
    "ShardLocalOrder",
    "ShardShuffle",
    "ShardedIndex",
    "ShuffledOrder",
    "StateDictError",
    "TarShardDataset",
    "VerifyReport",
    "WorkerError",
    "atomic_write",
    "derive_words",
    "sample_key",
    "sample_numpy_generator",
    "sample_torch_generator",
    "verify_pipeline",
]
assert __all__ == sorted(__all__), "keep __all__ sorted"
