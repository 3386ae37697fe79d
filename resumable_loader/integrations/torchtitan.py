"""torchtitan: its dataloader interface over a ResumableDataLoader of token windows.

torchtitan builds its dataloader from config, ``config.dataloader.build(dp_world_size=,
dp_rank=, tokenizer=, seq_len=, local_batch_size=, ...)``, iterates ``(input_dict, labels)``
pairs and checkpoints its ``state_dict()`` through its CheckpointManager (DCP). Its own
``ParallelAwareDataloader`` stores one state per data-parallel rank and refuses another
data-parallel degree ("dataloader resharding is not supported yet"); the cursor of
:class:`TitanDataLoader` is one small dict, the same on every rank, so a checkpoint loads on
any data-parallel degree, batch size or number of workers. Tensor, context and pipeline
peers get the same data-parallel coordinates from torchtitan, so they load identical batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torchtitan.components.dataloader import BaseDataLoader

from resumable_loader.errors import ConfigError
from resumable_loader.loader.dataloader import ResumableDataLoader
from resumable_loader.tokens import TokenDataset


class TitanDataLoader(BaseDataLoader):
    """Token windows of pre-tokenized shards, shuffled, in torchtitan's batch format.

    Each batch is ``({"input": input_ids, "positions": position_ids}, labels)`` (int64,
    ``local_batch_size`` x ``seq_len``), as torchtitan's text datasets yield them. Iteration
    runs epoch after epoch until the trainer stops (``training.steps``), the next epoch in a new
    order. Select it with
    ``config.dataloader = TitanDataLoader.Config(dataset_path=..., seed=...)``.
    """

    @dataclass(kw_only=True, slots=True)
    class Config(BaseDataLoader.Config):
        seed: int = 0
        """The order's seed: the same on every rank, recorded in the checkpoint."""

        documents: str = "concat"
        """"concat" (the token stream as stored) or "shuffle" (documents shuffled per epoch)."""

        num_workers: int = 0
        """Worker processes; may change from one run to the next."""

        persistent_workers: bool = False
        pin_memory: bool = False

    def __init__(
        self,
        config: Config,
        *,
        dp_world_size: int,
        dp_rank: int,
        seq_len: int,
        local_batch_size: int,
        tokenizer: Any = None,
        snapshot_every_n_steps: int | None = None,
    ) -> None:
        # tokenizer: the shards are tokenized already. snapshot_every_n_steps: torchtitan's
        # loader snapshots its workers' state that often; this cursor is exact at every step.
        if not config.dataset_path:
            raise ConfigError(
                "TitanDataLoader.Config.dataset_path must name the token shards (a path, glob "
                "or brace pattern; see resumable_loader.tokens), got an empty value"
            )
        self.config = config
        dataset = TokenDataset(
            config.dataset_path,
            seq_len,
            documents=config.documents,
            outputs=("input_ids", "labels", "position_ids"),
        )
        self.loader = ResumableDataLoader(
            dataset,
            batch_size=local_batch_size,
            shuffle=True,
            num_workers=config.num_workers,
            persistent_workers=config.persistent_workers and config.num_workers > 0,
            pin_memory=config.pin_memory,
            drop_last=True,  # every step the same shape on every rank
            seed=config.seed,
            rank=dp_rank,
            world_size=dp_world_size,
        )
        if len(self.loader) == 0:
            raise ConfigError(
                f"{dataset.num_windows} windows of seq_len={seq_len} make no batch of "
                f"local_batch_size={local_batch_size} on each of {dp_world_size} data-parallel "
                "ranks: use more data, a smaller seq_len or a smaller batch"
            )

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        while True:  # epoch after epoch; each full epoch holds a batch (checked at __init__)
            for batch in self.loader:
                inputs = {"input": batch["input_ids"], "positions": batch["position_ids"]}
                yield inputs, batch["labels"]

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:  # torchtitan loads an empty state when a checkpoint has none
            self.loader.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"TitanDataLoader(config={self.config!r}, loader={self.loader!r})"
