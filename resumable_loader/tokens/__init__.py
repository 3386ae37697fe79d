"""Token streams for LLM training: packed fixed-length windows over pre-tokenized shards."""

from __future__ import annotations

from resumable_loader.tokens.collate import collate_windows
from resumable_loader.tokens.dataset import TokenDataset, flatten_cu_seqlens
from resumable_loader.tokens.formats import ShardInfo, TokenShard, open_shard
from resumable_loader.tokens.megatron import MegatronWriter

__all__ = [
    "MegatronWriter",
    "ShardInfo",
    "TokenDataset",
    "TokenShard",
    "collate_windows",
    "flatten_cu_seqlens",
    "open_shard",
]
