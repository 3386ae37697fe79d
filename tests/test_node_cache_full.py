"""A node cache on a file system with no room: a clear error at the start, or (full once the
run is under way) the right samples without the cache; never a worker killed by SIGBUS.

"No room" is real, not mocked: each run is a child process whose file-size limit
(RLIMIT_FSIZE) is 0 where the samples are read (the main process at num_workers=0, else the
workers), so every write of file data fails with EFBIG as a full /dev/shm fails with ENOSPC
(SIGXFSZ ignored, as the error is what the code sees).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from shard_factory import write_tar_shards

TESTS = Path(__file__).parent
RUN = """
import json, resource, signal, sys
sys.path.insert(0, {tests!r})
from augmented_tar import Augmented
from resumable_loader import ConfigError, DataLoader, Prefetch

def no_room(*_):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

dataset = Augmented({shards!r}, read_ahead=16384, cache_bytes=2**20,
                    prefetch=Prefetch(cache_dir={cache!r}))
if {full} and not {workers}:
    no_room()
try:  # with workers, only they have no room (torch's own semaphores need some)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, seed=3, num_workers={workers},
                        collate_fn=list, worker_init_fn=no_room if {full} else None)
    print(json.dumps([sample[:3] for batch in loader for sample in batch]))
except ConfigError as error:
    print(json.dumps({{"ConfigError": str(error)}}))
"""


def run(shards: list[str], cache: Path, *, full: bool, workers: int) -> object:
    script = RUN.format(
        tests=str(TESTS), shards=shards, cache=str(cache), full=full, workers=workers
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    paths = write_tar_shards(tmp_path_factory.mktemp("shards"), num_shards=3, samples_per_shard=24)
    from augmented_tar import Augmented

    Augmented(paths)  # the index, written while there is room
    return paths


@pytest.mark.parametrize("workers", [0, 2])
def test_no_room_for_a_new_cache_is_a_config_error_naming_it(shards, tmp_path, workers):
    # a raw OSError before; the block states file was a sparse mapping then, so on a real
    # full tmpfs a worker's first write to it died of SIGBUS
    got = run(shards, tmp_path / "cache", full=True, workers=workers)
    assert isinstance(got, dict), got
    message = got["ConfigError"]
    assert str(tmp_path / "cache") in message and "the node cache cannot be written" in message
    assert "Prefetch(cache_dir=" in message


@pytest.mark.parametrize("workers", [0, 2])
def test_a_cache_that_fills_during_the_run_only_costs_its_caching(shards, tmp_path, workers):
    expected = run(shards, tmp_path / "room", full=False, workers=workers)
    run(shards, tmp_path / "cache", full=False, workers=0)  # the cache's folders exist
    for path in (tmp_path / "cache").rglob("*.blk"):
        path.unlink()  # no block held: each must be fetched, and none can be kept
    assert run(shards, tmp_path / "cache", full=True, workers=workers) == expected
