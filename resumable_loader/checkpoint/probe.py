"""The resume probe: one small fixed batch's loss and gradients, at save and after a load.

A resume can pass every check and still not be the run that was saved (a moment loaded into
the wrong parameter by a custom ``load_state_dict``, weights damaged where the checksums were
told to trust them, another numerics setting). The probe shows it before hours of compute are
spent: at save, the loss of a fixed batch (the first ``samples`` positions of epoch 0 in the
loader's own order, each loaded under its own sample key, so its augmentations are fixed too),
an xxHash of its gradients and, when an optimizer trains the model, an xxHash of the weights
after one step of that optimizer on those gradients (taken on a deep copy of the model and
optimizer: this is what a damaged moment changes) are recorded in the manifest with the sample
ids; after the load, the same computation must give the same bits (strict mode) or the same
loss and gradient norm within :data:`RELATIVE_TOLERANCE` (flexible mode: another layout may
sum in another order). Neither computation changes anything: the model runs in eval mode, the
gradients are taken with ``torch.autograd.grad`` (``.grad`` untouched), the step is taken on
the copies, and the global RNG states are put back afterwards; the loader is not iterated.
Under ``on_sample_error="substitute"`` the batch is loaded as the stream loads those positions,
through a copy of the loader's bad-sample policy (``BadSamples.for_probe``): a quarantined or
failing sample is replaced by the substitute the stream has there, and nothing is logged,
quarantined or counted towards ``max_bad_fraction`` (a failure only the probe met is recorded
by the run when it meets it), so probing changes neither the stream nor where the run stops.
The copy needs the memory of the model and optimizer once more; pass the model as the state
holds it (a DDP model itself: the gradients are taken with ``torch.autograd.grad``, which runs
no DDP hook; FSDP-sharded models are not probed).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from resumable_loader.checkpoint import integrity, rng_state
from resumable_loader.checkpoint.components import LOADER, MODEL, OPTIMIZER, Component
from resumable_loader.errors import CheckpointError, ConfigError
from resumable_loader.loader.keyed_fetch import BatchRef, KeyedFetch

# flexible mode: |now - saved| <= this x |saved| for the loss, the gradient norm and the loss
# after one optimizer step (the digests are compared only in strict mode)
RELATIVE_TOLERANCE = 1e-4
LossFn = Callable[[nn.Module, Any], torch.Tensor]


def sample_ids(loader: Any, samples: int) -> list[int]:
    """The probe batch's sample ids: the first ``samples`` positions of epoch 0."""
    count = min(samples, len(loader.dataset))
    order = loader.order
    if order is None:
        return list(range(count))
    return [int(i) for i in order.ids(0, 0, count)]


