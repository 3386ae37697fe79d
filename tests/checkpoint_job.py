"""One training run of the checkpoint tests, in a process of its own (plain or under torchrun).

A tiny model with dropout, AdamW, a warm-up + cosine schedule, a CPU GradScaler and an EMA
trains on a resumable loader and saves through the Checkpointer every ``--save-every`` steps.
Launched as ``python checkpoint_job.py CHECKPOINT OUT --steps N ...``; each rank appends one
JSON line per step to ``OUT/rank-R.jsonl`` (the loss as float.hex, the samples it trained on),
flushed at once, so what a killed run did is on disk. ``--kill-after S`` SIGKILLs the process
after step S; ``--kill-in-save S:K`` SIGKILLs it at the K-th fsync of the save of step S (so
somewhere inside DCP's writes, the manifest, the rename or the pointer). ``--resume MODE``
loads the newest checkpoint first and writes the decision as the first line. ``--probe``
records the resume probe at every save and, after a resume, recomputes it before training
on (its report, and whether the weights, optimizer, EMA, cursor and generators are as they
were, in the second line). The last line
holds a digest of the final weights, optimizer and EMA.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import Dataset

from resumable_loader import DataLoader, sample_key
from resumable_loader.checkpoint import Checkpointer

FEATURES = 4
LENGTH = 36
SCHEDULE = 40  # steps of the warm-up + cosine schedule


def example(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``index``'s features and target, before augmentation."""
    x = torch.randn(FEATURES, generator=torch.Generator().manual_seed(index))
    return x, x.sum(0, keepdim=True).sin()


class Regression(Dataset):
    """Fixed features and targets per id, plus augmentation noise from torch's global RNG."""

    def __init__(self, length: int = LENGTH) -> None:
        self.length = length
        self.fingerprint = f"regression-{FEATURES}"  # the samples' identity, for the cursor

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        x, y = example(index)
        key = sample_key()
        noisy = x + 0.1 * torch.randn(FEATURES)  # an augmentation: replayed per sample key
        return {"id": index, "epoch": key.epoch, "pos": key.position, "x": noisy, "y": y}


def build(
    batch_size: int,
    num_workers: int,
    *,
    hidden: int = 16,
    depth: int = 1,
    length: int = LENGTH,
    seed: int = 7,
    fsdp: bool = False,
) -> dict[str, Any]:
    """The whole training state, freshly initialised (the same on every run and rank).

    ``hidden``, ``depth``, ``length`` and ``seed`` change the architecture, the dataset and
    the order, for the tests of what a load refuses. ``fsdp``: the model and the EMA are
    sharded with FSDP2's ``fully_shard`` (per Linear layer, then whole) before the optimizer is
    made, under a process group.
    """
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Dropout(0.2)]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(hidden, 1))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    if fsdp:
        for module in (model, ema.module):
            for layer in module:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(module)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    warmup = 4
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=SCHEDULE - warmup),
        ],
        milestones=[warmup],
    )
    scaler = torch.amp.GradScaler("cpu", growth_interval=3)
    # torch's DataLoader draws its workers' base seed at every iter() from ``generator``, by
    # default the global generator dropout draws from; a resume mid-epoch calls iter() where
    # the continuous run did not, so give that draw a generator of its own.
    loader = DataLoader(
        Regression(length),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        seed=seed,
    )
    return {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": scaler,
        "ema": ema,
        "loader": loader,
    }


