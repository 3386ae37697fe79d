"""A tar dataset whose samples show what a stream-equality test compares: the id, the key, a
digest of the bytes read and draws from the three global RNGs (under the sample's own key)."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from resumable_loader import TarShardDataset


class Augmented(TarShardDataset):
    """Each sample as (id, key, digest of its bytes, draws from the three global RNGs), read a
    sample at a time so that each draws under its own key."""

    __getitems__ = None

    def __getitem__(self, sample_id: int) -> tuple:
        sample = super().__getitem__(sample_id)
        digest = hashlib.sha1(sample["bin"] + sample["json"]).hexdigest()[:12]
        draws = (random.random(), float(np.random.rand()), float(torch.rand(()).item()))
        return (int(sample_id), sample["__key__"], digest, draws)
