"""verify: per-sample digests, the verdict on good and bad pipelines, and the CLI's exit codes."""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    default_collate,
    get_worker_info,
)

from resumable_loader import ConfigError, ResumableDataLoader, sample_numpy_generator
from resumable_loader.cli import main
from resumable_loader.order.partition import Partition
from resumable_loader.verify import verify_pipeline
from resumable_loader.verify.split import WHOLE_SAMPLE, digest, learn_layout, split_batch

N = 40


class Augmented(Dataset):
    """Deterministic per-sample augmentation: reseeded torch RNG and the sample's generator."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int) -> dict:
        jitter = sample_numpy_generator().normal()
        return {
            "image": torch.full((2, 3), float(index)) + torch.rand(2, 3),
            "meta": {"label": index % 3, "name": f"s{index}", "jitter": jitter},
        }


class UnseededNoise(Augmented):
    """A transform with its own unseeded RNG: a new stream every time."""

    def __getitem__(self, index: int) -> dict:
        return {"id": index, "noise": np.random.default_rng().random(2)}


class WorkerTagged(Augmented):
    """Output that depends on which worker loaded the sample."""

    def __getitem__(self, index: int) -> dict:
        info = get_worker_info()
        return {"id": index, "worker": 0 if info is None else info.id}


def mixing_collate(samples: list[dict]) -> dict:
    """Batch-level randomness: depends on the batch's composition, so on the batch size."""
    batch = torch.utils.data.default_collate(samples)
    batch["mix"] = torch.rand(len(samples))
    return batch


class Sized(Dataset):
    """``length`` deterministic samples."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple:
        return torch.full((2,), float(index)), index


class NamedPairs(Sized):
    """(x, name) samples, x as long as a short batch."""

    def __getitem__(self, index: int) -> tuple:
        return torch.full((3,), float(index)), f"s{index}"


class NamedDicts(NamedPairs):
    """The same as dicts."""

    def __getitem__(self, index: int) -> dict:
        x, name = super().__getitem__(index)
        return {"x": x, "name": name}


class StreamOfSized(IterableDataset):
    """An iterable dataset: its order lives in its own __iter__."""

    def __iter__(self):
        return iter(Sized(N))


def augmented_pair():
    return Augmented(), {"batch_size": 4, "shuffle": True, "seed": 7}


class TwoBad(Augmented):
    """Samples 5 and 30 fail to load: substituted by the loader's policy."""

    def __getitem__(self, index):
        if index in (5, 30):
            raise OSError(f"corrupt sample {index}")
        return super().__getitem__(index)


def identity(batch: list) -> list:
    """A collate_fn that keeps the samples as they are, as for variable-size samples."""
    return batch


def variable_length_collate(samples: list[tuple]) -> dict:
    """Per-batch values that belong to no one sample: a count, and time-major padding."""
    sequences = [torch.arange(1 + index % 3, dtype=torch.float32) for _, index in samples]
    return {
        "index": torch.tensor([index for _, index in samples]),
        "count": len(samples),
        "padded": torch.nn.utils.rnn.pad_sequence(sequences),  # (longest, batch): time-major
    }


