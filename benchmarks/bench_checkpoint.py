"""Checkpointer save and load time against raw dcp.save / dcp.load of one state (100 MiB, 1 GiB).

Run: nice -n -15 python benchmarks/bench_checkpoint.py [--mb MB[,MB...]] [--repeats R] [--quick]
     [--fresh N]

The state is a model (an MLP, float32), its AdamW state (two moments per weight), a warm-up
schedule and a resumable loader: ~MB megabytes of tensors in all. The baseline is DCP's own
recipe on the same objects (``get_state_dict``, ``dcp.save``; ``get_state_dict``,
``dcp.load``, ``set_state_dict``), into a fresh folder of the same file system, deleting the
one 3 saves back as keep_last=3 does. The Checkpointer adds the content checksums (xxh3_64 of
every file, taken while DCP writes it), the RNG files, the manifest, the atomic rename, the
latest pointer; on load the validation, the checksums checked again before anything is
applied, all or nothing and the decision record. Its default load stages the checkpoint
(checkpoint/staging.py): each data file is read once, whole tensors straight into fresh
tensors, every byte fed to the hash in the same pass (checkpoint/staged_read.py), and only
then are the storages swapped into the live tensors (the old ones are the rollback: nothing is
copied). The indented rows load with one guarantee given up: ``rollback=False`` (nothing
staged: every file hashed first, then read in place, checkpoint/direct_read.py),
``checksums="trust"`` (nothing hashed), both. "load" loads into the trained state (weights
zeroed, so a checksum equal to the saved one shows the load read them); "resume" also empties
the optimizer first, as in a process that starts by loading. Saves and loads alternate
between the engines, each round beginning with the next one; ratios to raw DCP are per round,
median (range), wall and this process's CPU time. When ``accelerate`` imports, its
``save_state`` / ``load_state`` is timed too (same pruning). A harness may append engines to
:data:`ENGINES` (e.g. an older Checkpointer, to compare before and after in the same rounds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.utils.data import TensorDataset

from resumable_loader import DataLoader
from resumable_loader.checkpoint import Checkpointer

KEEP_LAST = 3
warnings.filterwarnings("ignore", message="torch.distributed is .*unavailable or uninit")


def build(megabytes: float) -> dict:
    """An MLP whose weights + AdamW moments total ~``megabytes``, trained one step."""
    width = int((megabytes * 2**20 / 4 / 3 / 4) ** 0.5)  # 4 square layers, 3 copies, 4 bytes
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(4)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=10)
    model(torch.randn(2, width)).sum().backward()
    optimizer.step()
    scheduler.step()
    loader = DataLoader(TensorDataset(torch.arange(1000)), batch_size=10, shuffle=True, seed=1)
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler, "loader": loader}


def tensor_mb(state: dict) -> float:
    model, optimizer = get_state_dict(state["model"], state["optimizer"])
    tensors = [*model.values()]
    for per_param in optimizer["state"].values():
        tensors += [v for v in per_param.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


class Raw:
    """DCP's recipe: the model and optimizer through get/set_state_dict, dcp.save/dcp.load.

    Like the Checkpointer with keep_last=3, each save deletes the checkpoint 3 saves back.
    """

    name = "raw dcp.save / dcp.load"

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, state: dict, step: int) -> None:
        model, optimizer = get_state_dict(state["model"], state["optimizer"])
        app = {"model": model, "optimizer": optimizer, "scheduler": state["scheduler"]}
        dcp.save(app, checkpoint_id=self.root / f"step-{step}", no_dist=True)
        shutil.rmtree(self.root / f"step-{step - KEEP_LAST}", ignore_errors=True)

    def load(self, state: dict, step: int) -> None:
        model, optimizer = get_state_dict(state["model"], state["optimizer"])
        app = {"model": model, "optimizer": optimizer, "scheduler": state["scheduler"]}
        dcp.load(app, checkpoint_id=self.root / f"step-{step}", no_dist=True)
        set_state_dict(
            state["model"], state["optimizer"], model_state_dict=model, optim_state_dict=optimizer
        )


class Ours:
    """The Checkpointer (keep_last=3, so it prunes as in a run), checksums verified on load."""

    name = "Checkpointer (default load)"
    checksums, rollback = "verify", True

    def __init__(self, root: Path) -> None:
        self.checkpointer = Checkpointer(root, keep_last=KEEP_LAST)
        self.verify_seconds: list[float] = []

    def save(self, state: dict, step: int) -> None:
        self.checkpointer.save(step, state)

    def load(self, state: dict, step: int) -> None:
        decision = self.checkpointer.load(
            state, step=step, checksums=self.checksums, rollback=self.rollback
        )
        self.verify_seconds.append(decision["checksums"].get("seconds", 0.0))


class Unguarded(Ours):
    """The same, loading with rollback=False (checksums verified first, read in place)."""

    name = "  rollback=False"
    rollback = False


class Trusting(Ours):
    """The same, loading with checksums="trust" (its saves still hash every file)."""

    name = "  checksums='trust'"
    checksums = "trust"


class Bare(Ours):
    """The same, loading with checksums="trust" and rollback=False (read in place)."""

    name = "  checksums='trust', rollback=False"
    checksums, rollback = "trust", False


class Accelerate:
    """Accelerate's save_state / load_state of the prepared model, optimizer and scheduler."""

    name = "accelerate save_state / load_state"

    def __init__(self, root: Path) -> None:
        from accelerate import Accelerator

        self.root, self.accelerator, self.prepared = root, Accelerator(cpu=True), None

    def _prepare(self, state: dict) -> None:
        if self.prepared is None:
            self.prepared = self.accelerator.prepare(
                state["model"], state["optimizer"], state["scheduler"]
            )

    def save(self, state: dict, step: int) -> None:
        self._prepare(state)
        self.accelerator.save_state(str(self.root / f"step-{step}"))
        shutil.rmtree(self.root / f"step-{step - KEEP_LAST}", ignore_errors=True)

    def load(self, state: dict, step: int) -> None:
        self._prepare(state)
        self.accelerator.load_state(str(self.root / f"step-{step}"))


