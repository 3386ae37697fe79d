"""The whole training state as one checkpoint on torch.distributed.checkpoint (see Checkpointer)."""

from __future__ import annotations

from resumable_loader.checkpoint.checkpointer import Checkpointer

__all__ = ["Checkpointer"]