class TestSplitBatch:
    def test_splits_dicts_by_key_path_and_tensors_along_dim_0(self):
        batch = {"x": torch.arange(6).view(3, 2), "meta": {"label": torch.tensor([1, 2, 3])}}
        samples, shared = split_batch(batch, 3, {})
        assert [list(s) for s in samples] == [["x", "meta.label"]] * 3
        assert samples[1]["x"] == digest(torch.tensor([2, 3]))
        assert samples[2]["meta.label"] == digest(torch.tensor(3))
        assert shared == {}

    def test_a_sequence_as_long_as_the_batch_holds_one_sample_per_element(self):
        batch = [{"x": torch.zeros(2), "name": "a"}, {"x": torch.ones(3), "name": "b"}]
        samples, shared = split_batch(batch, 2, {})
        assert samples == [
            {"x": digest(torch.zeros(2)), "name": digest("a")},
            {"x": digest(torch.ones(3)), "name": digest("b")},
        ]
        assert shared == {}

    def test_values_no_sample_owns_are_batch_level_not_copied_to_every_sample(self):
        batch = (torch.zeros(2, 1), ["a", "b"], b"shared", torch.tensor(3.0), torch.ones(5, 2))
        samples, shared = split_batch(batch, 2, {})
        assert samples[0]["[1]"] == digest("a") and samples[1]["[1]"] == digest("b")
        assert list(samples[0]) == ["[0]", "[1]"]
        assert shared == {
            "[2]": digest(b"shared"),
            "[3]": digest(torch.tensor(3.0)),
            "[4]": digest(torch.ones(5, 2)),
        }

    def test_the_learnt_layout_decides_where_a_length_equals_the_batch_size_by_chance(self):
        pairs = [(torch.full((2,), float(i)), i) for i in range(3)]
        collated = default_collate(pairs[:2])  # [images, labels]: 2 fields, not 2 samples
        layout = learn_layout(default_collate(pairs[:1] * 2), default_collate(pairs[:1] * 3), 2)
        samples, _ = split_batch(collated, 2, layout)
        assert samples[1] == {"[0]": digest(pairs[1][0]), "[1]": digest(torch.tensor(1))}
        padded = variable_length_collate([(None, 1), (None, 4)])["padded"]  # (2, 2) by chance
        probe = [variable_length_collate([(None, 1)] * n) for n in (2, 3)]
        layout = learn_layout(*probe, 2)
        assert layout == {"index": "rows", "count": "batch", "padded": "batch"}
        assert split_batch({"padded": padded}, 2, layout)[1] == {"padded": digest(padded)}

    def test_unbatched_output_is_one_sample(self):
        assert split_batch(np.ones(3), None, {}) == ([{WHOLE_SAMPLE: digest(np.ones(3))}], {})

    def test_digest_sees_dtype_and_shape_not_only_bytes(self):
        zeros = torch.zeros(4, dtype=torch.int32)
        assert digest(zeros) != digest(zeros.view(2, 2))
        assert digest(zeros) != digest(zeros.view(torch.float32))
        assert digest(zeros) != digest(zeros.numpy())

    def test_digest_takes_dtypes_numpy_lacks(self):
        assert digest(torch.ones(2, dtype=torch.bfloat16)) != digest(torch.ones(2).half())


