"""The components of an app state: what kind each is and how DCP takes and gives its state.

Models and optimizers go through ``torch.distributed.checkpoint.state_dict`` (canonical names,
so a plain, DDP or FSDP2 model saves the same keys and reshards on load); an optimizer is paired
with the model that owns its parameters. A ``resumable_loader.DataLoader`` is kept out of DCP:
its cursor is a few plain values that go into the manifest, where they are checked before
anything is applied. Anything else with ``state_dict``/``load_state_dict`` (a scheduler, a
GradScaler, an EMA, DCP's ``Stateful``) is passed to DCP as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from resumable_loader._checks import check_int
from resumable_loader.checkpoint import collective
from resumable_loader.errors import CheckpointError
from resumable_loader.loader.dataloader import ResumableDataLoader
from resumable_loader.mixture import Mixture
from resumable_loader.mixture.resume import FUTURE_KEY
from resumable_loader.packing import Packed

MODEL, OPTIMIZER, LOADER, STATEFUL = "model", "optimizer", "loader", "stateful"
# The cursor's key for a mixture's schedule so far (phases begun, draws per source).
ORDER_STATE_KEY = "order_state"


class ModelState:
    """A model as DCP's Stateful, through get_model_state_dict/set_model_state_dict."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __repr__(self) -> str:
        return f"ModelState(model={type(self.model).__name__})"

    def state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state)


class OptimizerState:
    """An optimizer as DCP's Stateful, keyed by its model's canonical parameter names."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def __repr__(self) -> str:
        return (
            f"OptimizerState(model={type(self.model).__name__}, "
            f"optimizer={type(self.optimizer).__name__})"
        )

    def state_dict(self) -> dict[str, Any]:
        # On an optimizer without state yet, DCP first takes one zero-lr step to create it
        # (what dcp.load needs as the place to load into); Component.undo takes it back.
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state)


@dataclass
class Component:
    """One entry of the app state: its name, kind, the object and DCP's view of it."""

    name: str
    kind: str
    obj: Any
    stateful: Any  # what goes into dcp.save/dcp.load (None for a loader)
    fresh_optimizer: bool = False  # an optimizer without state when load() began

    @property
    def type_name(self) -> str:
        kind = type(self.obj)
        return f"{kind.__module__}.{kind.__qualname__}"

    def undo(self) -> None:
        """Take back what reading a fresh optimizer's state created (a refused load)."""
        if self.fresh_optimizer:
            self.obj.state.clear()


def components(state: Mapping[str, Any]) -> dict[str, Component]:
    """Classify every entry of ``state``; CheckpointError for what cannot be checkpointed."""
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(
            f"state must be a non-empty dict of components, e.g. {{'model': model, "
            f"'optimizer': optim, 'loader': loader}}, got {type(state).__name__}"
        )
    models = {name: obj for name, obj in state.items() if isinstance(obj, nn.Module)}
    found: dict[str, Component] = {}
    for name, obj in state.items():
        if not isinstance(name, str) or not name or "." in name:
            raise CheckpointError(
                f"component name {name!r}: use a non-empty string without '.', since DCP "
                "joins names with dots"
            )
        if isinstance(obj, ResumableDataLoader):
            found[name] = Component(name, LOADER, obj, None)
        elif isinstance(obj, nn.Module):
            found[name] = Component(name, MODEL, obj, ModelState(obj))
        elif isinstance(obj, torch.optim.Optimizer):
            model = _owner(name, obj, models)
            fresh = not obj.state
            found[name] = Component(name, OPTIMIZER, obj, OptimizerState(model, obj), fresh)
        elif callable(getattr(obj, "state_dict", None)) and callable(
            getattr(obj, "load_state_dict", None)
        ):
            found[name] = Component(name, STATEFUL, obj, obj)
        else:
            raise CheckpointError(
                f"component '{name}': a {type(obj).__name__} has no state_dict() and "
                "load_state_dict(); wrap it in an object that has them (DCP's Stateful)"
            )
    return found


def _owner(name: str, optimizer: torch.optim.Optimizer, models: dict[str, nn.Module]) -> nn.Module:
    """The one model whose parameters include every parameter ``optimizer`` updates."""
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    owners = [model for model in models.values() if params <= {id(p) for p in model.parameters()}]
    if len(owners) != 1:
        raise CheckpointError(
            f"component '{name}': the optimizer's parameters belong to "
            f"{'no' if not owners else len(owners)} of the models in the state "
            f"({sorted(models) or 'none'}); put exactly the model it optimizes in the state"
        )
    return owners[0]


def loader_entry(loader: Any) -> dict[str, Any]:
    """What the manifest keeps of a loader: its cursor and the settings a resume may change."""
    check = collective.active() and loader.world_size == collective.world_size() > 1
    state = loader.state_dict(check_ranks=check)
    return {
        "state": state,
        "seed": loader.seed,
        "batch_size": loader.batch_size,
        "num_workers": loader.num_workers,
        "world_size": loader.world_size,
        "schedule": schedule_so_far(state),
        "phases": mixture_phases(loader),
    }


def schedule_so_far(cursor: Mapping[str, Any]) -> Any:
    """A mixture cursor's schedule up to its place (phases begun, draws per source): its
    ``order_state`` less the future phases it carries for the resume's log line, which
    ``mixture_phases`` records whole; None for any other dataset."""
    order_state = cursor.get(ORDER_STATE_KEY)
    if not isinstance(order_state, Mapping):
        return order_state
    return {key: value for key, value in order_state.items() if key != FUTURE_KEY}


def mixture_phases(loader: Any) -> list[list[Any]] | None:
    """The whole schedule of a loader over a Mixture, future phases included (a flexible
    resume checks only the phases begun), so that a strict resume also refuses a changed
    future; None for any other dataset."""
    dataset = loader.dataset
    if isinstance(dataset, Packed):  # packs of a Mixture's samples: the Mixture's schedule
        dataset = dataset.dataset
    return dataset.schedule.described() if isinstance(dataset, Mixture) else None


def count_samples(given: int | None, found: dict[str, Component]) -> int | None:
    """``given``, else epoch x length + position of the one loader (exact without drop_last;
    None over packs, whose positions count packs and whose epochs differ in length)."""
    if given is not None:
        return check_int("samples_seen", given)
    loaders = [c.obj for c in found.values() if c.kind == LOADER]
    if len(loaders) != 1 or loaders[0].drop_last or isinstance(loaders[0].dataset, Packed):
        return None
    state = loaders[0].state_dict()
    return state["epoch"] * state["fingerprint"]["length"] + state["position"]


def count_tokens(given: int | None, samples: int | None, found: dict[str, Component]) -> int | None:
    """``given``, else ``samples`` x the one loader's dataset's ``seq_len`` (a TokenDataset's
    fixed window), else None."""
    if given is not None:
        return check_int("tokens_seen", given)
    loaders = [c.obj for c in found.values() if c.kind == LOADER]
    seq_len = getattr(loaders[0].dataset, "seq_len", None) if len(loaders) == 1 else None
    if samples is None or not isinstance(seq_len, int) or isinstance(seq_len, bool):
        return None
    return samples * seq_len


def data_parallel_size(found: dict[str, Component], world_size: int) -> int:
    """The loaders' world size (the data-parallel degree), else the process count."""
    sizes = {c.obj.world_size for c in found.values() if c.kind == LOADER}
    return sizes.pop() if len(sizes) == 1 else world_size
