"""Per-rank RNG states: captured, validated and restored, or re-derived from (seed, step, rank).

Dropout, augmentations drawn in the training loop and random masking read Python's ``random``,
numpy's global generator, torch's CPU generator and every CUDA device's generator. A resume
that restores the weights but not these draws other random numbers than the continuous run
would have, so each rank writes its own states into ``rng-rank-R.json`` (plain JSON, the torch
states base64-encoded). When the rank layout changed, a saved rank's state has no meaningful
owner; each rank's generators are then re-derived from Philox instead: the key
``derive_words(seed, epoch=rank, position=step, purpose=PURPOSE)`` gives all three CPU
generators full states of their own (through the loader's own reseed, so the draws are as
independent as the per-sample ones), and CUDA device ``d`` a 64-bit seed from a second Philox
call keyed by that key. Neighbouring ranks and steps thus get unrelated streams, and no other
use of the seed (permutation, samples, batches...) shares the counter space.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resumable_loader.checkpoint import integrity
from resumable_loader.checkpoint.layout import write_inside
from resumable_loader.checkpoint.manifest import rng_name
from resumable_loader.errors import CheckpointError
from resumable_loader.order.philox import Purpose, derive_words
from resumable_loader.rngs.process import this_process

FORMAT = "resumable_loader.rng"
# Version 1: format, version, rank, world_size, step, python, numpy, torch, cuda.
VERSION = 1

PURPOSE = Purpose.PROCESS_RNG  # the counter's last word for these keys


def rank_file(checkpoint: Path, rank: int) -> Path:
    """Where rank ``rank``'s RNG states are saved in ``checkpoint``."""
    return checkpoint / rng_name(rank)


def _bytes(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode()


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _encode(value: Any) -> Any:
    """numpy's state dict as JSON values (arrays as dtype + list)."""
    if isinstance(value, np.ndarray):
        return {"ndarray": value.dtype.str, "values": value.tolist()}
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"ndarray", "values"}:
            return np.array(value["values"], dtype=np.dtype(value["ndarray"]))
        return {key: _decode(item) for key, item in value.items()}
    return value


def capture(*, rank: int, world_size: int, step: int) -> dict[str, Any]:
    """This process's generator states now, as a JSON-ready dict."""
    version, words, gauss_next = random.getstate()
    return {
        "format": FORMAT,
        "version": VERSION,
        "rank": rank,
        "world_size": world_size,
        "step": step,
        "python": {"version": version, "state": list(words), "gauss_next": gauss_next},
        "numpy": _encode(np.random.get_state(legacy=False)),
        "torch": _bytes(torch.get_rng_state()),
        "cuda": [_bytes(s) for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
    }


def write(checkpoint: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Write ``state`` (from :func:`capture`) as its rank's file in ``checkpoint``; return the
    file's content checksum entry for the manifest."""
    data = json.dumps(state).encode()
    write_inside(rank_file(checkpoint, state["rank"]), data)
    return integrity.of_bytes(data)


def read(checkpoint: Path, rank: int) -> dict[str, Any]:
    """Rank ``rank``'s saved states, checked field by field (nothing is applied).

    Raises:
        CheckpointError: the file is missing, not JSON, of another format or version, or a
            field is missing, of the wrong type or no state its generator takes; the message
            names the file and field.
    """
    path = rank_file(checkpoint, rank)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: missing, so rank {rank}'s RNG states cannot be restored; the checkpoint "
            "is incomplete: load an earlier one, or mode='flexible' to re-derive them"
        ) from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable ({error}); load an earlier checkpoint") from None
    expected = {
        "format": str,
        "version": int,
        "rank": int,
        "python": dict,
        "numpy": dict,
        "torch": str,
        "cuda": list,
    }
    for field, kind in expected.items():
        if not isinstance(state, dict) or not isinstance(state.get(field), kind):
            got = state.get(field) if isinstance(state, dict) else state
            raise CheckpointError(
                f"{path}: field '{field}' is {str(got)[:60]!r}, expected a {kind.__name__}; "
                "the file is damaged: load an earlier checkpoint"
            )
    if (state["format"], state["version"], state["rank"]) != (FORMAT, VERSION, rank):
        raise CheckpointError(
            f"{path}: format/version/rank {state['format']!r}/{state['version']}/"
            f"{state['rank']}, expected {FORMAT!r}/{VERSION}/{rank}; load it with the release "
            "that wrote it, or load an earlier checkpoint"
        )
    _try_restore(path, state)
    return state


def _try_restore(path: Path, state: dict[str, Any]) -> None:
    """Set each saved state on a throwaway generator, so a bad one fails now, not mid-load."""
    python = state["python"]

    def numpy() -> None:
        saved = _decode(state["numpy"])
        np.random.RandomState(getattr(np.random, saved["bit_generator"])()).set_state(saved)

    checks = {
        "python": lambda: random.Random().setstate(
            (python["version"], tuple(python["state"]), python["gauss_next"])
        ),
        "numpy": numpy,
        "torch": lambda: torch.Generator().set_state(_tensor(state["torch"])),
        "cuda": lambda: [_tensor(s) for s in state["cuda"]],
    }
    for field, check in checks.items():
        try:
            check()
        except Exception as error:  # whatever the library raises for a malformed state
            raise CheckpointError(
                f"{path}: field '{field}' is not a generator state ({type(error).__name__}: "
                f"{error}); the file is damaged: load an earlier checkpoint"
            ) from None


def restore(state: dict[str, Any]) -> None:
    """Put back the generator states :func:`read` returned."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    np.random.set_state(_decode(state["numpy"]))
    torch.set_rng_state(_tensor(state["torch"]))
    if state["cuda"]:
        torch.cuda.set_rng_state_all([_tensor(s) for s in state["cuda"]])


def rederive(*, seed: int, step: int, rank: int) -> None:
    """Give this rank's generators the states Philox derives from (seed, step, rank)."""
    key = derive_words(seed, rank, step, PURPOSE)
    this_process().reseed(key)
    if torch.cuda.is_available():
        device_seed = key[2] | key[3] << 32
        for device in range(torch.cuda.device_count()):
            words = derive_words(device_seed, device, 0, PURPOSE)
            with torch.cuda.device(device):
                torch.cuda.manual_seed(words[0] | words[1] << 32)
