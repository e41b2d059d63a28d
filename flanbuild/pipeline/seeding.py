"""Seeded, order-independent randomness.

Every random choice in flanbuild (which rows a task contributes, which template renders an example,
the order rows are interleaved in) is a pure function of (seed, names, example index). Nothing depends
on the order work is done in, so a build gives the same bytes with 1 worker or 16, cold or cached.

Keys are 64-bit: blake2b of the seed and names gives a base, and SplitMix64 mixes it with each index
(vectorised in numpy, so a million keys cost milliseconds).
"""

from __future__ import annotations

import hashlib

import numpy as np

_MASK = (1 << 64) - 1


def base_key(seed: int, *names: object) -> int:
    """A 64-bit key for (seed, names...): stable across runs, platforms and Python versions."""
    text = "\x1f".join([str(seed), *map(str, names)])
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def index_keys(seed: int, names: tuple[object, ...], indices: np.ndarray) -> np.ndarray:
    """uint64 keys for each index: SplitMix64(base_key(seed, *names) + index)."""
    with np.errstate(over="ignore"):
        x = np.asarray(indices, dtype=np.uint64) + np.uint64(base_key(seed, *names))
        x = x * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def unit_floats(seed: int, names: tuple[object, ...], indices: np.ndarray) -> np.ndarray:
    """Floats in [0, 1) from :func:`index_keys` (53 bits of each key)."""
    return (index_keys(seed, names, indices) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def choose(seed: int, names: tuple[object, ...], indices: np.ndarray, n: int) -> np.ndarray:
    """For each index, a seeded choice in range(n) (int64)."""
    return (index_keys(seed, names, indices) % np.uint64(n)).astype(np.int64)
