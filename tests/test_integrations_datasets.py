"""HF datasets and other ``__getitems__`` datasets: read a batch at a time, each sample keyed."""

from __future__ import annotations

import pytest

datasets = pytest.importorskip(
    "datasets", reason="pip install -e '.[test-frameworks]' -c constraints.txt"
)
import torch
from resume_harness import AugmentedDataset, interrupted_stream, run
from torch.utils.data import Dataset, Subset

from resumable_loader import ResumableDataLoader
from resumable_loader.errors import ResumableLoaderError
from resumable_loader.loader.keyed_fetch import batch_sample_keys

N = 23
EPOCHS = 2


def keyed_rows(batch: dict) -> dict:
    """A set_transform that draws each row's noise from that row's own key."""
    keys = batch_sample_keys()
    batch["aug"] = [
        torch.from_numpy(key.numpy_generator().random(3)) + x
        for key, x in zip(keys, batch["x"], strict=True)
    ]
    return batch


def global_rows(batch: dict) -> dict:
    """A set_transform that draws from torch's global RNG, as most augmentation code does."""
    batch["aug"] = [torch.rand(3) + x for x in batch["x"]]
    return batch


def hf_dataset(transform) -> datasets.Dataset:
    rows = datasets.Dataset.from_dict({"id": list(range(N)), "x": [float(i) for i in range(N)]})
    rows.set_transform(transform)
    return rows


class OneAtATime(Dataset):
    """The same dataset without ``__getitems__``: torch and we read it a sample at a time."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        return self.inner[index]


class CountingReads(AugmentedDataset):
    """Counts batched reads and refuses per-sample ones."""

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.batched_reads = 0

    def __getitem__(self, index: int):
        raise AssertionError("a dataset with __getitems__ is read a batch at a time")

    def __getitems__(self, indices: list[int]) -> list[dict]:
        self.batched_reads += 1
        return [AugmentedDataset.__getitem__(self, i) for i in indices]


def loader(dataset, batch_size=4, num_workers=0, **kwargs) -> ResumableDataLoader:
    return ResumableDataLoader(
        dataset, batch_size=batch_size, shuffle=True, seed=11, num_workers=num_workers, **kwargs
    )


def test_a_batched_dataset_is_read_once_per_batch():
    dataset = CountingReads(N)
    stream, _ = run(loader(dataset, batch_size=5), 1)
    assert dataset.batched_reads == 5  # ceil(23 / 5)
    assert sorted(sample_id for _, sample_id, _ in stream) == list(range(N))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_per_row_keys_equal_the_per_sample_keys(num_workers):
    batched, _ = run(loader(hf_dataset(keyed_rows), num_workers=num_workers), EPOCHS)
    one_at_a_time, _ = run(loader(OneAtATime(hf_dataset(keyed_rows))), EPOCHS)
    assert batched == one_at_a_time


@pytest.mark.parametrize(("batch_size", "num_workers"), [(4, 0), (3, 2), (7, 1)])
def test_keyed_transform_resumes_exactly_under_any_batch_size(batch_size, num_workers):
    continuous, _ = run(loader(hf_dataset(keyed_rows)), EPOCHS)
    resumed = interrupted_stream(
        lambda: loader(hf_dataset(keyed_rows)),
        lambda: loader(hf_dataset(keyed_rows), batch_size=batch_size, num_workers=num_workers),
        epochs=EPOCHS,
        stop_after=3,
    )
    assert resumed == continuous


def test_global_rng_transform_resumes_exactly_with_the_same_batches():
    continuous, _ = run(loader(hf_dataset(global_rows)), EPOCHS)
    resumed = interrupted_stream(
        lambda: loader(hf_dataset(global_rows)),
        lambda: loader(hf_dataset(global_rows), num_workers=2),
        epochs=EPOCHS,
        stop_after=4,
    )
    assert resumed == continuous
    assert len({digest for _, _, digest in continuous}) == len(continuous)  # really random


def test_a_subset_of_a_plain_dataset_keeps_its_per_sample_reseed():
    plain, _ = run(loader(AugmentedDataset(N)), EPOCHS)
    subset, _ = run(loader(Subset(AugmentedDataset(N), list(range(N)))), EPOCHS)
    assert subset == plain


def test_batch_sample_keys_outside_a_fetch_is_an_error():
    with pytest.raises(ResumableLoaderError, match="only defined while"):
        batch_sample_keys()
