"""Copies of a loader (``copy.deepcopy``, pickle), as torch's DataLoader allows: fresh, after an
epoch and between two iterations; a copy continues the same stream, and the visible sampler's
``set_epoch`` of each reaches its own loader only."""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from resumable_loader import ResumableDataLoader
from resumable_loader.order import Permutation
from resumable_loader.order.shard_local import ShardLocalOrder

COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda loader: pickle.loads(pickle.dumps(loader))}


def make(shuffle: bool) -> ResumableDataLoader:
    return ResumableDataLoader(
        TensorDataset(torch.arange(20)), batch_size=3, shuffle=shuffle, seed=5
    )


def ids(batches) -> list[list[int]]:
    return [batch[0].tolist() for batch in batches]


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("shuffle", [False, True])
def test_a_copy_between_iterations_continues_the_same_stream(how, shuffle):
    original = make(shuffle)
    copied_fresh = COPIES[how](original)
    first_epoch = ids(original)
    assert ids(copied_fresh) == first_epoch
    iterator = iter(original)
    next(iterator), next(iterator)
    del iterator  # stopped two batches into epoch 1
    copied = COPIES[how](original)
    assert copied.state_dict() == original.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the superseded iterator's ResumeWarning
        assert ids(copied) == ids(original)


@pytest.mark.parametrize("how", COPIES)
def test_set_epoch_on_a_copys_sampler_moves_that_copy_only(how):
    original = make(True)
    copied = COPIES[how](original)
    copied.sampler.set_epoch(5)
    assert (original.state_dict()["epoch"], copied.state_dict()["epoch"]) == (0, 5)
    original.sampler.set_epoch(2)
    assert (original.state_dict()["epoch"], copied.state_dict()["epoch"]) == (2, 5)
    expected = make(True)
    expected.set_epoch(5)
    assert ids(copied) == ids(expected)


def test_orders_pickle_after_use_and_give_the_same_ids():
    permutation = Permutation(1000, seed=3, epoch=2)
    permutation[7]
    assert pickle.loads(pickle.dumps(permutation)).fill(0, 1000).tolist() == (
        permutation.fill(0, 1000).tolist()
    )
    order = ShardLocalOrder(np.array([40, 25, 35]), seed=3, window=2, buffer_size=8)
    before = order.ids(1, 0, 100)  # its C++ order for epoch 1 is made and kept
    assert pickle.loads(pickle.dumps(order)).ids(1, 0, 100).tolist() == before.tolist()
