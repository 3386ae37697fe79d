"""Packing: fill rate against the packers in use, tokens/s through the loader, resume cost.

Run: python benchmarks/bench_packing.py [--quick] [--samples N] [--resume-samples N]
     [--repeats R] [--rounds R] [--parts fill,throughput,resume]

1. Fill rate (real tokens / (packs x budget)) on two length distributions, side by side: an
   SFT one (log-normal, median 300 tokens, sigma 1, clipped to 8192) and a multimodal one
   (log-normal text, median 60, plus Poisson(1.2) images of 576 tokens, clipped to 8192),
   budget 8192, in a shuffled order. Baselines, reimplemented from their published algorithms
   (none installs beside the CPU torch here: megatron-energon and grain are not installed):
   greedy concatenation (next-fit in order); Grain's FirstFitPackIterDataset, which torchtitan
   uses (N open bins, first fit in arrival order, all N emitted when an element fits none);
   Energon's buffer of packing_buffer_size samples, whose selection is the user's
   select_samples_to_pack (here first-fit decreasing over the buffer, the best a user is
   likely to write). Ours: a window of K positions by best-fit or first-fit decreasing, and
   token-budget batches (fill = real / padded tokens).
2. Throughput through the loader (num_workers 0 and 2, batches of 8 x 4096 tokens, window 4096):
   real tokens/s of Packed (collate_varlen) over TokenDocuments (the token file's documents,
   written from its memory map) and over a per-sample map-style dataset of the same
   documents (what a user's own dataset costs), against padded batches of the same documents
   (batch size chosen for the same tokens per batch, padded to the longest) and against
   TokenDataset's concat path over the same token file, with input_ids and labels (the issue's
   goal) and with all four outputs (position_ids and cu_seqlens too, what a pack also holds);
   interleaved rounds (at 0 workers the loaders take turns 50 batches at a time within a
   round), medians and the range of the per-round ratios. The datasets are built once, so their
   memory maps stay mapped across the rounds, as through an epoch.
3. Resume: time to the first batch (build the loader, load the state, iter(), next()) fresh
   and at 90% of an epoch of --resume-samples samples (default 10^8; --quick 10^6), medians
   of R alternating runs; and the per-epoch pack table's parts: the order's ids, the lengths
   gathered and counted in C++. Both a fresh start and a resume build the epoch's table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from resumable_loader import DataLoader, Packed, TokenDataset
from resumable_loader.order.permutation import ShuffledOrder
from resumable_loader.packing.collate import collate_varlen
from resumable_loader.packing.plan import plan_window
from resumable_loader.packing.prefix import window_counts
from resumable_loader.tokens import TokenDocuments

BUDGET = 8192
SEQ, BATCH, WARMUP = 4096, 8, 5
# At 0 workers a batch takes ~0.1 ms: 150 of them last ~20 ms, shorter than the load's swings
# on a shared machine (per-round ratios ranged 0.6-1.9x), so a round times 4x as many, and the
# loaders take turns TURN batches at a time. (With workers each loader runs its batches in turn:
# an idle loader's workers would fill their queues while another is timed.)
ZERO_WORKER_SCALE, TURN = 4, 50
WINDOW = 4096  # Packed's default


def sft_lengths(count: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(300), 1.0, count), 1, BUDGET).astype(np.int64)


def multimodal_lengths(count: int, rng: np.random.Generator) -> np.ndarray:
    text = rng.lognormal(np.log(60), 0.8, count)
    images = rng.poisson(1.2, count) * 576
    return np.clip(text + images, 1, BUDGET).astype(np.int64)


# -- baselines (reimplemented) -------------------------------------------------------------


def greedy_concat(lengths: np.ndarray, budget: int) -> int:
    """Next-fit in order: a new pack whenever the next sample does not fit."""
    packs, used = 0, budget + 1
    for size in lengths.tolist():
        if used + size > budget:
            packs, used = packs + 1, 0
        used += size
    return packs


def grain_first_fit(lengths: np.ndarray, budget: int, bins: int) -> int:
    """Grain's FirstFitPackIterDataset: N bins, first fit in arrival order; once an element
    fits none, all N bins are emitted (the non-empty ones) and it starts a new round."""
    packs = 0
    rooms = [budget] * bins
    for size in lengths.tolist():
        for index, room in enumerate(rooms):
            if room >= size:
                rooms[index] = room - size
                break
        else:
            packs += sum(room < budget for room in rooms)
            rooms = [budget] * bins
            rooms[0] -= size
    return packs + sum(room < budget for room in rooms)


def energon_buffer(lengths: np.ndarray, budget: int, buffer: int) -> int:
    """Energon: packing_buffer_size samples at a time, packed by the user's selection (here
    first-fit decreasing over the buffer)."""
    return int(window_counts(lengths, buffer, budget, strategy="ffd", overlong="truncate").sum())


def ours(lengths: np.ndarray, budget: int, window: int, strategy: str) -> int:
    return int(window_counts(lengths, window, budget, strategy=strategy, overlong="truncate").sum())


def padded_fill(lengths: np.ndarray, budget: int, window: int) -> float:
    """Token-budget batches: real tokens over padded tokens (count x longest per batch)."""
    padded = 0
    for first in range(0, len(lengths), window):
        plan = plan_window(
            lengths[first : first + window], budget, strategy="pad", overlong="truncate"
        )
        for index in range(plan.num_packs):
            sizes = plan.length[plan.pack(index)]
            padded += len(sizes) * int(sizes.max())
    return float(lengths.sum()) / padded


def fill_rates(samples: int) -> None:
    rng = np.random.default_rng(2026)
    print(f"\n## 1. Fill rate (real tokens / packs x {BUDGET}), {samples} samples, shuffled\n")
    print("| packer | SFT fill | multimodal fill | packs (SFT) |")
    print("|---|---:|---:|---:|")
    distributions = {"sft": sft_lengths(samples, rng), "mm": multimodal_lengths(samples, rng)}
    rows: list[tuple[str, Callable[[np.ndarray], int]]] = [
        ("greedy concatenation (next-fit)", lambda x: greedy_concat(x, BUDGET)),
        ("Grain/torchtitan first-fit, 8 bins", lambda x: grain_first_fit(x, BUDGET, 8)),
        ("Grain/torchtitan first-fit, 64 bins", lambda x: grain_first_fit(x, BUDGET, 64)),
        ("Energon buffer 128 + FFD selection", lambda x: energon_buffer(x, BUDGET, 128)),
        ("Energon buffer 1024 + FFD selection", lambda x: energon_buffer(x, BUDGET, 1024)),
        ("Energon buffer 4096 + FFD selection", lambda x: energon_buffer(x, BUDGET, 4096)),
    ]
    for window in (256, 1024, 4096):
        for strategy in ("ffd", "bfd"):
            rows.append(
                (
                    f"**ours: {strategy}, window {window}**",
                    lambda x, w=window, s=strategy: ours(x, BUDGET, w, s),
                )
            )
    for name, packer in rows:
        packs = {key: packer(values) for key, values in distributions.items()}
        fills = {key: values.sum() / (packs[key] * BUDGET) for key, values in distributions.items()}
        print(f"| {name} | {fills['sft']:.4f} | {fills['mm']:.4f} | {packs['sft']} |")
    for window in (256, 1024):
        sft, mm = (padded_fill(values, BUDGET, window) for values in distributions.values())
        name = f"ours: token-budget batches (no packing), window {window}"
        print(f"| {name} | {sft:.4f} | {mm:.4f} | - |")


# -- throughput ----------------------------------------------------------------------------


class Documents(Dataset):
    """Variable-length documents over one memory-mapped token file (what SFT data looks like
    pre-tokenized): item i is ``tokens[offsets[i]:offsets[i+1]]``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offsets = np.load(path.replace(".npy", ".offsets.npy"))
        self.tokens: np.ndarray | None = None
        digest = hashlib.blake2b(self.offsets.tobytes(), digest_size=8).hexdigest()
        self.fingerprint = f"documents-{digest}"

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sample_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.tokens is None:
            self.tokens = np.load(self.path, mmap_mode="r").view(np.ndarray)
        start, stop = self.offsets[index], self.offsets[index + 1]
        return {"input_ids": torch.from_numpy(self.tokens[start:stop].astype(np.int64))}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "tokens": None}


