"""TokenDataset against nanoGPT's windows and Megatron's GPTDataset: tokens/s, resume, memory.

Also the seek table's build time, and the first batch after a resume at 90% vs a fresh start.

Run: python benchmarks/bench_tokens.py [--quick] [--tokens N] [--batches B] [--repeats R]

1. Throughput: one Megatron shard of random uint16 tokens in documents of 100-2000 tokens;
   2 workers, seq_len 2048, batch 8, shuffled windows; tokens/s from the 10th batch to the
   last (steady state), alternating the loaders, best of R; and the CPU seconds the main
   process and the workers spent per 10^8 tokens (start-up included; median of R), which
   the other work on a shared machine disturbs less than the wall clock. The baseline is a
   nanoGPT-style np.memmap window Dataset (opened once per worker) in torch's DataLoader;
   megatron-core's GPTDataset (pre-shuffled, reset_position_ids) in torch's DataLoader where
   it imports. The collate_windows rows collate the same batches into one shared buffer.
2. Seek table: build time for 10^6 and 10^7 documents (it depends on the document count only),
   against the same table in numpy (permutation fill, gather, cumsum).
3. Resume: time to the first batch (open the dataset, build the loader, load the state, iter(),
   next()) fresh and at 90% of an epoch of 10^10 tokens in 10^7 documents (--quick: 10^9 in
   10^6). The .bin is a sparse file (its pages read as zeros), so this times the index, the
   order and the seek table, not a disk.
4. Memory: each worker's own (private dirty) and proportional memory after 50 batches over 10^9
   tokens in 10^6 documents (sparse, as in 3), both modes and the nanoGPT baseline.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import tempfile
import time
import warnings
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from resumable_loader import ResumableDataLoader
from resumable_loader.tokens import MegatronWriter, TokenDataset, collate_windows
from resumable_loader.tokens.megatron import write_index
from resumable_loader.tokens.seek_table import SeekTable

SEQ_LEN, BATCH, WORKERS, WARMUP = 2048, 8, 2, 10


class NanoGPTWindows(Dataset):
    """nanoGPT's data path as a map-style Dataset: a np.memmap, x and y shifted by one."""

    def __init__(self, path: str, seq_len: int) -> None:
        self.path, self.seq_len = path, seq_len
        self.length = (os.path.getsize(path) // 2 - 1) // seq_len
        self.data: np.memmap | None = None  # opened once per process, on first use

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.data is None:
            self.data = np.memmap(self.path, dtype=np.uint16, mode="r")
        start = index * self.seq_len
        chunk = torch.from_numpy(self.data[start : start + self.seq_len + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


def write_corpus(directory: str, tokens: int) -> str:
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 2001, tokens // 1000 + 1)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), tokens) + 1]
    writer = MegatronWriter(os.path.join(directory, "corpus"), dtype=np.uint16)
    for part in np.array_split(lengths, max(1, len(lengths) // 100_000)):
        writer.add_documents(rng.integers(0, 50_000, int(part.sum()), dtype=np.uint16), part)
    writer.close()
    return os.path.join(directory, "corpus")


def write_sparse(directory: str, name: str, documents: int, doc_len: int) -> str:
    """A Megatron shard of documents x doc_len uint16 tokens whose .bin is a hole."""
    prefix = os.path.join(directory, name)
    with open(prefix + ".bin", "wb") as f:
        f.truncate(documents * doc_len * 2)
    write_index(prefix + ".idx", np.dtype(np.uint16), np.full(documents, doc_len, np.int32))
    return prefix


def rate(loader: DataLoader, batches: int) -> tuple[float, float]:
    """(tokens/s from batch WARMUP to batch ``batches``, CPU seconds of the main process and
    its workers, start-up included, per 10^8 tokens delivered)."""
    cpu_before = _cpu_seconds()
    iterator = iter(loader)
    for _ in range(WARMUP):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches - WARMUP):
        next(iterator)
    elapsed = time.perf_counter() - start
    del iterator  # joins the workers, so that their CPU time is counted
    gc.collect()
    cpu = _cpu_seconds() - cpu_before
    return (batches - WARMUP) * BATCH * SEQ_LEN / elapsed, cpu * 1e8 / (batches * BATCH * SEQ_LEN)


def _cpu_seconds() -> float:
    """User + system CPU of this process and of its children that have exited."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def megatron_gpt(prefix: str, cache: str) -> Dataset | str:
    """megatron-core's GPTDataset over the shard, or why it cannot be built here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from megatron.core.datasets.blended_megatron_dataset_builder import (
                BlendedMegatronDatasetBuilder,
            )
            from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    except ImportError as error:
        return f"megatron-core does not import: {error}"

    class Tokenizer:  # what GPTDataset reads of a tokenizer
        eod, pad, vocab_size = 0, 1, 50_000
        unique_identifiers: ClassVar[dict[str, str]] = {"class": "bench"}

    config = GPTDatasetConfig(
        random_seed=1,
        sequence_length=SEQ_LEN,
        blend=([prefix], None),
        split="100,0,0",
        tokenizer=Tokenizer(),
        reset_position_ids=True,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=cache,
    )
    builder = BlendedMegatronDatasetBuilder(GPTDataset, [None, None, None], lambda: True, config)
    return builder.build()[0]


def throughput(prefix: str, directory: str, batches: int, repeats: int) -> None:
    ours_concat = TokenDataset(prefix, SEQ_LEN)
    ours_shuffle = TokenDataset(prefix, SEQ_LEN, documents="shuffle")
    common = dict(batch_size=BATCH, num_workers=WORKERS)
    nano = NanoGPTWindows(prefix + ".bin", SEQ_LEN)
    lean = TokenDataset(prefix, SEQ_LEN, outputs=("input_ids", "labels"))
    loaders = {
        "nanoGPT memmap, torch DataLoader": DataLoader(nano, shuffle=True, **common),
        "nanoGPT memmap, our DataLoader": ResumableDataLoader(nano, shuffle=True, seed=1, **common),
        "ours, concat, input_ids+labels": ResumableDataLoader(lean, shuffle=True, seed=1, **common),
        "ours, concat, all 4 outputs": ResumableDataLoader(
            ours_concat, shuffle=True, seed=1, **common
        ),
        "ours, shuffle, all 4 outputs": ResumableDataLoader(
            ours_shuffle, shuffle=True, seed=1, **common
        ),
        "ours, concat, input_ids+labels, collate_windows": ResumableDataLoader(
            lean, shuffle=True, seed=1, collate_fn=collate_windows, **common
        ),
        "ours, concat, 4 outputs, collate_windows": ResumableDataLoader(
            ours_concat, shuffle=True, seed=1, collate_fn=collate_windows, **common
        ),
        "ours, shuffle, 4 outputs, collate_windows": ResumableDataLoader(
            ours_shuffle, shuffle=True, seed=1, collate_fn=collate_windows, **common
        ),
    }
    gpt = megatron_gpt(prefix, os.path.join(directory, "megatron-cache"))
    if isinstance(gpt, str):
        print(f"(megatron-core GPTDataset skipped: {gpt})")
    else:
        loaders["megatron-core GPTDataset, torch DataLoader"] = DataLoader(gpt, **common)
    best = {name: 0.0 for name in loaders}
    cpu: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(repeats):
        for name, loader in loaders.items():
            tokens_per_s, cpu_seconds = rate(loader, batches)
            best[name] = max(best[name], tokens_per_s)
            cpu[name].append(cpu_seconds)
    base = "nanoGPT memmap, torch DataLoader"
    base_cpu = statistics.median(cpu[base])
    print(
        f"# {ours_concat.num_tokens:,} tokens, {ours_concat.num_documents:,} documents, "
        f"seq_len {SEQ_LEN}, batch {BATCH}, {WORKERS} workers; tokens/s: batches "
        f"{WARMUP}-{batches}, best of {repeats}; CPU: main + workers, start-up included, "
        f"median of {repeats}"
    )
    print(f"{'loader':<50}{'Mtokens/s':>10}{'vs nanoGPT':>11}{'CPU s/1e8':>11}{'vs nanoGPT':>11}")
    for name, value in best.items():
        used = statistics.median(cpu[name])
        print(
            f"{name:<50}{value / 1e6:>10.2f}{value / best[base]:>11.3f}{used:>11.2f}"
            f"{base_cpu / used:>11.3f}"
        )


def seek_tables(counts: list[int], repeats: int) -> None:
    print(f"\n# seek table build, best of {repeats} (documents of 1-2000 tokens)")
    print(f"{'documents':>12}{'ours s':>10}{'numpy s':>10}{'ours/numpy':>12}{'MB':>8}")
    rng = np.random.default_rng(1)
    for count in counts:
        offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 2001, count))]).astype(np.int64)
        ours, theirs = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            table = SeekTable(offsets, seed=1, epoch=0)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            ids = table.order.fill(0, count)
            lengths = np.diff(offsets)[ids]
            reference = np.concatenate([[0], np.cumsum(lengths)])
            theirs.append(time.perf_counter() - start)
            assert np.array_equal(reference, table.starts)
        print(
            f"{count:>12,}{min(ours):>10.3f}{min(theirs):>10.3f}"
            f"{min(ours) / min(theirs):>12.3f}{table.starts.nbytes / 1e6:>8.0f}"
        )