def batches(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """The loader's batches across epochs (the next epoch starts when one ends)."""
    while True:
        yield from loader


def train_step(state: dict[str, Any], trained: nn.Module, batch: dict[str, Any]) -> float:
    """One optimizer step of ``trained`` (the model, or its DDP wrapper); the loss."""
    optimizer, scaler = state["optimizer"], state["scaler"]
    trained.train()
    loss = F.mse_loss(trained(batch["x"]), batch["y"])
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    state["scheduler"].step()
    state["ema"].update_parameters(state["model"])
    return loss.item()


def entries(batch: dict[str, Any]) -> list[list[int | str]]:
    """(epoch, position, sample id, digest of the augmented input) per sample of ``batch``."""
    return [
        [int(e), int(p), int(i), hashlib.blake2b(x.numpy().tobytes()).hexdigest()[:16]]
        for e, p, i, x in zip(batch["epoch"], batch["pos"], batch["id"], batch["x"], strict=True)
    ]


def digest(state: dict[str, Any]) -> str:
    """A hash of the whole weights, optimizer moments and EMA, however they are sharded.

    Through DCP's full state dicts (a collective under FSDP: call it on every rank), keyed by
    the canonical names, so a sharded and a plain copy of the same state hash the same.
    """
    full = StateDictOptions(full_state_dict=True)
    model, optimizer = state["model"], state["optimizer"]
    weights = get_model_state_dict(model, options=full)
    moments = get_optimizer_state_dict(model, optimizer, options=full)["state"]
    ema = get_model_state_dict(state["ema"], options=full)
    tensors = [weights[k] for k in sorted(weights)] + [ema[k] for k in sorted(ema)]
    for name in sorted(moments):
        tensors += [moments[name][k] for k in sorted(moments[name])]
    h = hashlib.blake2b(digest_size=8)
    for tensor in tensors:
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def probe_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The resume probe's loss: the training loss of ``batch``."""
    return F.mse_loss(model(batch["x"]), batch["y"])


def untouched(state: dict[str, Any]) -> tuple[str, Any, bytes]:
    """What the probe must not change: the training state's digest, the loader's cursor and
    torch's global generator (the one dropout and the augmentation draw from)."""
    return digest(state), state["loader"].state_dict(), torch.get_rng_state().numpy().tobytes()


def kill_at_fsync(count: int) -> None:
    """SIGKILL this process at its ``count``-th os.fsync from now on."""
    real, calls = os.fsync, [0]

    def fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] == count:
            os.kill(os.getpid(), signal.SIGKILL)
        real(fd)

    os.fsync = fsync


def main(argv: Sequence[str] | None = None) -> None:
    """Run (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--save-every", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--kill-after", type=int)
    parser.add_argument("--kill-in-save", help="STEP:K, SIGKILL at the K-th fsync of that save")
    parser.add_argument("--resume", choices=["strict", "flexible"])
    parser.add_argument("--async-save", action="store_true")
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 instead of DDP (torchrun)")
    parser.add_argument("--probe", action="store_true", help="record and check the probe")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    try:
        run(args, distributed)
    finally:
        if distributed:
            dist.destroy_process_group()
    # Every record is written and flushed: leave without the interpreter's teardown. With FSDP2
    # on gloo (torch 2.13, CPU) about 1 launch in 10 aborted there ("terminate called without
    # an active exception", a C++ thread of torch's, no Python thread left) after both ranks had
    # logged their final digest; the tests judge the records, not torch's exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run(args: argparse.Namespace, distributed: bool) -> None:
    state = build(args.batch_size, args.num_workers, fsdp=args.fsdp)
    ddp = distributed and not args.fsdp
    trained = nn.parallel.DistributedDataParallel(state["model"]) if ddp else None
    loader = state["loader"]
    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, f"rank-{loader.rank}.jsonl"), "a")  # noqa: SIM115

    def emit(record: dict[str, Any]) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()

    checkpointer = Checkpointer(args.checkpoint, keep_last=2, async_save=args.async_save)
    start = 0
    if args.resume:
        decision = checkpointer.load(state, mode=args.resume)
        emit({"decision": decision, "loaded": digest(state)})
        start = decision["step"]
        if args.probe:
            before = untouched(state)
            report = checkpointer.probe(state["model"], probe_loss)
            emit({"probe": report, "unchanged": untouched(state) == before})
    kill_save = tuple(map(int, args.kill_in_save.split(":"))) if args.kill_in_save else None
    stream = batches(loader)
    for step in range(start, args.steps):
        batch = next(stream)
        loss = train_step(state, trained or state["model"], batch)
        assert math.isfinite(loss)
        emit({"step": step + 1, "loss": loss.hex(), "entries": entries(batch)})
        if args.kill_after == step + 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if (step + 1) % args.save_every == 0:
            if kill_save is not None and kill_save[0] == step + 1:
                kill_at_fsync(kill_save[1])
            checkpointer.save(step + 1, state, probe=probe_loss if args.probe else None)
            emit({"saved": step + 1, "digest": digest(state)})
    checkpointer.wait()
    emit({"final": digest(state)})
    log.close()


if __name__ == "__main__":
    main()
