"""A process SIGKILLed while it writes a block into the node cache (provably inside
``NodeCache.put``: its temp file half written) leaves nothing that blocks or misleads the next
run: that run completes with the local stream, fetches only the blocks that were not published,
and leaves no temp file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from augmented_tar import Augmented
from shard_factory import write_tar_shards

from resumable_loader import DataLoader
from resumable_loader.storage.reader import Prefetch, shards_identity

BLOCK = 16384
PUBLISHED = 3  # shards whose blocks the killed writer published before it was killed
# The block being written when the writer is killed: large enough that its write takes about a
# second, so the kill lands inside it. Zeros: bytes(n) maps the zero page, costing no memory.
HUGE = 256 * 2**20
WRITER = """
import sys
from pathlib import Path
from resumable_loader.storage.block_states import BlockStates
from resumable_loader.storage.node_cache import NodeCache

root, block, published, huge, shards = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5:]
blocks = [-(-Path(path).stat().st_size // block) for path in shards] + [1]
cache = NodeCache(root, 2**40, BlockStates(Path(root).parent / "states", blocks, block))
for shard, path in enumerate(shards[:published]):
    data = Path(path).read_bytes()
    for at in range(0, len(data), block):
        cache.put((shard, at // block), data[at : at + block])
print("published", flush=True)
cache.put((published, 0), bytes(huge))
print("finished", flush=True)
"""


def temps(root: Path, pid: int) -> list[Path]:
    return list(root.glob(f".tmp-{pid}-*"))


def kill_while_writing(shards: list[str], root: Path) -> None:
    """Run the writer, SIGKILL it once its huge block's temp file has started to fill, and
    check it died inside the write: the temp file is there, short, and the block unpublished."""
    command = [sys.executable, "-c", WRITER, str(root), str(BLOCK), str(PUBLISHED), str(HUGE)]
    with subprocess.Popen([*command, *shards], stdout=subprocess.PIPE, text=True) as writer:
        try:
            assert writer.stdout.readline().strip() == "published"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                found = temps(root, writer.pid)
                if found and found[0].stat().st_size > 0:
                    break
                time.sleep(0.001)
        finally:
            writer.kill()  # SIGKILL
            writer.wait()
        assert writer.stdout.read() == ""  # never got past the write
    (temp,) = temps(root, writer.pid)
    assert 0 < temp.stat().st_size < HUGE  # killed mid-write
    assert not (root / f"{PUBLISHED}-0.blk").exists()


def test_a_kill_inside_a_block_write_does_not_block_the_next_run(tmp_path: Path) -> None:
    shards = write_tar_shards(tmp_path / "shards", num_shards=5, samples_per_shard=40)
    # where Prefetch(cache_dir=tmp_path / "cache") keeps these shards' blocks
    root = tmp_path / "cache" / f"{shards_identity(Augmented(shards).index)}-{BLOCK}" / "blocks"
    root.mkdir(parents=True)
    kill_while_writing(shards, root)
    inodes = {path.name: path.stat().st_ino for path in root.glob("*.blk")}
    assert len(inodes) == sum(-(-os.path.getsize(p) // BLOCK) for p in shards[:PUBLISHED])

    expected = [s for batch in stream(Augmented(shards)) for s in batch]
    began = time.monotonic()
    dataset = Augmented(
        shards,
        read_ahead=BLOCK,
        cache_bytes=64 * 2**20,
        prefetch=Prefetch(cache_dir=tmp_path / "cache", wait_seconds=10.0),
    )
    loader = stream(dataset, workers=2)
    got = [s for batch in loader for s in batch]
    assert got == expected
    assert time.monotonic() - began < 30  # nothing waited on the dead writer
    assert not list(root.glob(".tmp-*"))
    # the published blocks were read, not fetched again (3/5 of the data); the rest was
    # fetched about once. The 5% allows what the reader fetches as exact spans whatever the
    # cache holds (the samples of sparsely used blocks: 2% here, at the shards' tails).
    assert {name: (root / name).stat().st_ino for name in inodes} == inodes
    rest = slice(int(dataset.index.shard_offsets[PUBLISHED]), None)
    needed = int(dataset.index.spans[rest, 1].sum())  # the unpublished shards' samples
    fetched = loader.storage_stats().bytes_fetched
    assert needed <= fetched <= 1.05 * sum(os.path.getsize(p) for p in shards[PUBLISHED:])


def stream(dataset, *, workers: int = 0) -> DataLoader:
    return DataLoader(
        dataset, batch_size=16, shuffle=True, num_workers=workers, seed=7, collate_fn=list
    )
