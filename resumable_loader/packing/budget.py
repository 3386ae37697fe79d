"""Token-budget batches without packing: samples grouped so that their padded size fits.

fairseq's ``max_tokens`` batching, made a pure function of a window's lengths: the window's
samples sorted longest first (ties in order of position), cut into consecutive groups, each
as many samples as fit ``budget`` once padded to the group's longest. Sorting within a window
keeps similar lengths together (little padding) while the window keeps the order's shuffle.
The groups are formed in C++ with the other strategies (``plan.assign(..., "pad")``).
"""

from __future__ import annotations

import numpy as np


def padded_tokens(length: np.ndarray, bins: np.ndarray) -> int:
    """Tokens the groups take once padded (samples x longest, summed): what the budget bounds."""
    if not len(bins):
        return 0
    count = np.bincount(bins)
    longest = np.zeros(len(count), dtype=np.int64)
    np.maximum.at(longest, bins, np.asarray(length, dtype=np.int64))
    return int((count * longest).sum())
