"""Packing variable-length samples, and token-budget batches, as pure functions of the order."""

from resumable_loader.packing.collate import (
    collate_budget,
    collate_flattening,
    collate_padded,
    collate_varlen,
)
from resumable_loader.packing.packed import Packed

__all__ = ["Packed", "collate_budget", "collate_flattening", "collate_padded", "collate_varlen"]
