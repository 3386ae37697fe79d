"""dataset_fingerprint: identities of torch's wrappers, HF datasets and ours, in the cursor."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from shard_factory import write_tar_shards
from tokens_factory import documents, write_megatron
from torch.utils.data import ConcatDataset, Dataset, StackDataset, Subset, TensorDataset

from resumable_loader import ResumableDataLoader, TarShardDataset, TokenDataset
from resumable_loader.errors import StateDictError
from resumable_loader.loader.identity import TENSOR_SAMPLE, dataset_fingerprint
from resumable_loader.mixture import Mixture


class Blank(Dataset):
    """A dataset with no identity of its own: sample i is i."""

    def __init__(self, length: int = 100) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


class Named(Blank):
    def __init__(self, fingerprint: str, length: int = 100) -> None:
        super().__init__(length)
        self.fingerprint = fingerprint


def ids(loader: ResumableDataLoader, batches: int | None = None) -> list[int]:
    out = []
    for i, batch in enumerate(loader):
        out += batch.tolist()
        if batches is not None and i + 1 == batches:
            break
    return out


class TestResume:
    def loader(self, dataset: Dataset) -> ResumableDataLoader:
        return ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=7)

    @pytest.mark.parametrize("to_indices", [list, np.array, torch.tensor])
    def test_another_subset_of_the_same_length_is_refused(self, to_indices):
        inner = Blank()  # no identity of its own: the indices tell the subsets apart
        saved = self.loader(Subset(inner, to_indices(range(0, 50))))
        ids(saved, batches=3)
        state = saved.state_dict()
        other = self.loader(Subset(inner, to_indices(range(50, 100))))
        with pytest.raises(StateDictError, match=r"field 'fingerprint\.dataset': saved 'Subset-"):
            other.load_state_dict(state)

    def test_a_token_dataset_of_another_seq_len_is_refused_saying_what_its_identity_covers(
        self, tmp_path
    ):
        path = write_megatron(tmp_path, "a", documents(1, 40))
        saved = self.loader(TokenDataset([path], seq_len=8))
        next(iter(saved))
        other = self.loader(TokenDataset([path], seq_len=16))
        with pytest.raises(StateDictError, match=r"fingerprint\.dataset.*dtype, seq_len"):
            other.load_state_dict(saved.state_dict())

    def test_an_equal_subset_resumes_the_stream(self):
        inner = Blank()
        continuous = ids(self.loader(Subset(inner, list(range(0, 100, 2)))))
        saved = self.loader(Subset(inner, list(range(0, 100, 2))))
        head = ids(saved, batches=3)
        resumed = self.loader(Subset(Blank(), range(0, 100, 2)))  # equal, as a range
        resumed.load_state_dict(saved.state_dict())
        assert head + ids(resumed) == continuous

    def test_the_loader_records_the_identity(self, tmp_path):
        shards = TarShardDataset(write_tar_shards(tmp_path, num_shards=1, samples_per_shard=4))
        for dataset in (shards, Subset(shards, [3, 1])):
            fingerprint = self.loader(dataset).fingerprint()["dataset"]
            assert fingerprint == dataset_fingerprint(dataset) != ""


def differ(*datasets: Dataset) -> bool:
    """Whether the datasets' identities are all different from each other."""
    fingerprints = [dataset_fingerprint(d) for d in datasets]
    return len(set(fingerprints)) == len(fingerprints)