class TestVerifyPipeline:
    def test_deterministic_pipeline_passes_across_workers_batch_sizes_and_world_sizes(self):
        report = verify_pipeline(augmented_pair, world_sizes=(1, 3), batch_sizes=(4, 5))
        assert report.passed, str(report)
        assert len(report.configurations) == 8  # 2 world sizes x 2 batch sizes x 2 worker counts
        assert any("workers=2 batch=5 world=3" in chain for chain in report.configurations)
        assert report.samples_compared == N + 8 * N
        assert str(report).endswith("PASS")

    def test_loader_factory_with_drop_last_passes_over_epochs_and_random_stops(self):
        def factory():
            return ResumableDataLoader(Augmented(), batch_size=3, drop_last=True, seed=5)

        report = verify_pipeline(
            factory, epochs=2, random_stops=3, seed=11, world_sizes=(2,), num_workers=0
        )
        assert report.passed, str(report)
        assert len(report.stops) == 3 and len(report.configurations) == 2

    @pytest.mark.parametrize("dataset", [NamedDicts, NamedPairs])
    def test_a_collate_fn_returning_the_samples_passes_across_batch_sizes(self, dataset):
        # 23 samples: the last batch of 5 holds 3, as long as each sample's x
        report = verify_pipeline(
            lambda: (dataset(23), {"batch_size": 4, "collate_fn": identity, "shuffle": True}),
            world_sizes=(1, 2),
            batch_sizes=(4, 5),
        )
        assert report.passed, str(report)
        assert report.batch_fields == []

    def test_batch_level_fields_are_compared_per_batch_and_reported_as_such(self):
        report = verify_pipeline(
            lambda: (Sized(22), {"batch_size": 4, "collate_fn": variable_length_collate}),
            world_sizes=(1, 2),
            batch_sizes=(4, 5),
            num_workers=0,
        )
        assert report.passed, str(report)
        assert report.batch_fields == ["count", "padded"]
        # every batch of the continuous check and of the world=1 batch=4 run lines up
        assert report.batches_compared >= 2 * 6
        assert report.batches_not_comparable > 0
        text = " ".join(str(report).split())
        assert "batch-level fields count, padded (not attributable to one sample" in text
        assert f"compared in {report.batches_compared} batches covering the same" in text

    def test_a_random_batch_level_field_is_caught_and_named(self):
        def collate(samples):
            return {**default_collate(samples), "scale": np.random.default_rng().random()}

        report = verify_pipeline(lambda: (Augmented(), {"batch_size": 4, "collate_fn": collate}))
        divergence = report.divergence
        assert (divergence.kind, divergence.field) == ("nondeterministic", "scale")
        assert (divergence.epoch, divergence.position, divergence.stop) == (0, 0, 4)
        assert "the batch of positions 0 to 3 (epoch 0)" in str(report)

    @pytest.mark.parametrize(
        ("options", "shuffle"),
        [
            (
                {"shuffle": True, "drop_last": True, "num_workers": 2, "persistent_workers": True},
                True,
            ),
            ({"sampler": SequentialSampler(range(N)), "drop_last": True}, False),
        ],
    )
    def test_a_torch_dataloader_is_verified_as_the_equivalent_resumable_loader(
        self, options, shuffle
    ):
        report = verify_pipeline(
            lambda: DataLoader(Augmented(), batch_size=3, **options), world_sizes=(1,)
        )
        assert report.passed, str(report)
        assert "workers=0 batch=3 world=1 -> workers=2 batch=4 world=1" in report.configurations[-1]
        assert report.stops == ["after 12 samples", "after 27 samples"]  # of 39: drop_last
        (note,) = report.notes
        assert f"batch_size=3, shuffle={shuffle}, drop_last=True" in note
        assert "converted" in str(report)

    def test_unseeded_rng_is_reported_as_nondeterministic_with_the_field(self):
        report = verify_pipeline(lambda: (UnseededNoise(), {"batch_size": 4}))
        assert not report.passed
        divergence = report.divergence
        assert (divergence.kind, divergence.field) == ("nondeterministic", "noise")
        assert (divergence.epoch, divergence.position, divergence.sample_id) == (0, 0, 0)
        assert divergence.expected != divergence.got
        text = str(report)
        assert "two continuous runs differ at position 0 (epoch 0, sample id 0)" in text
        assert "field 'noise'" in text and "sample_numpy_generator()" in text
        assert report.configurations == []  # no resume tried on a nondeterministic pipeline

    def test_a_factory_building_datasets_of_other_lengths_is_named(self):
        """Files appended between builds: named as such, not as an unseeded RNG (which the
        shifted sample ids looked like)."""
        from resumable_loader.errors import PipelineError

        built = iter(range(20, 40))
        with pytest.raises(PipelineError, match=r"built datasets of 20 and then 21 samples"):
            verify_pipeline(lambda: (Sized(next(built)), {"batch_size": 4}))

    def test_worker_dependent_output_is_caught(self):
        report = verify_pipeline(lambda: (WorkerTagged(), {"batch_size": 4}))
        divergence = report.divergence
        assert divergence is not None and divergence.kind == "worker-dependent"
        # batch 0 goes to worker 0, batch 1 (positions 4..7) to worker 1
        assert (divergence.position, divergence.sample_id, divergence.field) == (4, 4, "worker")
        assert "num_workers=0 and num_workers=2" in str(report)

    def test_first_divergence_names_position_sample_and_field(self):
        def factory():
            return Augmented(), {"batch_size": 4, "collate_fn": mixing_collate}

        report = verify_pipeline(
            factory, stops=[0.5], world_sizes=(1,), batch_sizes=(4, 5), num_workers=0
        )
        divergence = report.divergence
        assert divergence is not None and divergence.kind == "resume"
        # Stopped after 20 samples; resumed with batch 5, the batch [20, 25) is keyed by 20,
        # the continuous run's [24, 28) by 24: the first mix value that differs is position 24.
        assert (divergence.epoch, divergence.position, divergence.sample_id) == (0, 24, 24)
        assert divergence.field == "mix"
        assert len(divergence.expected) == len(divergence.got) == 16
        assert "batch=5" in divergence.run
        assert report.configurations[-1] == (
            "workers=0 batch=4 world=1 -> workers=0 batch=5 world=1"
        )

    def test_a_partition_that_loses_positions_is_reported_as_a_loader_bug(self, monkeypatch):
        batches = Partition.batches

        def without_last(self, start=0):  # as if the padded last global batch were lost
            kept = list(batches(self, start))
            return iter(kept[:-1] if self.world_size > 1 else kept)

        monkeypatch.setattr(Partition, "batches", without_last)
        report = verify_pipeline(
            augmented_pair, stops=[0.1], world_sizes=(2,), batch_sizes=(4,), num_workers=0
        )
        divergence = report.divergence
        assert (divergence.kind, divergence.field) == ("loader", "(positions)")
        assert (divergence.expected, divergence.got) == ("up to 39", "up to 35")

    def test_report_gives_where_each_run_really_stopped_not_only_the_requested_stop(self):
        report = verify_pipeline(
            lambda: (Sized(23), {"batch_size": 4}),
            stops=[0.3, 0.6],  # after 7 and 14 samples: mid-batch for most batch sizes
            world_sizes=(1,),
            batch_sizes=(4, 5, 6),
            num_workers=0,
        )
        assert report.passed, str(report)
        stopped = [
            [(i.samples, i.place.position) for i in run.interruptions] for run in report.runs
        ]
        # the first segment runs as the reference (batch 4), the second as batch 4, 5 or 6
        assert stopped == [[(8, 8), (16, 16)], [(8, 8), (18, 18)], [(8, 8), (14, 14)]]
        assert "stop after 14 samples: stopped at 18 samples (epoch 0 position 18)" in str(report)

    def test_a_stop_at_the_end_of_an_epoch_for_its_topology_resumes_at_the_next_epoch(self):
        # 20 samples, drop_last: from position 8 a global batch of 8 ends the epoch at 16 (its
        # tail [16, 20) dropped), as the cursor records; a world of 1 resumes at epoch 1, not
        # at position 16 of the continuous run
        report = verify_pipeline(
            lambda: (Sized(20), {"batch_size": 4, "shuffle": True, "drop_last": True}),
            epochs=2,
            stop_batches=[2, 3],
            world_sizes=(2,),
            batch_sizes=(4,),
            num_workers=0,
        )
        assert report.passed, str(report)
        (run,) = report.runs
        places = [(str(i.place), str(i.resumes_at)) for i in run.interruptions]
        assert places == [
            ("epoch 0 position 8", "epoch 0 position 8"),
            ("epoch 0 position 16", "epoch 1 position 0"),
        ]
        assert "(epoch 0 position 16, the end of the epoch for this configuration:" in str(report)
        # the continuous check's 2 epochs, then the resumed run: epoch 0 up to 16, epoch 1
        assert report.samples_compared == 40 + 16 + 20

    @pytest.mark.parametrize(
        ("length", "drop_last", "world_size", "batch_size", "stop_batches", "unreached"),
        [
            # from position 8 of 20, a global batch of 15 leaves no full batch: the epoch ends
            (20, True, 3, 5, None, "after 14 samples"),
            # the resumed chain has 4 global batches in all
            (17, False, 2, 4, [1, 2, 5], "after 5 batches"),
            # from position 4 of 10, a global batch of 8 leaves no full batch
            (10, True, 2, 4, None, "after 6 samples"),
            # a global batch of 12 > 10 samples: the resumed configuration delivers nothing
            (10, True, 3, 4, None, "after 6 samples"),
        ],
    )
    def test_a_stop_the_resumed_run_cannot_reach_is_reported_not_blamed_on_the_loader(
        self, length, drop_last, world_size, batch_size, stop_batches, unreached
    ):
        def factory():
            return Sized(length), {"batch_size": 4, "shuffle": True, "drop_last": drop_last}

        report = verify_pipeline(
            factory,
            stop_batches=stop_batches,
            world_sizes=(world_size,),
            batch_sizes=(batch_size,),
            num_workers=0,
        )
        assert report.passed, str(report)
        (resumed,) = report.runs
        assert [str(i.stop) for i in resumed.interruptions if i.place is None] == [unreached]
        assert f"stop {unreached}: not reached, the run ended after" in str(report)

    def test_a_loader_that_substitutes_bad_samples_is_verified_with_its_policy(self):
        # verify rebuilds the factory's loader per configuration: with "raise" in the twins,
        # sample 5 stopped the run ("could not run"); substituted, every stream matches
        def factory():
            options = {"on_sample_error": "substitute", "max_bad_fraction": 0.1}
            return ResumableDataLoader(TwoBad(), batch_size=4, shuffle=True, seed=7, **options)

        assert factory().loader_arguments()["on_sample_error"] == "substitute"
        report = verify_pipeline(factory, world_sizes=(1, 2), num_workers=0)
        assert report.passed, str(report)
        assert report.samples_compared > 3 * N

    def test_a_quarantine_dir_is_never_written_and_a_bad_first_sample_is_substituted(
        self, tmp_path
    ):
        """Each run gets a quarantine folder of its own: the 1-rank runs wrote the user's, and
        a 2-rank run then counted their failures against its own limit and stopped (a
        BadSampleError, not a verdict). The layout probe reads the first sample with the
        pipeline's policy: with "raise" it could not run when that sample failed."""
        first = ResumableDataLoader(TwoBad(), batch_size=4, shuffle=True, seed=7).sample_at(0, 0)

        class FirstBad(TwoBad):
            def __getitem__(self, index):
                if index == first["id"]:
                    raise OSError(f"corrupt sample {index}")
                return super().__getitem__(index)

        quarantine = tmp_path / "quarantine"

        def factory():
            options = dict(on_sample_error="substitute", max_bad_fraction=0.1)
            return ResumableDataLoader(
                FirstBad(), batch_size=4, shuffle=True, seed=7, quarantine_dir=quarantine, **options
            )

        # 3 bad of 40: within 0.1 on one rank (limit 4); on two, rank 0 (limit 2) would count
        # the 1-rank runs' 3 entries in a folder they shared
        report = verify_pipeline(factory, world_sizes=(1, 2), num_workers=0)
        assert report.passed, str(report)
        assert not quarantine.exists() or not list(quarantine.iterdir())

    def test_a_cursor_off_by_one_sample_is_still_reported_as_a_loader_bug(self, monkeypatch):
        state_dict = ResumableDataLoader.state_dict

        def one_ahead(self, **kwargs):
            state = state_dict(self, **kwargs)
            return {**state, "position": state["position"] + 1}

        monkeypatch.setattr(ResumableDataLoader, "state_dict", one_ahead)
        report = verify_pipeline(augmented_pair, stops=[0.5], world_sizes=(1,), num_workers=0)
        divergence = report.divergence
        assert (divergence.kind, divergence.field) == ("loader", "(state_dict)")
        assert (divergence.expected, divergence.got) == (
            "epoch 0 position 20",
            "epoch 0 position 21",
        )

    @pytest.mark.parametrize(
        ("factory", "options", "message"),
        [
            (augmented_pair, {"stops": [0.5], "stop_batches": [2]}, "only one of"),
            (augmented_pair, {"stops": [1.5]}, "fractions of the run"),
            # 40 samples in batches of 4: a first stop after 11 batches interrupts no run
            (augmented_pair, {"stop_batches": [11, 12]}, "delivers 10 global batches"),
            (augmented_pair, {"world_sizes": (0,)}, "world_sizes must be an int >= 1"),
            # an empty list would verify nothing and report PASS (or fail with an IndexError)
            (augmented_pair, {"world_sizes": []}, "world_sizes: give at least one value"),
            (augmented_pair, {"stop_batches": []}, "stop_batches: give at least one value"),
            (augmented_pair, {"stops": []}, "fractions of the run in (0, 1), got []"),
            (augmented_pair, {"random_stops": N}, "random_stops must be an int in [1, 40)"),
            (lambda: 3, {}, "returned a int, not a ResumableDataLoader"),
            (
                lambda: DataLoader(Augmented(), sampler=RandomSampler(range(N), replacement=True)),
                {},
                "not by the sampler RandomSampler: drop sampler=",
            ),
            (
                lambda: DataLoader(StreamOfSized(), batch_size=4),
                {},
                "StreamOfSized is an IterableDataset",
            ),
            (lambda: (Augmented(), {"sampler": RandomSampler(range(N))}), {}, "drop sampler="),
            (lambda: (Augmented(), {"colour": 1}), {}, "does not take"),
        ],
    )
    def test_unusable_factory_or_options_raise_config_error(self, factory, options, message):
        with pytest.raises(ConfigError, match=re.escape(message)):
            verify_pipeline(factory, **options)


