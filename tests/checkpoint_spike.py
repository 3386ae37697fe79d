"""Why the whole state: resuming from the weights alone spikes the loss, the Checkpointer does not.

A small network fits a fixed teacher network with AdamW under a warm-up + cosine schedule,
full batch, for 150 steps; at step 100 the run is resumed three ways: not at all (the
continuous run), through the Checkpointer, and from the weights alone (``model.state_dict()``
plus the step count, so the schedule continues at the right learning rate, but a fresh AdamW:
its first updates are lr x sign(gradient) in every coordinate, where the trained optimizer's
second moments, remembering the large early gradients, kept them small).

``python tests/checkpoint_spike.py docs/checkpoint_spike.png`` draws the three loss curves.
"""

from __future__ import annotations

import math
import sys
import tempfile
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from resumable_loader import DataLoader
from resumable_loader.checkpoint import Checkpointer

STEPS, RESUME, WARMUP = 150, 100, 10


def data() -> TensorDataset:
    """128 inputs and the outputs of a fixed random teacher network (a realizable target)."""
    torch.manual_seed(1)
    x = torch.randn(128, 8)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    with torch.no_grad():
        return TensorDataset(x, teacher(x))


def schedule(step: int) -> float:
    """Warm-up for WARMUP steps, then cosine from 1 to 0.1 over the run."""
    cosine = 0.1 + 0.45 * (1 + math.cos(math.pi * min(step, STEPS) / STEPS))
    return min(1.0, (step + 1) / WARMUP) * cosine


def build() -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.0)
    return {
        "model": model,
        "optimizer": optimizer,
        "scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        "loader": DataLoader(data(), batch_size=128, shuffle=True, seed=3),
    }


def train(state: dict[str, Any], steps: int) -> list[float]:
    """``steps`` full-batch steps; the loss of each."""
    losses = []
    while len(losses) < steps:
        for x, y in state["loader"]:
            loss = F.mse_loss(state["model"](x), y)
            state["optimizer"].zero_grad(set_to_none=True)
            loss.backward()
            state["optimizer"].step()
            state["scheduler"].step()
            losses.append(loss.item())
    return losses


def curves() -> dict[str, list[float]]:
    """The loss per step of the continuous run and of the two resumed ones."""
    state = build()
    head = train(state, RESUME)
    with tempfile.TemporaryDirectory() as directory:
        Checkpointer(directory).save(RESUME, state)
        weights = {k: v.clone() for k, v in state["model"].state_dict().items()}
        continuous = head + train(state, STEPS - RESUME)

        resumed = build()
        Checkpointer(directory).load(resumed)
    weights_only = build()
    weights_only["model"].load_state_dict(weights)
    weights_only["loader"].load_state_dict(resumed["loader"].state_dict())
    weights_only["scheduler"].load_state_dict(resumed["scheduler"].state_dict())
    for group, lr in zip(
        weights_only["optimizer"].param_groups, weights_only["scheduler"].get_last_lr(), strict=True
    ):
        group["lr"] = lr  # the step count is known: the schedule goes on where it was
    return {
        "continuous": continuous,
        "Checkpointer": head + train(resumed, STEPS - RESUME),
        "weights alone": head + train(weights_only, STEPS - RESUME),
    }


def plot(path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = curves()
    steps = range(1, STEPS + 1)
    figure, axes = plt.subplots(figsize=(7, 3.6))
    styles = {"continuous": ("k", "-", 3), "Checkpointer": ("tab:green", "--", 1.5)}
    for name, losses in runs.items():
        color, line, width = styles.get(name, ("tab:red", "-", 1.5))
        axes.plot(steps[60:], losses[60:], color=color, linestyle=line, linewidth=width, label=name)
    axes.axvline(RESUME, color="grey", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_xlabel("step (resumed after step 100)")
    axes.set_ylabel("training loss")
    axes.set_title("Resuming from the weights alone vs the whole state")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    plot(sys.argv[1])