class TestTypes:
    def test_a_fingerprint_attribute_is_the_identity(self, tmp_path):
        assert dataset_fingerprint(Named("abc")) == "abc"
        dataset = TarShardDataset(write_tar_shards(tmp_path, num_shards=1, samples_per_shard=4))
        assert dataset_fingerprint(dataset) == dataset.index.fingerprint
        mixture = Mixture({"a": Named("a", 10)}, {"a": 1})  # sources: checked by its order state
        assert dataset_fingerprint(mixture) == "Mixture"

    def test_subset_indices_and_inner_identity(self):
        a, b = Named("a"), Named("b")
        assert dataset_fingerprint(Subset(a, [1, 2])) == dataset_fingerprint(
            Subset(Named("a"), np.array([1, 2], dtype=np.int32))
        )
        assert differ(Subset(a, [1, 2]), Subset(a, [2, 1]), Subset(b, [1, 2]), Subset(a, [1]))
        assert dataset_fingerprint(Subset(a, [1, 2])).startswith("Subset-")

    def test_subset_indices_changed_in_place_are_seen(self):
        subset = Subset(Named("a"), torch.tensor([1, 2]))
        before = dataset_fingerprint(subset)
        subset.indices[0] = 5  # a tensor counts its in-place changes
        after = dataset_fingerprint(subset)
        subset.indices = [1, 2]
        assert before != after and dataset_fingerprint(subset) == before

    def test_concat_parts_and_their_order(self):
        a, b = Named("a", 10), Named("b", 10)
        assert dataset_fingerprint(ConcatDataset([a, b])) == dataset_fingerprint(
            ConcatDataset([Named("a", 10), Named("b", 10)])
        )
        assert differ(ConcatDataset([a, b]), ConcatDataset([b, a]), ConcatDataset([a, a]))

    def test_parts_without_identity_count_by_type_and_length(self):
        assert differ(ConcatDataset([Blank(10), Blank(20)]), ConcatDataset([Blank(20), Blank(10)]))

    def test_stack_parts_and_keys(self):
        a, b = Named("a", 10), Named("b", 10)
        assert dataset_fingerprint(StackDataset(a, b)) == dataset_fingerprint(
            StackDataset(Named("a", 10), Named("b", 10))
        )
        assert differ(StackDataset(a, b), StackDataset(b, a), StackDataset(x=a, y=b))
        assert differ(StackDataset(x=a, y=b), StackDataset(y=a, x=b))

    def test_tensor_shapes_dtypes_and_values(self):
        base = torch.arange(12.0)
        same = TensorDataset(torch.arange(12.0))
        changed = base.clone()
        changed[5] = -1.0
        assert dataset_fingerprint(TensorDataset(base)) == dataset_fingerprint(same)
        before = dataset_fingerprint(same)
        same.tensors[0][3] = 7.0  # changed in place after its identity was taken
        assert dataset_fingerprint(same) != before
        assert differ(
            TensorDataset(base),
            TensorDataset(base.reshape(6, 2)),
            TensorDataset(base.double()),
            TensorDataset(changed),  # small tensors are hashed whole
            TensorDataset(base, base),
        )

    def test_large_tensors_hash_a_bounded_sample_of_elements(self):
        large = torch.zeros(4 * TENSOR_SAMPLE, 3)  # 12 elements a row: 3 rows between samples
        first, between = large.clone(), large.clone()
        first[0, 0] = 1.0  # a sampled element (both ends always are)
        between[1, 1] = 1.0  # no sampled element: not seen, the documented trade-off
        assert differ(TensorDataset(large), TensorDataset(first))
        assert dataset_fingerprint(TensorDataset(between)) == dataset_fingerprint(
            TensorDataset(large)
        )
        noncontiguous = TensorDataset(large.t())
        assert dataset_fingerprint(noncontiguous).startswith("TensorDataset-")

    def test_the_last_element_is_sampled_past_float_precision(self):
        large = torch.zeros(2**24 + 4, dtype=torch.uint8)  # 2**24 + 3 is no float32
        last = large.clone()
        last[-1] = 1
        assert differ(TensorDataset(large), TensorDataset(last))

    def test_hugging_face_datasets_by_their_fingerprint(self):
        datasets = pytest.importorskip("datasets")  # an optional extra (hf)
        a = datasets.Dataset.from_dict({"x": [1, 2, 3]})
        assert dataset_fingerprint(a) == f"datasets.Dataset-{a._fingerprint}"
        assert dataset_fingerprint(a) == dataset_fingerprint(
            datasets.Dataset.from_dict({"x": [1, 2, 3]})
        )
        assert differ(a, a.select([0, 1]), datasets.Dataset.from_dict({"x": [1, 2, 4]}))

    def test_a_duck_typed_private_fingerprint_of_another_package_is_not_used(self):
        dataset = Blank()
        dataset._fingerprint = "abc"  # only datasets.Dataset's counts
        assert dataset_fingerprint(dataset) == ""


class TestNoIdentity:
    def test_empty_with_a_warning_once_saying_how_to_give_one(self, caplog):
        class Plain(Blank):
            pass

        with caplog.at_level(logging.WARNING, logger="resumable_loader"):
            assert dataset_fingerprint(Plain()) == ""
            assert dataset_fingerprint(Plain()) == ""
            ResumableDataLoader(Plain(), batch_size=4).state_dict()
        warnings = [r for r in caplog.records if "Plain has no identity" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].name == "resumable_loader"
        assert "a `fingerprint` str attribute" in warnings[0].getMessage()

    def test_a_part_without_identity_is_warned_about(self, caplog):
        class Part(Blank):
            pass

        with caplog.at_level(logging.WARNING, logger="resumable_loader"):
            assert dataset_fingerprint(Subset(Part(), [1])).startswith("Subset-")
        assert any("Part has no identity" in r.getMessage() for r in caplog.records)