def first_batch(prefix: str, mode: str, fraction: float) -> float:
    start = time.perf_counter()
    loader = ResumableDataLoader(
        TokenDataset(prefix, SEQ_LEN, documents=mode),
        batch_size=BATCH,
        shuffle=True,
        num_workers=WORKERS,
        seed=1,
    )
    if fraction:
        position = int(len(loader.dataset) * fraction) // BATCH * BATCH
        loader.load_state_dict(loader.state_at(0, position))
    iterator = iter(loader)
    next(iterator)
    elapsed = time.perf_counter() - start
    del iterator
    return elapsed


def resume(directory: str, documents: int, repeats: int) -> None:
    prefix = write_sparse(directory, "resume", documents, 1000)
    print(
        f"\n# time to first batch, {documents * 1000:.0e} tokens in {documents:.0e} documents "
        f"(sparse .bin), {WORKERS} workers, batch {BATCH}; median of {repeats}"
    )
    print(f"{'mode':<10}{'fresh s':>10}{'at 90% s':>10}{'90%/fresh':>11}")
    for mode in ("concat", "shuffle"):
        times: dict[float, list[float]] = {0.0: [], 0.9: []}
        for _ in range(repeats):  # alternating, so that load on the machine hits both alike
            for fraction, runs in times.items():
                runs.append(first_batch(prefix, mode, fraction))
        fresh, late = (statistics.median(times[f]) for f in (0.0, 0.9))
        print(f"{mode:<10}{fresh:>10.2f}{late:>10.2f}{late / fresh:>11.3f}")