def pad_collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.zeros((len(samples), width), dtype=torch.int64)
    for row, sample in enumerate(samples):
        ids[row, : len(sample["input_ids"])] = sample["input_ids"]
    real = sum(len(s["input_ids"]) for s in samples)
    return {"input_ids": ids, "real": real}


def write_documents(directory: str, count: int) -> str:
    rng = np.random.default_rng(7)
    lengths = np.clip(rng.lognormal(np.log(300), 1.0, count), 1, SEQ).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    path = os.path.join(directory, "docs.npy")
    np.save(path, rng.integers(0, 50000, int(offsets[-1])).astype(np.uint16))
    np.save(path.replace(".npy", ".offsets.npy"), offsets)
    return path


def tokens_per_second(
    loader: Any, batches: int, count: Callable[[Any], int]
) -> tuple[float, float]:
    """(real tokens per wall second, per CPU second of this process) after a warm-up."""
    iterator = iter(loader)
    for _ in range(WARMUP):
        next(iterator)
    tokens, start, cpu = 0, time.perf_counter(), time.process_time()
    for _ in range(batches):
        tokens += count(next(iterator))
    return tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu)


def taking_turns(
    loaders: dict[str, tuple[Any, Callable[[Any], int]]], batches: int
) -> dict[str, tuple[float, float]]:
    """At 0 workers: (real tokens per wall second, per CPU second) of each loader, the loaders
    taking turns TURN batches at a time until each has timed ``batches`` (a multiple of TURN),
    so that all of them see the same swings of the machine's load."""
    iterators = {}
    for name, (loader, _) in loaders.items():
        iterators[name] = iter(loader)
        for _ in range(WARMUP):
            next(iterators[name])
    totals = {name: [0, 0.0, 0.0] for name in loaders}
    for _ in range(batches // TURN):
        for name, (_, count) in loaders.items():
            iterator, tokens = iterators[name], 0
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(TURN):
                tokens += count(next(iterator))
            total = totals[name]
            total[0] += tokens
            total[1] += time.perf_counter() - start
            total[2] += time.process_time() - cpu
    return {name: (tokens / wall, tokens / cpu) for name, (tokens, wall, cpu) in totals.items()}


def padded_share(docs: Documents, batch_size: int, batches: int) -> float:
    """Real tokens over padded tokens of the padded batches (what the GPU computes on)."""
    loader = DataLoader(docs, batch_size=batch_size, shuffle=True, seed=1, collate_fn=pad_collate)
    real = padded = 0
    for _, batch in zip(range(batches), loader, strict=False):
        real, padded = real + batch["real"], padded + batch["input_ids"].numel()
    return real / padded


def throughput_sources(path: str) -> dict[str, Dataset]:
    """The datasets over one token file, built once and kept across the rounds: their memory
    maps stay mapped, as through an epoch (a short run in fresh maps would charge scattered
    documents the first-touch page faults of ~4x the pages per token that consecutive windows
    touch, which over a whole epoch are the same pages)."""
    both = ("input_ids", "labels")
    return {
        "documents": TokenDocuments(path),
        "per-sample": Documents(path),
        "concat": TokenDataset(path, SEQ, outputs=both),
        "concat 4": TokenDataset(path, SEQ, outputs=(*both, "position_ids", "cu_seqlens")),
    }


def throughput_loaders(
    sources: dict[str, Dataset], workers: int, padded_batch: int
) -> dict[str, tuple[Any, Any]]:
    """The loaders compared, over the same token file: name -> (loader, real tokens of a batch)."""
    common = dict(shuffle=True, seed=1, num_workers=workers)

    def packed(dataset: Dataset) -> tuple[Any, Any]:
        loader = DataLoader(
            Packed(dataset, SEQ, window=WINDOW),
            batch_size=BATCH,
            collate_fn=collate_varlen,
            **common,
        )
        return loader, lambda b: int(b["cu_seqlens"][-1])

    def concat(dataset: Dataset) -> tuple[Any, Any]:
        loader = DataLoader(dataset, batch_size=BATCH, **common)
        return loader, lambda b: b["input_ids"].numel()

    per_sample = sources["per-sample"]
    padded = DataLoader(per_sample, batch_size=padded_batch, collate_fn=pad_collate, **common)
    return {
        "packed": packed(sources["documents"]),
        "packed, per-sample reads": packed(per_sample),
        "padded": (padded, lambda b: b["real"]),
        "concat": concat(sources["concat"]),
        "concat, 4 outputs": concat(sources["concat 4"]),
    }


def _ratios(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"


def throughput(documents: int, batches: int, repeats: int) -> None:
    print(f"\n## 2. Real tokens/s through the loader ({BATCH} x {SEQ} tokens a batch)\n")
    print(
        "Rounds interleave the loaders; M tokens/s are medians over the rounds (wall; CPU of "
        "the main process in brackets at 0 workers), ratios median [range] of the rounds.\n"
    )
    names = ("packed", "packed, per-sample reads", "padded", "concat", "concat, 4 outputs")
    print(
        "| num_workers | Packed(TokenDocuments) | Packed, per-sample reads | padded batches "
        "| TokenDataset concat | concat, 4 outputs | packed / concat | packed / concat 4 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as directory:
        path = write_documents(directory, documents)
        docs = Documents(path)
        mean = float(docs.sample_lengths().mean())
        padded_batch = max(1, int(BATCH * SEQ / mean / 1.6))  # ~ the same padded tokens a batch
        share = padded_share(docs, padded_batch, batches)
        loads = []
        sources = throughput_sources(path)
        for workers in (0, 2):
            rates: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
            for _ in range(repeats):
                loads.append(os.getloadavg()[0])
                loaders = throughput_loaders(sources, workers, padded_batch)
                if workers == 0:
                    turns = taking_turns(loaders, batches * ZERO_WORKER_SCALE)
                    for name in names:
                        rates[name].append(turns[name])
                    continue
                for name, (loader, count) in loaders.items():  # in turn (see TURN)
                    rates[name].append(tokens_per_second(loader, batches, count))
            cells = []
            for name in names:
                wall = statistics.median(w for w, _ in rates[name]) / 1e6
                cpu = statistics.median(c for _, c in rates[name]) / 1e6
                cells.append(f"{wall:.1f} M ({cpu:.0f} M)" if workers == 0 else f"{wall:.1f} M")
            for peer in ("concat", "concat, 4 outputs"):
                pairs = list(zip(rates["packed"], rates[peer], strict=True))
                cells.append(_ratios([p[0] / c[0] for p, c in pairs]))
                if workers == 0:  # the main process does all the work: its CPU time too
                    cells[-1] += " (CPU " + _ratios([p[1] / c[1] for p, c in pairs]) + ")"
            print(f"| {workers} | " + " | ".join(cells) + " |")
    print(
        f"\npadded batches: {padded_batch} documents a batch; real / padded tokens {share:.2f}; "
        f"{repeats} rounds of {batches * ZERO_WORKER_SCALE} batches at 0 workers (taking turns "
        f"{TURN} at a time), {batches} at 2; load average {min(loads):.1f}-{max(loads):.1f} "
        f"on {os.cpu_count()} CPUs"
    )


# -- resume --------------------------------------------------------------------------------


class LengthsOnly(Dataset):
    """N samples whose tokens are made on the fly: what the table and one pack cost, no I/O."""

    fingerprint = "lengths-only"

    def __init__(self, lengths: np.ndarray) -> None:
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def sample_lengths(self) -> np.ndarray:
        return self.lengths

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.arange(int(self.lengths[index]))


def first_batch(packed: Packed, state: dict[str, Any] | None) -> tuple[float, float]:
    """(wall, CPU) seconds to the first batch: build the loader, load the state, iter(), next()
    (num_workers=0, so the CPU time is all the work, which other sessions disturb less)."""
    wall, cpu = time.perf_counter(), time.process_time()
    loader = DataLoader(packed, batch_size=BATCH, shuffle=True, seed=3, collate_fn=collate_varlen)
    if state is not None:
        loader.load_state_dict(state)
    next(iter(loader))
    return time.perf_counter() - wall, time.process_time() - cpu


def resume(samples: int, repeats: int) -> None:
    print(f"\n## 3. First batch, fresh vs at 90% of an epoch of {samples:.0e} samples\n")
    lengths = sft_lengths(samples, np.random.default_rng(5)).astype(np.int32)
    start = time.process_time()
    packed = Packed(LengthsOnly(lengths), BUDGET, window=WINDOW)
    built = time.process_time() - start
    order = ShuffledOrder(samples, seed=3)
    chunk = 1 << 16
    ids_time = count_time = 0.0
    for first in range(0, samples, chunk):  # CPU seconds: other sessions share the CPUs
        t0 = time.process_time()
        ids = order.ids(0, first, min(first + chunk, samples))
        t1 = time.process_time()
        window_counts(lengths, WINDOW, BUDGET, strategy="bfd", overlong="error", ids=ids)
        ids_time, count_time = ids_time + t1 - t0, count_time + time.process_time() - t1
    loader = DataLoader(packed, batch_size=BATCH, shuffle=True, seed=3, collate_fn=collate_varlen)
    total = loader.order.epoch_length(0)
    state = loader.state_at(0, int(total * 0.9))
    times: dict[str, list[tuple[float, float]]] = {"fresh": [], "resumed": []}
    for _ in range(repeats):  # alternating, so both see the same machine
        for name, saved in (("fresh", None), ("resumed", state)):
            times[name].append(first_batch(Packed(LengthsOnly(lengths), BUDGET), saved))
    fresh, resumed = (statistics.median(w for w, _ in times[n]) for n in ("fresh", "resumed"))
    fresh_cpu, resumed_cpu = (
        statistics.median(c for _, c in times[n]) for n in ("fresh", "resumed")
    )
    print("| what | seconds |")
    print("|---|---:|")
    print(f"| Packed(...) over {samples:.0e} lengths (checks, digest), CPU | {built:.2f} |")
    print(f"| pack table: the order's ids (Feistel, C++), CPU | {ids_time:.2f} |")
    counted = f"pack table: lengths gathered and bfd counts (C++, window {WINDOW}), CPU"
    print(f"| {counted} | {count_time:.2f} |")
    print(f"| first batch, fresh start (loader, table, one window's plan), median | {fresh:.2f} |")
    print(f"| first batch at 90% (+ load_state_dict), median | {resumed:.2f} |")
    print(f"| the same, CPU seconds: fresh / at 90% | {fresh_cpu:.2f} / {resumed_cpu:.2f} |")
    print(
        f"\nresume / fresh: {resumed / fresh:.2f}x wall, {resumed_cpu / fresh_cpu:.2f}x CPU "
        f"(medians of {repeats}); packs in the epoch: {total}; cursor: {len(str(state))} chars; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--samples", type=int, default=200_000, help="fill-rate samples")
    parser.add_argument("--resume-samples", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="resume: runs of each")
    parser.add_argument("--rounds", type=int, default=5, help="throughput: interleaved rounds")
    parser.add_argument("--parts", default="fill,throughput,resume", help="which sections")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quick, parts = args.quick, set(args.parts.split(","))
    if "fill" in parts:
        fill_rates(20_000 if quick else args.samples)
    if "throughput" in parts:
        rounds = 1 if quick else args.rounds
        throughput(20_000 if quick else 100_000, 25 if quick else 150, rounds)
    if "resume" in parts:
        resume(args.resume_samples or (10**6 if quick else 10**8), 1 if quick else args.repeats)


if __name__ == "__main__":
    main()