def usage(action: Callable[..., None], *args: object) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, of which system, minor page faults) of ``action(*args)``."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    action(*args)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    system = after.ru_stime - before.ru_stime
    cpu = after.ru_utime - before.ru_utime + system
    return wall, cpu, system, after.ru_minflt - before.ru_minflt


def timed(action: Callable[..., None], *args: object) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``action(*args)``."""
    wall, cpu, _, _ = usage(action, *args)
    return wall, cpu


def checksum(state: dict) -> float:
    with torch.no_grad():
        return float(sum(p.double().sum() for p in state["model"].parameters()))


def forget(state: dict, *, optimizer: bool) -> None:
    """Zero the weights, so that only a load that reads them gives the checksum back; with
    ``optimizer``, also drop the optimizer's state, as in a process that resumes."""
    with torch.no_grad():
        for parameter in state["model"].parameters():
            parameter.zero_()
    if optimizer:  # (gradients too: DCP creates an optimizer's state only if it has none)
        state["optimizer"].state.clear()
        state["optimizer"].zero_grad(set_to_none=True)


def ratios(times: dict, name: str, what: str, index: int) -> str:
    """Median and range of ``name``'s per-round ratio to raw DCP (``index`` 0 wall, 1 CPU)."""
    pairs = zip(times[name][what], times[Raw.name][what], strict=True)
    each = sorted(ours[index] / raw[index] for ours, raw in pairs)
    return f"{statistics.median(each):.2f} ({each[0]:.2f}-{each[-1]:.2f})"


def measure(megabytes: float, repeats: int) -> None:
    """One table: every engine saving and loading ~``megabytes`` of tensors ``repeats`` times."""
    state = build(megabytes)
    expected = checksum(state)
    kinds: list[type] = list(ENGINES)
    if importlib.util.find_spec("accelerate") is not None:
        kinds.append(Accelerate)
    loads = {"load": False, "resume": True}  # resume: into an optimizer without state
    with tempfile.TemporaryDirectory(dir=".") as directory:  # the repository's file system
        root = Path(directory)
        engines = [kind(root / kind.__name__.lower()) for kind in kinds]
        times = {e.name: {what: [] for what in ("save", *loads)} for e in engines}
        sums = {}
        for step in range(repeats):
            # each round starts with another engine: the first write of a round also waits for
            # the write-back of the round before, which would otherwise always fall on one
            turn = engines[step % len(engines) :] + engines[: step % len(engines)]
            for engine in turn:
                times[engine.name]["save"].append(timed(engine.save, state, step))
            for what, fresh in loads.items():
                for engine in turn:
                    forget(state, optimizer=fresh)
                    times[engine.name][what].append(timed(engine.load, state, step))
                    sums[engine.name] = sums.get(engine.name, True) and checksum(state) == expected
    print(
        f"# {tensor_mb(state):.1f} MiB of tensors (MLP + AdamW moments), {repeats} rounds, "
        f"engines alternating, fsynced files, 1 torch thread; load: {uptime()}"
    )
    print(
        f"{'engine':<38}{'save s':>7}{'x raw':>19}{'load s':>8}{'x raw wall':>19}"
        f"{'x raw CPU':>19}{'resume s':>9}{'x raw wall':>19}  ok"
    )
    for engine in engines:
        name = engine.name
        median = {what: statistics.median(t[0] for t in times[name][what]) for what in times[name]}
        print(
            f"{name:<38}{median['save']:>7.3f}{ratios(times, name, 'save', 0):>19}"
            f"{median['load']:>8.3f}{ratios(times, name, 'load', 0):>19}"
            f"{ratios(times, name, 'load', 1):>19}{median['resume']:>9.3f}"
            f"{ratios(times, name, 'resume', 0):>19}  {sums[name]}"
        )
    verify = statistics.median(engines[1].verify_seconds)
    print(f"small files, checks and the staged read that hashes (default rows): {verify:.3f} s\n")
    if Accelerate not in kinds:
        print("accelerate: not installed beside the CPU torch here, not timed\n")