def measure(
    model: nn.Module,
    loss_fn: LossFn,
    loader: Any,
    ids: list[int],
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """The probe's loss (as float.hex), gradient norm and digests on batch ``ids``."""
    saved_rng = rng_state.capture(rank=0, world_size=1, step=0)
    training = model.training
    try:
        fetch = KeyedFetch(loader.dataset, loader.collate_fn, reseed_globals=True)
        policy = loader.bad_samples  # substitutes as the stream's, recording nothing
        fetch.bad_samples = None if policy is None else policy.for_probe()
        batch = fetch(BatchRef(seed=loader.seed, epoch=0, start=0, ids=ids))
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        loss = loss_fn(model, batch)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        stepped = None if optimizer is None else _one_step(model, optimizer, grads, loss_fn, batch)
    finally:
        model.train(training)
        rng_state.restore(saved_rng)
    squares = sum(float(g.detach().double().square().sum()) for g in grads if g is not None)
    result = {
        "loss": float(loss.detach()).hex(),
        "grad_norm": math.sqrt(squares).hex(),
        "grad_digest": _digest(grads),
    }
    if stepped is not None:
        result["step_loss"], result["step_digest"] = stepped
    return result


def _digest(tensors: Any) -> str:
    hasher = integrity.new_hasher()
    for tensor in tensors:
        if tensor is not None:
            flat = tensor.detach().contiguous().cpu()
            hasher.update(flat.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def _one_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, grads: Any, loss_fn: LossFn, batch: Any
) -> tuple[str, str]:
    """(the probe loss after, the digest of the weights after) one step of a copy of
    ``optimizer`` on a copy of ``model`` with ``grads`` (deep-copied together, so the copy
    steps the copy)."""
    model_copy, optimizer_copy = copy.deepcopy((model, optimizer))
    params = [p for p in model_copy.parameters() if p.requires_grad]
    for param, grad in zip(params, grads, strict=True):
        param.grad = None if grad is None else grad.detach().clone()
    optimizer_copy.step()
    with torch.no_grad():
        after = float(loss_fn(model_copy, batch)).hex()
    return after, _digest(model_copy.parameters())


def record(found: dict[str, Component], loss_fn: LossFn, samples: int) -> dict[str, Any]:
    """The manifest's ``probe`` entry for the state ``found``: which loader and model, which
    batch (the first ``samples`` positions of the loader's epoch 0), what it gave."""
    model_name = _probed_model(found)
    loaders = [name for name, c in found.items() if c.kind == LOADER]
    if len(loaders) != 1:
        raise ConfigError(
            f"probe: the state has {len(loaders)} loaders ({loaders}); the probe batch is "
            "taken from the one loader's dataset, so pass exactly one"
        )
    loader, model = found[loaders[0]].obj, found[model_name].obj
    ids = sample_ids(loader, samples)
    measured = measure(model, loss_fn, loader, ids, _optimizer_of(found, model))
    return {"loader": loaders[0], "model": model_name, "ids": ids, **measured}


def check(
    saved: dict[str, Any],
    found: dict[str, Component],
    model: nn.Module,
    loss_fn: LossFn,
    *,
    exact: bool,
) -> dict[str, Any]:
    """Recompute the probe the manifest ``saved`` recorded, on ``model``; the report (see
    :func:`compare`); CheckpointError if there is none or it does not match."""
    recorded = saved.get("probe")
    if recorded is None:
        raise CheckpointError(
            "probe: the loaded checkpoint recorded no probe; pass save(..., probe=loss_fn) "
            "to record one"
        )
    loader = found[recorded["loader"]].obj
    now = measure(model, loss_fn, loader, recorded["ids"], _optimizer_of(found, model))
    return compare(recorded, now, exact=exact)


def _probed_model(found: dict[str, Component]) -> str:
    """The model the probe runs: the one an optimizer trains, else the only model."""
    owners = {c.stateful.model for c in found.values() if c.kind == OPTIMIZER}
    names = [n for n, c in found.items() if c.kind == MODEL and (c.obj in owners or not owners)]
    if len(names) != 1:
        raise ConfigError(
            f"probe: {len(names)} candidate models ({names}); the probe runs the model an "
            "optimizer trains, or the state's only model"
        )
    return names[0]


def _optimizer_of(found: dict[str, Component], model: nn.Module) -> torch.optim.Optimizer | None:
    """The optimizer of the state that trains ``model``, if one does."""
    trains = [c.obj for c in found.values() if c.kind == OPTIMIZER and c.stateful.model is model]
    return trains[0] if trains else None


def compare(saved: dict[str, Any], now: dict[str, Any], *, exact: bool) -> dict[str, Any]:
    """The probe report; CheckpointError naming both values when it does not match."""
    loss = float.fromhex(saved["loss"]), float.fromhex(now["loss"])
    norm = float.fromhex(saved["grad_norm"]), float.fromhex(now["grad_norm"])
    pairs = [loss, norm]
    if "step_loss" in saved:
        if "step_loss" not in now:
            raise CheckpointError(
                "the probe recorded an optimizer step, but no optimizer of the state trains "
                "the model given to probe(); pass the model as the state holds it (a DDP "
                "model itself, not its .module)"
            )
        pairs.append((float.fromhex(saved["step_loss"]), float.fromhex(now["step_loss"])))
    keys = ("loss", "grad_norm", "grad_digest", "step_loss", "step_digest")
    same_bits = all(saved.get(key) == now.get(key) for key in keys)
    close = all(abs(b - a) <= RELATIVE_TOLERANCE * abs(a) for a, b in pairs)
    report = {
        "ids": saved["ids"],
        "loss": {"saved": loss[0], "now": loss[1]},
        "grad_norm": {"saved": norm[0], "now": norm[1]},
        "grad_digest": {"saved": saved["grad_digest"], "now": now["grad_digest"]},
        "step_loss": {key: d.get("step_loss") for key, d in (("saved", saved), ("now", now))},
        "step_digest": {"saved": saved.get("step_digest"), "now": now.get("step_digest")},
        "exact": same_bits,
        "ok": same_bits if exact else close,
    }
    if not report["ok"]:
        rule = "bit for bit (strict mode)" if exact else f"within {RELATIVE_TOLERANCE:g} relative"
        raise CheckpointError(
            f"resume probe (samples {saved['ids']}): loss saved {loss[0]!r}, now {loss[1]!r}; "
            f"gradient norm saved {norm[0]!r}, now {norm[1]!r}; gradient digest saved "
            f"{saved['grad_digest']}, now {now['grad_digest']}; after one optimizer step: "
            f"loss {saved.get('step_loss')} / {now.get('step_loss')}, weights digest "
            f"{saved.get('step_digest')} / {now.get('step_digest')}: not equal {rule}, so the "
            "loaded state is not the saved one: do not train on; load an earlier checkpoint "
            "(with checksums verified) or find what changed (model code, dtype, settings)"
        )
    return report
