"""resumable_loader: deterministic, resumable data loading for PyTorch.

The order of every epoch is a pure function of (seed, epoch, dataset index) and every sample's
randomness a pure function of (seed, epoch, position), so the loader's cursor is a few numbers
from which any worker count, batch size or world size continues the same stream bit for bit.
"""

from __future__ import annotations

from resumable_loader.atomic import atomic_write
from resumable_loader.errors import (
    ConfigError,
    ResumableLoaderError,
    ResumeWarning,
    SampleIndexError,
    ShardError,
    StateDictError,
    WorkerError,
)
from resumable_loader.index import ShardedIndex
from resumable_loader.loader import ResumableDataLoader
from resumable_loader.order import Permutation, SequentialOrder, ShuffledOrder
from resumable_loader.partition import Partition
from resumable_loader.rng import Purpose, derive_words
from resumable_loader.sample_rng import (
    SampleKey,
    sample_key,
    sample_numpy_generator,
    sample_torch_generator,
)
from resumable_loader.shard_order import ShardLocalOrder, ShardShuffle
from resumable_loader.sources import ParquetDataset, TarShardDataset
from resumable_loader.verify import PipelineError, VerifyReport, verify_pipeline

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
