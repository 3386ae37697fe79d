"""One rank of tests/test_integrations_torchtitan.py's torchrun jobs: torchtitan's own pieces.

Run as ``python -m torch.distributed.run --standalone --nproc-per-node=W torchtitan_job.py
SHARDS OUT --batch-size B --steps S [--save-at K] [--load-step K] [--kill-at K]``. Each rank
builds a TitanDataLoader through torchtitan's config convention (``Config(...).build(
dp_world_size=, dp_rank=, ...)``), a tiny model with torchtitan's optimizer and LR-scheduler
containers, and torchtitan's CheckpointManager (DCP) over them; it trains S data-parallel steps
(gradients averaged over the ranks), saving at step K, or first loads step K. It writes every
batch's token windows and every step's global mean loss to ``OUT/<rank>.pkl``; with
``--kill-at K`` it writes them after step K and SIGKILLs itself, as a failed node would end.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.optimizer import default_adamw
from torchtitan.components.optimizer.lr_scheduler import LRSchedulersContainer

from resumable_loader.integrations.torchtitan import TitanDataLoader

SEQ_LEN = 8
VOCAB = 50
TRAINING_STEPS = 6  # the LR schedule's length: a resumed run must continue the same schedule


def main(argv: Sequence[str] | None = None) -> None:
    """Run this rank's part of the job and write its result (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shards")
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--save-at", type=int)
    parser.add_argument("--load-step", type=int)
    parser.add_argument("--kill-at", type=int)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dist.init_process_group("gloo")
    try:
        rank, world_size = dist.get_rank(), dist.get_world_size()
        dataloader = TitanDataLoader.Config(dataset_path=args.shards, seed=5).build(
            dp_world_size=world_size,
            dp_rank=rank,
            tokenizer=None,
            seq_len=SEQ_LEN,
            local_batch_size=args.batch_size,
        )
        model = torch.nn.Embedding(VOCAB, 1)
        optimizers = default_adamw(lr=1e-2).build(model_parts=[model])
        schedulers = LRSchedulersContainer.Config(warmup_steps=1).build(
            optimizers=optimizers,
            training_steps=TRAINING_STEPS,  # the whole run's, resumed or not
        )
        interval = args.save_at or 10**6  # torchtitan saves at multiples of its interval
        checkpointer = CheckpointManager.Config(
            enable=True, folder="checkpoint", interval=interval
        ).build(
            dataloader=dataloader,
            model_parts=[model],
            optimizers=optimizers,
            lr_schedulers=schedulers,
            states={},
            sd_adapter=None,
            base_folder=args.out,
        )
        if args.load_step is not None:
            assert checkpointer.load(step=args.load_step)
        result = {"windows": [], "losses": []}
        batches = iter(dataloader)
        for step in range(1, args.steps + 1):
            inputs, labels = next(batches)
            assert torch.equal(inputs["input"][:, 1:], labels[:, :-1])
            result["windows"].append(inputs["input"].tolist())
            loss = model(inputs["input"]).mean()
            loss.backward()
            for value in [loss.detach(), *(p.grad for p in model.parameters())]:
                dist.all_reduce(value)  # data parallel: the mean over the ranks' equal batches
                value /= world_size
            result["losses"].append(loss.item())
            optimizers.step()
            optimizers.zero_grad()
            schedulers.step()
            checkpointer.save(curr_step=step)  # a no-op but at the interval
            if step == args.kill_at:
                write(result, args.out, rank)
                os.kill(os.getpid(), signal.SIGKILL)
        checkpointer.close()
    finally:
        dist.destroy_process_group()
    write(result, args.out, rank)


def write(result: dict[str, list], out: str, rank: int) -> None:
    with open(os.path.join(out, f"{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    main()