def worker_memory() -> list[tuple[float, float]]:
    """(private dirty MiB, proportional MiB) of each child process of this one.

    Private dirty pages are what a worker allocated and wrote itself (its own arrays, the
    seek table); pages of the token files it alone touched count as private too, but clean
    (page cache, dropped under memory pressure), so they are left out.
    """
    pid = os.getpid()
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(c) for c in f.read().split()]
    out = []
    for child in children:
        fields = {}
        with open(f"/proc/{child}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    fields[parts[0].rstrip(":")] = int(parts[1]) / 1024
        out.append((fields["Private_Dirty"], fields["Pss"]))
    return out


def memory(directory: str, documents: int) -> None:
    prefix = write_sparse(directory, "memory", documents, 1000)
    print(
        f"\n# memory per worker after 50 batches, {documents * 1000:.0e} tokens in "
        f"{documents:.0e} documents, {WORKERS} workers"
    )
    print(f"{'loader':<34}{'own MiB':>9}{'PSS MiB':>10}  (largest worker; own: private dirty)")
    cases = {
        "nanoGPT memmap, torch DataLoader": lambda: DataLoader(
            NanoGPTWindows(prefix + ".bin", SEQ_LEN),
            batch_size=BATCH,
            shuffle=True,
            num_workers=WORKERS,
        ),
        "ours, concat, all 4 outputs": lambda: ResumableDataLoader(
            TokenDataset(prefix, SEQ_LEN),
            batch_size=BATCH,
            shuffle=True,
            num_workers=WORKERS,
            seed=1,
        ),
        "ours, shuffle, all 4 outputs": lambda: ResumableDataLoader(
            TokenDataset(prefix, SEQ_LEN, documents="shuffle"),
            batch_size=BATCH,
            shuffle=True,
            num_workers=WORKERS,
            seed=1,
        ),
    }
    for name, make in cases.items():
        iterator = iter(make())
        for _ in range(50):
            next(iterator)
        sizes = worker_memory()
        own = max(u for u, _ in sizes)
        pss = max(p for _, p in sizes)
        print(f"{name:<34}{own:>9.1f}{pss:>10.1f}")
        del iterator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat")
    parser.add_argument("--tokens", type=float, default=1e8, help="throughput corpus size")
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.batches, args.repeats = 2e7, 100, 1
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as directory:
        prefix = write_corpus(directory, int(args.tokens))
        throughput(prefix, directory, args.batches, args.repeats)
        seek_tables([10**6] if args.quick else [10**6, 10**7], args.repeats)
        resume(directory, 10**6 if args.quick else 10**7, args.repeats)
        memory(directory, 10**6)


if __name__ == "__main__":
    main()
