"""Lightning: a callback that saves every rank's RNG states in Lightning's checkpoint.

Lightning's checkpoint restores the weights, the optimizer and (through the loader's
``state_dict``) our cursor, but not the generators the training loop draws from: dropout,
random masking and noise in ``training_step`` read torch's (and numpy's, Python's) global
generators, so a resumed run draws other masks than the uninterrupted one. With
:class:`RNGStateCallback` in ``Trainer(callbacks=[...])`` each checkpoint also holds every
rank's states (Python's ``random``, numpy's global generator, torch's CPU generator and every
CUDA device's), and a resumed fit puts this rank's back just before its first training step.
On another world size a saved rank's states have no meaningful owner: each rank's generators
are then re-derived from (seed, step, rank) instead, as the Checkpointer's flexible mode does.
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist
from lightning.pytorch import Callback

from resumable_loader.checkpoint import rng_state

KEY = "resumable_loader_rng"  # the checkpoint entry: one state per rank, in rank order


class RNGStateCallback(Callback):
    """Saves every rank's RNG states in each Lightning checkpoint; restores them on resume.

    Args:
        seed: the seed of the re-derived states when the world size changed (default:
            ``PL_GLOBAL_SEED``, which ``seed_everything`` sets, else 0).
    """

    def __init__(self, *, seed: int | None = None) -> None:
        self.seed = seed
        self._loaded: list[dict[str, Any]] | None = None

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
        """Gather every rank's states into ``checkpoint[KEY]`` (a collective under DDP: Lightning
        calls this hook on every rank)."""
        state = rng_state.capture(
            rank=trainer.global_rank, world_size=trainer.world_size, step=trainer.global_step
        )
        states = [state]
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
        checkpoint[KEY] = states

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
        """Keep the saved states until training starts (Lightning restores the checkpoint
        before it sets up the loop)."""
        self._loaded = checkpoint.get(KEY)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Put this rank's saved states back, or re-derive them on another world size."""
        states, self._loaded = self._loaded, None
        if states is None:
            return
        if len(states) == trainer.world_size:
            rng_state.restore(states[trainer.global_rank])
            return
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        rng_state.rederive(seed=seed, step=trainer.global_step, rank=trainer.global_rank)

    def __repr__(self) -> str:
        return f"RNGStateCallback(seed={self.seed})"
