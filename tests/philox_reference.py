"""Vectorised numpy references of Philox4x32-R, the Feistel permutation and the global RNG states.

Written from the papers' definitions (Salmon et al. SC11; Black & Rogaway's cycle walking), not
from csrc/, so a mistake in the C++ shows up as a mismatch.
"""

from __future__ import annotations

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32(counters: np.ndarray, keys: np.ndarray, rounds: int = 10) -> np.ndarray:
    """counters: (m, 4) uint32, keys: (m, 2) uint32 -> (m, 4) uint32."""
    c = counters.astype(np.uint32).copy()
    k = keys.astype(np.uint32).copy()
    with np.errstate(over="ignore"):
        for r in range(rounds):
            if r:
                k[:, 0] += W0
                k[:, 1] += W1
            p0 = c[:, 0].astype(np.uint64) * M0
            p1 = c[:, 2].astype(np.uint64) * M1
            hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), (p0 & MASK32).astype(np.uint32)
            hi1, lo1 = (p1 >> np.uint64(32)).astype(np.uint32), (p1 & MASK32).astype(np.uint32)
            c = np.stack([hi1 ^ c[:, 1] ^ k[:, 0], lo1, hi0 ^ c[:, 3] ^ k[:, 1], lo0], axis=1)
    return c


def derive(seed: int, epoch: int, positions: np.ndarray, purpose: int) -> np.ndarray:
    """Philox words for counter (position lo, position hi, epoch, purpose) under the seed."""
    positions = np.asarray(positions, dtype=np.uint64)
    counters = np.stack(
        [
            (positions & MASK32).astype(np.uint32),
            (positions >> np.uint64(32)).astype(np.uint32),
            np.full(len(positions), epoch, dtype=np.uint32),
            np.full(len(positions), purpose, dtype=np.uint32),
        ],
        axis=1,
    )
    keys = np.tile(np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32), (len(positions), 1))
    return philox4x32(counters, keys)


MAX_ROUNDS = 32


def rounds(bits: int) -> int:
    """Feistel rounds for a domain of 2**bits: small domains need more to look uniform."""
    return MAX_ROUNDS if bits <= 7 else 8


def _mix(half: np.ndarray, k0: int, k1: int) -> np.ndarray:
    h = half ^ np.uint32(k0)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h ^= np.uint32(k1)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return h


def permutation(n: int, seed: int, epoch: int, positions: np.ndarray, purpose: int = 1):
    """Feistel (unbalanced halves, alternating updates) + cycle walking, vectorised."""
    keys = derive(seed, epoch, np.arange(MAX_ROUNDS // 2), purpose).reshape(-1)
    bits = int(n - 1).bit_length()
    hi_bits, lo_bits = (bits + 1) // 2, bits // 2
    hi_mask, lo_mask = np.uint32((1 << hi_bits) - 1), np.uint32((1 << lo_bits) - 1)
    x = np.asarray(positions, dtype=np.uint64)
    todo = np.ones(len(x), dtype=bool)
    with np.errstate(over="ignore"):
        while todo.any():
            hi = (x[todo] >> np.uint64(lo_bits)).astype(np.uint32)
            lo = (x[todo] & np.uint64(lo_mask)).astype(np.uint32)
            for r in range(rounds(bits)):
                if r % 2 == 0:
                    hi ^= _mix(lo, keys[2 * r], keys[2 * r + 1]) & hi_mask
                else:
                    lo ^= _mix(hi, keys[2 * r], keys[2 * r + 1]) & lo_mask
            x[todo] = (hi.astype(np.uint64) << np.uint64(lo_bits)) | lo.astype(np.uint64)
            todo &= x >= np.uint64(n)
    return x.astype(np.int64)


def global_rng_state_words(key: tuple[int, int, int, int], generator: int) -> np.ndarray:
    """MT19937 state words of global generator 0/1/2: SplitMix64 from a Philox-derived seed."""
    w0, w1, w2, w3 = key
    block = philox4x32(np.array([[w2, w3, generator, 0]]), np.array([[w0, w1]]))[0]
    seed = np.uint64(int(block[0]) | int(block[1]) << 32)
    steps = np.arange(1, 313, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seed + steps * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return np.stack([z & MASK32, z >> np.uint64(32)], axis=1).reshape(-1).astype(np.uint32)
