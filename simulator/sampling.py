"""Draws from a seeded numpy Generator that the standard ones do not give directly."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
ObjectArray = npt.NDArray[np.object_]


def rank_weights(n: int) -> FloatArray:
    """Weights 1 / (k + 1) for k = 0..n-1, normalised: the k-th choice is the (k+1)-th most likely."""
    weights: FloatArray = 1.0 / np.arange(1, n + 1, dtype=np.float64)
    return weights / float(weights.sum())


def uuids(rng: np.random.Generator, n: int) -> ObjectArray:
    """Version-4-shaped UUID strings from the seeded generator (uuid4() would break determinism)."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hex_digits = np.frombuffer(raw.tobytes().hex().encode("ascii"), dtype=np.uint8).reshape(n, 32)
    dash = np.full((n, 1), ord("-"), dtype=np.uint8)
    spelled = np.concatenate(
        [
            hex_digits[:, :8],
            dash,
            hex_digits[:, 8:12],
            dash,
            hex_digits[:, 12:16],
            dash,
            hex_digits[:, 16:20],
            dash,
            hex_digits[:, 20:],
        ],
        axis=1,
    )
    # Vectorised spelling is twice as fast as formatting each id in Python.
    out: ObjectArray = spelled.view("S36").ravel().astype("U36").astype(object)
    return out


def capped_exponential(rng: np.random.Generator, shape: tuple[int, ...], low: int, mean: int, high: int) -> IntArray:
    """Integer delays in [low, high): low plus an exponential of the given mean, capped."""
    delay = low + np.minimum(rng.exponential(mean, shape), high - low - 1)
    return delay.astype(np.int64)