PIPELINE_MODULE = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch.utils.data import Dataset

    from resumable_loader import ResumableDataLoader


    class Images(Dataset):
        def __init__(self, seeded):
            self.seeded = seeded

        def __len__(self):
            return 24

        def __getitem__(self, index):
            rng = np.random if self.seeded else np.random.default_rng()
            return {"id": index, "image": torch.full((2,), float(index)) + rng.random()}


    def good():
        return ResumableDataLoader(Images(True), batch_size=4, shuffle=True, seed=3)


    def bad():
        return Images(False), {"batch_size": 4}


    def not_a_loader():
        return [1, 2]


    def broken():
        raise RuntimeError("factory broke")


    class Corrupt(Images):
        def __init__(self, in_workers_only):
            super().__init__(True)
            self.in_workers_only = in_workers_only

        def __getitem__(self, index):
            in_worker = torch.utils.data.get_worker_info() is not None
            if index == 7 and (in_worker or not self.in_workers_only):
                raise ValueError(f"corrupt sample {index}")
            return super().__getitem__(index)


    def corrupt():
        return Corrupt(False), {"batch_size": 2}


    def corrupt_in_workers():
        return Corrupt(True), {"batch_size": 2}
    """
)


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A pipeline module in a fresh directory, importable from the current directory only."""
    name = f"pipeline_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(PIPELINE_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # restores sys.path afterwards
    return name


