"""Bad samples in lock-step: substituted deterministically, quarantined, resumed exactly.

The stream is compared whole: (sample id, augmentation draw) per sample, batches in order, for
the continuous run and for runs interrupted and resumed with other workers, batch size or
world size; the 2-rank runs are real torchrun/gloo launches with corrupt samples met by one
rank only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bad_samples_job import LENGTH, Corrupt, loader
from hypothesis import given, settings
from hypothesis import strategies as st
from shard_factory import write_tar_shards
from torchrun_harness import rank_pickles, torchrun

from resumable_loader import DataLoader, Mixture, TarShardDataset
from resumable_loader.errors import BadSampleError, ConfigError
from resumable_loader.loader.bad_samples import quarantine_file, read_quarantine, substitute_id
from resumable_loader.loader.keyed_fetch import install_batch_sample_key

JOB = Path(__file__).parent / "bad_samples_job.py"
BAD = {5, 29}


def stream(data, batches: int | None = None) -> list[list[int]]:
    """The samples of ``batches`` batches (default: to the epoch's end), flattened."""
    out = []
    for count, batch in enumerate(data):
        out += batch.tolist()
        if batches is not None and count + 1 == batches:
            break
    return out


def test_substitutes_are_a_pure_function_of_the_position(tmp_path):
    clean = stream(loader(Corrupt(set()), str(tmp_path / "clean"), batch_size=4))
    got = {
        workers: stream(
            loader(Corrupt(BAD), str(tmp_path / f"q{workers}"), batch_size=4, num_workers=workers)
        )
        for workers in (0, 2)
    }
    assert got[0] == got[2] and len(got[0]) == len(clean) == LENGTH
    replaced = [p for p, (a, b) in enumerate(zip(clean, got[0], strict=True)) if a != b]
    assert sorted(clean[p][0] for p in replaced) == sorted(BAD)
    for position in replaced:  # the first candidate (none of the bad ones here), its key's draw
        assert got[0][position][0] == substitute_id(11, 0, position, 0, LENGTH)
    entries = read_quarantine(tmp_path / "q0")
    assert sorted(entries) == sorted(BAD)
    assert {e["position"] for e in entries.values()} == set(replaced)
    assert all(e["error"].startswith("OSError: image file is truncated") for e in entries.values())


def test_a_quarantined_sample_is_not_read_again_next_epoch_or_after_a_resume(tmp_path):
    dataset = Corrupt(BAD)
    data = loader(dataset, str(tmp_path), batch_size=4)
    first, second = stream(data), stream(data)
    assert sorted(dataset.reads) == sorted(BAD)  # each read once, in epoch 0 only
    resumed_dataset = Corrupt(BAD)
    resumed = loader(resumed_dataset, str(tmp_path), batch_size=5)
    resumed.load_state_dict(resumed.state_at(0, 0))
    assert stream(resumed) == first and stream(resumed) == second
    assert resumed_dataset.reads == []


@pytest.mark.parametrize("workers", [0, 2])
def test_a_flaky_read_is_replayed_as_its_substitute_after_a_resume(tmp_path, workers):
    """A read that fails once: the resumed run must not read it fresh (it would succeed), but
    deliver the substitute the first run delivered, because the quarantine says so."""
    flag = tmp_path / "fail-once"
    flag.touch()
    quarantine = tmp_path / "q"
    data = loader(Corrupt(set(), {7}, str(flag)), str(quarantine), batch_size=4)
    batches = iter(data)
    head = [s for _ in range(2) for s in next(batches).tolist()]
    state = data.state_dict()
    rest = [s for batch in batches for s in batch.tolist()]
    assert 7 in read_quarantine(quarantine) and not flag.exists()
    assert read_quarantine(quarantine)[7]["position"] >= 8  # it failed after the cursor
    resumed = loader(
        Corrupt(set(), {7}, str(flag)), str(quarantine), batch_size=3, num_workers=workers
    )
    resumed.load_state_dict(state)
    assert stream(resumed) == rest
    again = loader(Corrupt(set(), {7}, str(flag)), str(quarantine), batch_size=4)
    assert stream(again) == head + rest


def test_too_many_bad_samples_is_a_typed_error_naming_the_count_and_the_file(tmp_path):
    data = loader(Corrupt(set(range(0, LENGTH, 4))), str(tmp_path), batch_size=4)
    with pytest.raises(
        BadSampleError,
        match=r"rank 0: 10 samples failed to load .*quarantine-"
        r"rank-00000.jsonl\), more than max_bad_fraction=0.2 of the 48",
    ):
        stream(data)


def at_positions(positions: tuple[int, ...], epoch: int = 0) -> set[int]:
    """The ids at ``positions`` of ``epoch`` in the tests' order."""
    order = loader(Corrupt(set()), None, batch_size=1)
    return {order.sample_at(epoch, p)["id"] for p in positions}


# 3 of 48 fail, past the limit of 2 that max_bad_fraction=0.05 gives; the third at position 31
PAST_LIMIT, THIRD = at_positions((9, 21, 31)), 31


def until_stopped(data, match: str = r"rank 0: 3 samples failed to load") -> list[list[int]]:
    """The samples ``data`` (a loader or its iterator) delivers before it raises
    BadSampleError (it must)."""
    delivered = []
    with pytest.raises(BadSampleError, match=match):
        for batch in data:
            delivered += batch.tolist()
    return delivered


def limited(quarantine: str | None, **kwargs) -> DataLoader:
    """A loader over PAST_LIMIT's dataset with a limit of 2 bad samples."""
    return loader(Corrupt(PAST_LIMIT), quarantine, max_bad_fraction=0.05, **kwargs)


def unlimited_stream(bad: set[int], epochs: int = 1) -> list[list[int]]:
    """The stream of ``epochs`` epochs, substitutes included, with no limit."""
    data = loader(Corrupt(bad), None, batch_size=4, max_bad_fraction=1)
    return [sample for _ in range(epochs) for sample in stream(data)]


@pytest.mark.parametrize("quarantined", [False, True])
def test_the_run_stops_at_the_batch_holding_the_failure_past_the_limit_whatever_the_layout(
    tmp_path, quarantined
):
    """The limit is counted per rank, in the main process, as batches are delivered: with 0
    or 2 workers and batches of 3, 4 or 5, the samples delivered are the stream's up to the
    batch holding the position of the third failure (the limit is 2), and that batch raises."""
    whole = unlimited_stream(PAST_LIMIT)
    for workers in (0, 2):
        for size in (3, 4, 5):
            quarantine = str(tmp_path / f"{workers}-{size}") if quarantined else None
            data = limited(quarantine, batch_size=size, num_workers=workers)
            assert until_stopped(data) == whole[: THIRD // size * size], (workers, size)


def test_the_count_is_over_the_whole_run_so_a_restarted_run_stops_at_once(tmp_path):
    """A run restarted over the quarantine of one that stopped stops before its first batch,
    also from a state taken before the stop; one resumed after a kill (its quarantine still
    within the limit) stops where the continuous run stops, with other workers and batches."""
    whole = unlimited_stream(PAST_LIMIT)
    stopped = str(tmp_path / "stopped")
    first = limited(stopped, batch_size=4)
    batches = iter(first)
    head = next(batches).tolist()
    early = first.state_dict()
    assert head + until_stopped(batches) == whole[: THIRD // 4 * 4]
    match = r"rank 0: 3 samples failed to load \(.*quarantine-rank-00000.jsonl\), more than"
    again = limited(stopped, batch_size=4)
    again.load_state_dict(early)
    assert until_stopped(again, match) == []
    assert until_stopped(limited(stopped, batch_size=3, num_workers=2), match) == []

    killed = str(tmp_path / "killed")
    data = limited(killed, batch_size=4)
    batches, head = iter(data), []
    while len(head) + 4 <= THIRD:
        head += next(batches).tolist()
    state = data.state_dict()
    del batches  # killed before the third failure
    resumed = limited(killed, batch_size=3, num_workers=2)
    resumed.load_state_dict(state)
    start = len(head)
    assert head + until_stopped(resumed) == whole[: start + (THIRD - start) // 3 * 3]


def test_failures_count_over_epochs(tmp_path):
    """Two samples fail in epoch 0 and a third (newly broken) in epoch 1: the count is over the
    run, not per epoch, so epoch 1 stops at the batch holding the third, with or without a
    quarantine (the limit is 2)."""
    two, third = at_positions((9, 21)), at_positions((31,), epoch=1)
    whole = unlimited_stream(two, epochs=2)
    for quarantine in (None, str(tmp_path)):
        dataset = Corrupt(two)
        data = loader(dataset, quarantine, batch_size=4, max_bad_fraction=0.05)
        assert stream(data) == whole[:LENGTH]
        dataset.bad |= third
        assert until_stopped(data) == whole[LENGTH : LENGTH + 28]


def test_raise_is_the_default_and_bad_arguments_are_named(tmp_path):
    with pytest.raises(OSError, match="image file is truncated"):
        stream(DataLoader(Corrupt(BAD), batch_size=4, shuffle=True, seed=11))
    with pytest.raises(ConfigError, match=r"on_sample_error must be one of \('raise', 'subst"):
        DataLoader(Corrupt(BAD), on_sample_error="skip")
    with pytest.raises(ConfigError, match=r"max_bad_fraction must be in \[0, 1\], got 2"):
        loader(Corrupt(BAD), str(tmp_path), batch_size=4, max_bad_fraction=2)
    with pytest.raises(ConfigError, match=r"quarantine_dir needs on_sample_error='substitute'"):
        DataLoader(Corrupt(BAD), quarantine_dir=str(tmp_path))
    (tmp_path / "a-file").write_text("")
    for folder in ("a-file", "a-file/under"):  # a file there, or a folder under a file
        with pytest.raises(ConfigError, match=rf"quarantine_dir='.*{folder}': cannot make"):
            loader(Corrupt(BAD), str(tmp_path / folder), batch_size=4)


def test_a_quarantine_line_that_is_not_an_entry_is_named(tmp_path):
    quarantine = tmp_path / "q"
    quarantine.mkdir()
    lines = ['{"id": 3, "epoch": 0}', '{"id": 4, "epo', '{"epoch": 0, "sample": 7}']
    (quarantine / "quarantine-rank-00000.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"quarantine-rank-00000\.jsonl, line 3: .*int 'id'"):
        loader(Corrupt(BAD), str(quarantine), batch_size=4)  # line 2, cut by a kill: skipped


def test_an_entry_after_a_line_cut_by_a_kill_is_kept(tmp_path):
    """The kill cut the last line mid-write (no newline): the next entry starts a line of its
    own, so only the cut entry is lost (its sample read again), not the next one too."""
    quarantine = tmp_path / "q"
    quarantine.mkdir()
    (quarantine / "quarantine-rank-00000.jsonl").write_text('{"id": 3, "epoch": 0}\n{"id": 4, "ep')
    dataset = Corrupt(BAD)
    stream(loader(dataset, str(quarantine), batch_size=4))
    assert sorted(read_quarantine(quarantine)) == sorted({3} | BAD)
    again = Corrupt(BAD)
    stream(loader(again, str(quarantine), batch_size=4))
    assert again.reads == []  # every bad sample known from the file


def test_hand_written_entries_count_and_unreadable_files_are_named(tmp_path):
    quarantine = tmp_path / "q"
    quarantine.mkdir()
    entries = "".join(f'{{"id": {i}}}\n' for i in (1, 2, 3))  # ids only: valid entries
    (quarantine / "quarantine-rank-00000.jsonl").write_text(entries)
    with pytest.raises(BadSampleError, match=r"3 samples failed .* sample 3 at epoch \?"):
        iter(loader(Corrupt(set()), str(quarantine), batch_size=4, max_bad_fraction=0.05))
    folder = tmp_path / "folder"
    (folder / "quarantine-rank-00000.jsonl").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"quarantine-rank-00000\.jsonl: cannot read the"):
        loader(Corrupt(set()), str(folder), batch_size=4)
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "quarantine-rank-00000.jsonl").write_bytes(b'\xff\xfe{"id": 2}\n{"id": 5}\n')
    assert sorted(read_quarantine(binary)) == [5]  # the undecodable line is skipped


def test_a_mixture_epoch_limit_is_a_share_of_samples_per_epoch(tmp_path):
    """The limit is a share of what an epoch reads: a Mixture's samples_per_epoch (20 here:
    floor(0.05 * 20) = 1), not its sources' samples (96)."""
    mixture = Mixture(
        {"a": Corrupt(set(range(0, LENGTH, 3))), "b": Corrupt(set(range(0, LENGTH, 3)))},
        {"a": 1, "b": 1},
        samples_per_epoch=20,
    )
    data = loader(mixture, str(tmp_path), batch_size=4, max_bad_fraction=0.05)
    with pytest.raises(BadSampleError, match=r"2 samples failed .* of the 20 it reads .*limit 1"):
        stream(data)


def reference(tmp_path: Path, batch_size: int) -> list[list[int]]:
    """The one-process stream (world size 1), its own quarantine."""
    return stream(
        loader(Corrupt(BAD_ON_RANK_1), str(tmp_path / "reference"), batch_size=batch_size)
    )


def bad_on_rank(rank: int, world_size: int, batch_size: int, count: int) -> set[int]:
    """``count`` sample ids that rank ``rank`` reads in epoch 0 (and the others do not)."""
    order = loader(Corrupt(set()), None, batch_size=batch_size, rank=0, world_size=1)
    positions = [p for p in range(LENGTH) if (p // batch_size) % world_size == rank]
    return {order.sample_at(0, p)["id"] for p in positions[3 : 3 + count]}


BAD_ON_RANK_1 = bad_on_rank(1, 2, 3, 2)


@pytest.mark.slow
def test_two_ranks_stay_in_lock_step_and_resume_on_one(tmp_path):
    """2 ranks (torchrun/gloo), 0 and 2 workers, corrupt samples that rank 1 alone reads: both
    ranks deliver 8 batches of 3; the global stream is the one-process stream; rank 1's
    quarantine lists exactly the corrupt samples; a resume on 1 rank with 2 workers and
    batches of 4 from the 2-rank cursor continues it, reading no corrupt sample again."""
    whole = reference(tmp_path, 6)
    bad = ",".join(map(str, sorted(BAD_ON_RANK_1)))
    for workers in (0, 2):
        out, quarantine = tmp_path / f"out{workers}", tmp_path / f"q{workers}"
        out.mkdir()
        torchrun(
            JOB,
            2,
            out,
            quarantine,
            "--num-workers",
            workers,
            "--batch-size",
            3,
            "--bad",
            bad,
            "--save-after",
            3,
        )
        ranks = rank_pickles(out, 2)
        assert [len(r["batches"]) for r in ranks] == [8, 8] and ranks[0]["most"] == 8
        pairs = zip(*(r["batches"] for r in ranks), strict=True)
        interleaved = [s for pair in pairs for b in pair for s in b]
        assert interleaved == whole
        assert not quarantine_file(quarantine, 0).exists()
        lines = quarantine_file(quarantine, 1).read_text().splitlines()
        assert sorted(json.loads(line)["id"] for line in lines) == sorted(BAD_ON_RANK_1)
    resumed_dataset = Corrupt(BAD_ON_RANK_1)
    resumed = loader(resumed_dataset, str(tmp_path / "q0"), batch_size=4, num_workers=0)
    resumed.load_state_dict(ranks[0]["state"])
    assert stream(resumed) == whole[18:] and resumed_dataset.reads == []


def test_a_mixture_source_with_corrupt_samples_is_substituted_from_the_mixture(tmp_path):
    """A Mixture's len() is its epoch (here endless); substitutes are drawn from its ids."""

    def mixture() -> Mixture:
        return Mixture({"books": Corrupt(set()), "web": Corrupt({2, 9})}, {"books": 1, "web": 3})

    first = stream(loader(mixture(), str(tmp_path), batch_size=8), 12)
    quarantined = read_quarantine(tmp_path)
    assert len(first) == 96 and quarantined
    assert {mixture().decode(i) for i in quarantined} <= {(1, 2), (1, 9)}
    again = loader(mixture(), str(tmp_path), batch_size=4, num_workers=2)
    assert stream(again, 24) == first


@settings(max_examples=25, deadline=None)
@given(
    bad=st.sets(st.integers(0, LENGTH - 1), max_size=6),
    first_batch=st.integers(1, 7),
    second_batch=st.integers(1, 7),
    stop=st.integers(0, LENGTH - 1),
)
def test_any_resume_delivers_the_continuous_stream_substitutes_included(
    tmp_path_factory, bad, first_batch, second_batch, stop
):
    """Two epochs with random corrupt samples, interrupted in the first after ``stop``
    samples (rounded down to a batch) and resumed with another batch size: the same stream,
    substitutes included, as one run."""
    quarantine = tmp_path_factory.mktemp("q")
    continuous = loader(Corrupt(bad), str(tmp_path_factory.mktemp("c")), batch_size=first_batch)
    whole = stream(continuous) + stream(continuous)
    first = loader(Corrupt(bad), str(quarantine), batch_size=first_batch)
    batches, head = iter(first), []
    while len(head) + first_batch <= stop:
        head += next(batches).tolist()
    state = first.state_dict()
    resumed = loader(Corrupt(bad), str(quarantine), batch_size=second_batch)
    resumed.load_state_dict(state)
    rest = stream(resumed) + stream(resumed)  # the rest of epoch 0, then epoch 1
    assert head + rest == whole


class BatchedCorrupt(Corrupt):
    """Corrupt with a ``__getitems__`` that reads each sample under its own key and counts
    its calls."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__(bad)
        self.batched_reads = 0

    def __getitems__(self, ids: list[int]) -> list[torch.Tensor]:
        self.batched_reads += 1
        samples = []
        for index, sample_id in enumerate(ids):
            install_batch_sample_key(index)
            samples.append(self[sample_id])
        return samples


def test_batches_are_read_in_one_call_and_substituted_as_one_at_a_time(tmp_path):
    """Under ``substitute`` a batch without a quarantined sample is read in one
    ``__getitems__`` call; one that raises (or holds a quarantined sample) is read a sample at
    a time: the same stream as a dataset read one at a time, and after a resume."""
    clean = BatchedCorrupt(set())
    assert stream(loader(clean, str(tmp_path / "clean"), batch_size=4)) == stream(
        loader(Corrupt(set()), str(tmp_path / "clean2"), batch_size=4)
    )
    assert clean.batched_reads == LENGTH // 4
    one_at_a_time = stream(loader(Corrupt(BAD), str(tmp_path / "a"), batch_size=4))
    batched = BatchedCorrupt(BAD)
    data = loader(batched, str(tmp_path / "b"), batch_size=4)
    assert stream(data) == one_at_a_time
    assert batched.batched_reads == LENGTH // 4  # the two with a bad sample raised, then per sample
    resumed = BatchedCorrupt(BAD)
    again = loader(resumed, str(tmp_path / "b"), batch_size=4)
    again.load_state_dict(again.state_at(0, 0))
    assert stream(again) == one_at_a_time and resumed.reads == []  # quarantined: not read again
    assert resumed.batched_reads == LENGTH // 4 - 2  # the batches holding them: a sample at a time


def test_damage_our_own_datasets_report_is_substituted_in_a_batched_read(tmp_path, caplog):
    # a TarShardDataset (batched: __getitems__) whose member fails to decode raises ShardError,
    # ours: the batched path re-raised any error of ours, so the run stopped instead of
    # substituting, as the one-sample-at-a-time path did
    import json as json_module

    from shard_factory import write_tar_shards

    from resumable_loader import TarShardDataset

    def members(index: int) -> list[tuple[str, bytes]]:
        text = b"{not json" if index == 5 else json_module.dumps({"id": index}).encode()
        return [("json", text)]

    paths = write_tar_shards(tmp_path, num_shards=2, samples_per_shard=6, members=members)
    dataset = TarShardDataset(paths, decode="torch")  # the "json" member decoded by webdataset
    options = dict(batch_size=4, shuffle=True, seed=3, collate_fn=list, max_bad_fraction=0.5)
    got = list(DataLoader(dataset, on_sample_error="substitute", **options))
    ids = [sample["json"]["id"] for batch in got for sample in batch]
    assert len(ids) == 12 and 5 not in ids
    assert "sample 5 (epoch 0" in caplog.text and "(ShardError: " in caplog.text


def test_only_a_sample_s_own_failures_are_substituted():
    from resumable_loader.errors import ShardError, StorageError
    from resumable_loader.loader.bad_samples import substitutable
    from resumable_loader.storage.client import ObjectChanged

    assert substitutable(OSError("corrupt")) and substitutable(ShardError("bad member"))
    # a store out of reach, a shard replaced since indexing, a setting: every sample would be
    for error in (StorageError("s3://b/x: kept failing"), ObjectChanged("x"), ConfigError("x")):
        assert not substitutable(error)


def _fails_on_sample_7(sample: dict) -> int:
    if sample["__key__"] == "sample000007":
        raise ValueError("corrupt sample000007")
    return 0


def test_a_mixture_s_tar_source_names_the_shard_in_the_quarantine(tmp_path):
    """The entry names the shard through the Mixture (it said "shard": null)."""
    shards = write_tar_shards(tmp_path / "s", num_shards=2, samples_per_shard=6)
    tar = TarShardDataset(shards, decode=_fails_on_sample_7)
    mixture = Mixture({"tar": tar, "other": Corrupt(set())}, {"tar": 1, "other": 1})
    data = DataLoader(
        mixture,
        batch_size=4,
        seed=3,
        collate_fn=list,
        on_sample_error="substitute",
        quarantine_dir=str(tmp_path / "q"),
        max_bad_fraction=0.5,
    )
    for _ in zip(range(12), data, strict=False):
        pass
    (entry,) = read_quarantine(tmp_path / "q").values()
    assert mixture.decode(entry["id"]) == (0, 7) and entry["shard"] == shards[1]
