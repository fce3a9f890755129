"""Scrambled Sobol' points in NumPy, equal bit for bit to ``scipy.stats.qmc.Sobol``.

``scipy.stats.qmc.Sobol(d, scramble=True, rng=seed)`` (30 bits, Joe and
Kuo's direction numbers, a linear matrix scramble and a digital shift drawn
from the first child of ``numpy.random.SeedSequence(seed)``, as SciPy >= 1.15
seeds it) is the ``sobol`` sampler's sequence. Importing it imports all of
:mod:`scipy.stats`, about 0.4 s of CPU that a server would pay before
drawing its first point; this module
builds the same sequence from the same direction numbers (the ``.npz`` file
SciPy ships, read without importing :mod:`scipy.stats`) in a few
milliseconds. ``tests/test_sobol_points.py`` compares it with SciPy's
engine point for point.

Point ``m`` of the sequence is the shift XOR the scrambled direction
numbers of the bits set in the Gray code of ``m`` (the order of SciPy's
engine), so a draw or a jump ahead is a function of the position alone.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

__all__ = ["BITS", "SobolPoints", "direction_numbers_file"]

#: bits of each coordinate (SciPy's default): 2**30 points at most
BITS = 30


def direction_numbers_file() -> Path:
    """The direction numbers SciPy ships (``scipy/stats/_sobol_direction_numbers.npz``)."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the sobol sampler needs SciPy's Sobol' direction numbers: "
                          "install scipy")
    path = Path(next(iter(spec.submodule_search_locations))) / "stats" / \
        "_sobol_direction_numbers.npz"
    if not path.is_file():
        raise ImportError(f"the sobol sampler needs SciPy's Sobol' direction numbers: "
                          f"{path} is missing")
    return path


def _direction_columns(d: int) -> np.ndarray:
    """Unscrambled direction numbers, ``(d, BITS)`` uint32: column ``j`` is
    the number XORed in when bit ``j`` of a point's Gray code flips."""
    with np.load(direction_numbers_file()) as numbers:
        if d > numbers["poly"].shape[0]:
            raise ValueError(f"the sobol sampler supports at most "
                             f"{numbers['poly'].shape[0]} dimensions, got {d}")
        poly = numbers["poly"][:d].astype(np.int64)
        vinit = numbers["vinit"][:d].astype(np.int64)
    v = np.zeros((d, BITS), dtype=np.int64)
    v[0, :] = 1
    for k in range(1, d):
        degree = int(poly[k]).bit_length() - 1
        v[k, :degree] = vinit[k, :degree]
        for j in range(degree, BITS):   # Bratley and Fox's recurrence
            new = v[k, j - degree]
            for i in range(degree):
                if (poly[k] >> (degree - 1 - i)) & 1:
                    new ^= v[k, j - i - 1] << (i + 1)
            v[k, j] = new
    weights = np.int64(1) << np.arange(BITS - 1, -1, -1, dtype=np.int64)
    return (v * weights).astype(np.uint32)


def _scramble(columns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The digital shift, then the columns under a random lower-triangular
    bit matrix (unit diagonal), drawn from ``rng`` in SciPy's order."""
    d = columns.shape[0]
    powers = np.uint32(1) << np.arange(BITS, dtype=np.uint32)
    shift = rng.integers(0, 2, size=(d, BITS), dtype=np.uint32) @ powers
    matrix = np.tril(rng.integers(0, 2, size=(d, BITS, BITS), dtype=np.uint32))
    matrix[:, np.arange(BITS), np.arange(BITS)] = 1
    # row r of a dimension's matrix as an integer, column c at bit BITS-1-c
    rows = matrix @ (np.uint32(1) << np.arange(BITS - 1, -1, -1, dtype=np.uint32))
    # bit BITS-1-r of a scrambled column: parity of (row r AND the column)
    parity = np.bitwise_count(rows[:, None, :] & columns[:, :, None]) & np.uint8(1)
    scrambled = (parity.astype(np.uint32)
                 << np.arange(BITS - 1, -1, -1, dtype=np.uint32)).sum(axis=2, dtype=np.uint32)
    return shift.astype(np.uint32), scrambled


class SobolPoints:
    """The scrambled Sobol' sequence of ``d`` dimensions and seed ``seed``:
    :meth:`random` draws the next points, :meth:`fast_forward` skips some."""

    def __init__(self, d: int, seed: int) -> None:
        if d < 1:
            raise ValueError(f"the sobol sampler needs at least one dimension, got {d}")
        self.d = int(d)
        # SciPy spawns its own generator from default_rng(seed)'s seed sequence
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed).spawn(1)[0]))
        self._shift, self._columns = _scramble(_direction_columns(self.d), rng)
        self.num_generated = 0

    def _points(self, first: int, n: int) -> np.ndarray:
        index = np.arange(first, first + n, dtype=np.uint64)
        gray = index ^ (index >> np.uint64(1))
        quasi = np.broadcast_to(self._shift, (n, self.d)).copy()
        for bit in range(BITS):
            flips = ((gray >> np.uint64(bit)) & np.uint64(1)).astype(bool)
            quasi[flips] ^= self._columns[:, bit]
        return quasi * (1.0 / 2**BITS)

    def _check_room(self, n: int) -> None:
        if self.num_generated + n > 2**BITS:
            raise ValueError(f"the sobol sampler has at most 2**{BITS} points: "
                             f"{self.num_generated} drawn, {n} more asked")

    def random(self, n: int) -> np.ndarray:
        """The next ``n`` points, ``(n, d)`` float64 in ``[0, 1)``."""
        self._check_room(n)
        out = self._points(self.num_generated, n)
        self.num_generated += n
        return out

    def fast_forward(self, n: int) -> None:
        """Skip the next ``n`` points."""
        self._check_room(n)
        self.num_generated += n