class TestCli:
    def test_passing_pipeline_exits_0(self, factory_module, capsys):
        args = ["verify", f"{factory_module}:good", "--world-sizes", "1,2", "--num-workers", "0"]
        assert main([*args, "--stop-at-batches", "2,4"]) == 0
        out = capsys.readouterr().out
        assert out.rstrip().endswith("PASS")
        assert "stops requested after 2 batches, after 4 batches" in out
        assert "resumed as workers=0 batch=4 world=1 -> workers=0 batch=5 world=2" in out

    @pytest.mark.slow
    def test_nondeterministic_pipeline_exits_1_with_the_divergence(self, factory_module, capsys):
        assert main(["verify", f"{factory_module}:bad", "--stop-at-batches", "2"]) == 1
        out = capsys.readouterr().out
        assert "FAIL: two continuous runs differ at position 0" in out
        assert "field 'image'" in out

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("no_colon_here", "FACTORY must be module:function"),
            ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
            ("{module}:missing", "function 'missing' not found in module '{module}'"),
            ("{module}:np", "is a module, not a function"),
            ("{module}:not_a_loader", "returned a list, not a ResumableDataLoader"),
        ],
    )
    def test_bad_factory_exits_2_with_a_message(self, factory_module, capsys, spec, message):
        assert main(["verify", spec.format(module=factory_module)]) == 2
        assert message.format(module=factory_module) in capsys.readouterr().err

    def test_a_factory_named_by_its_file_s_path(self, factory_module, tmp_path, monkeypatch):
        # from the folder above, as a relative path: it was taken for a module name
        monkeypatch.chdir(tmp_path.parent)
        args = ["verify", "--world-sizes", "1", "--num-workers", "0", "--stop-at-batches", "2"]
        assert main([*args, f"{tmp_path.name}/{factory_module}.py:good"]) == 0
        assert main([*args, f"{tmp_path.name}/missing.py:good"]) == 2

    def test_bad_option_exits_2(self, factory_module, capsys):
        assert main(["verify", f"{factory_module}:good", "--stop-at", "0.5,2"]) == 2
        assert "fractions of the run" in capsys.readouterr().err

    @pytest.mark.parametrize(
        ("factory", "error"),
        [
            ("broken", "broken() raised RuntimeError: factory broke"),
            ("corrupt", "ValueError: corrupt sample 7"),
            ("corrupt_in_workers", "ValueError: corrupt sample 7"),
        ],
    )
    @pytest.mark.slow
    def test_an_error_of_the_users_code_exits_2_in_one_line(
        self, factory_module, capsys, factory, error
    ):
        args = ["verify", f"{factory_module}:{factory}", "--world-sizes", "1"]
        assert main(args) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("resumable-loader verify: could not run: ")
        assert error in line and "--traceback" in line
        assert main([*args, "--traceback"]) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and f"{factory_module}.py" in err

    def test_help_documents_the_exit_statuses(self, capsys):
        with pytest.raises(SystemExit):
            main(["verify", "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "exit status: 0 PASS" in text
        assert "1 FAIL" in text and "2 could not run" in text