ENGINES: list[type] = [Raw, Ours, Unguarded, Trusting, Bare]
FRESH: list[type] = [Raw, Ours]  # the engines --fresh times, one load per process


def load_once(megabytes: float, engine: str, what: str, root: str) -> None:
    """In a new process: build the state as it was saved, forget it, load step 0 once with
    ``engine`` and print its usage as JSON (the child of :func:`measure_fresh`)."""
    torch.set_num_threads(1)
    state = build(megabytes)
    expected = checksum(state)
    kind = next(kind for kind in FRESH if kind.__name__ == engine)
    loader = kind(Path(root) / kind.__name__.lower())
    forget(state, optimizer=what == "resume")
    figures = usage(loader.load, state, 0)
    print(json.dumps({"usage": figures, "ok": checksum(state) == expected}))


def measure_fresh(megabytes: float, rounds: int) -> None:
    """One table: ``rounds`` rounds of one load per new process, each engine of :data:`FRESH`
    and each of "load" and "resume", the engines alternating."""
    state = build(megabytes)
    with tempfile.TemporaryDirectory(dir=".") as directory:
        root = Path(directory)
        for kind in FRESH:
            kind(root / kind.__name__.lower()).save(state, 0)
        times = {kind.name: {"load": [], "resume": []} for kind in FRESH}
        sums = {kind.name: True for kind in FRESH}
        for step in range(rounds):
            turn = FRESH[step % len(FRESH) :] + FRESH[: step % len(FRESH)]
            for what in ("load", "resume"):
                for kind in turn:
                    command = [sys.executable, __file__, "--load-once"]
                    command += [str(megabytes), kind.__name__, what, directory]
                    done = subprocess.run(command, capture_output=True, text=True, check=True)
                    found = json.loads(done.stdout.strip().splitlines()[-1])
                    times[kind.name][what].append(tuple(found["usage"]))
                    sums[kind.name] = sums[kind.name] and found["ok"]
    print(
        f"# {tensor_mb(state):.1f} MiB of tensors, {rounds} rounds of one load per new process "
        f"(the engines alternating); load: {uptime()}"
    )
    print(
        f"{'engine':<30}{'':<7}{'wall s':>7}{'x raw wall':>19}{'CPU s':>7}{'x raw CPU':>19}"
        f"{'sys s':>7}{'minor faults':>14}  ok"
    )
    for kind in FRESH:
        for what, rows in times[kind.name].items():
            wall, cpu, system, faults = (
                statistics.median(column) for column in zip(*rows, strict=True)
            )
            print(
                f"{kind.name:<30}{what:<7}{wall:>7.3f}{ratios(times, kind.name, what, 0):>19}"
                f"{cpu:>7.3f}{ratios(times, kind.name, what, 1):>19}{system:>7.3f}"
                f"{faults:>14,.0f}  {sums[kind.name]}"
            )
    print()


def uptime() -> str:
    """The 1-minute load average now (the machine is shared)."""
    return f"{os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", default="100,1024", help="megabytes of tensors, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="10 MB, 2 repeats")
    parser.add_argument("--fresh", type=int, default=0, help="rounds of one load per process")
    parser.add_argument("--load-once", nargs=4, help=argparse.SUPPRESS)  # a --fresh child
    args = parser.parse_args()
    if args.load_once:
        megabytes, engine, what, root = args.load_once
        load_once(float(megabytes), engine, what, root)
        return
    sizes = [10.0] if args.quick else [float(mb) for mb in args.mb.split(",")]
    repeats = 2 if args.quick else args.repeats
    torch.set_num_threads(1)
    for megabytes in sizes:
        measure(megabytes, repeats)
        if args.fresh:
            measure_fresh(megabytes, args.fresh)
    print(
        "raw and Checkpointer write through DCP's FileSystemWriter, every file fsynced; the\n"
        "Checkpointer hashes each file as it is written (xxh3_64), and adds per save one RNG\n"
        "file per rank, the manifest, an fsync of the folder, the rename and the latest pointer\n"
        "(4 fsyncs beside DCP's 2 here); per load it checks the small files, stages the\n"
        "checkpoint (each data file read once into fresh tensors and hashed in the same pass:\n"
        "fresh memory, whose page faults are most of the read), runs the checks, swaps the\n"
        "storages in and writes the resume record. raw DCP reads each tensor into a temporary\n"
        "and copies it over. accelerate writes model.safetensors,\n"
        "optimizer.bin and its RNG pickle with torch.save/safetensors and fsyncs nothing: not\n"
        "the same guarantee."
    )


if __name__ == "__main__":
    main()
