"""Token streams for LLM training: fixed-length windows over pre-tokenized shards, or their
whole documents as samples to pack."""

from __future__ import annotations

from resumable_loader.tokens.collate import collate_windows
from resumable_loader.tokens.dataset import TokenDataset, flatten_cu_seqlens
from resumable_loader.tokens.documents import TokenDocuments
from resumable_loader.tokens.formats import ShardInfo, TokenShard, open_shard
from resumable_loader.tokens.megatron import MegatronWriter

__all__ = [
    "MegatronWriter",
    "ShardInfo",
    "TokenDataset",
    "TokenDocuments",
    "TokenShard",
    "collate_windows",
    "flatten_cu_seqlens",
    "open_shard",
]
