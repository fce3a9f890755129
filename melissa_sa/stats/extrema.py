"""Running minimum and maximum per cell."""

from __future__ import annotations

import numpy as np

from melissa_sa.kernels.extrema import extrema_init, extrema_merge, extrema_update
from melissa_sa.stats._state import as_sample, load_state, restore_array, save_state
from melissa_sa.stats.base import Statistic


class Extrema(Statistic):
    """Per-cell minimum and maximum over all samples seen.

    Exact (no rounding: the extremes are sample values). Before any sample,
    ``min`` is +inf and ``max`` is -inf. NaN propagates, as ``numpy.min``.
    Memory: 16 bytes per cell.

    Example:

    >>> import numpy as np
    >>> e = Extrema(2)
    >>> e.update(np.array([1.0, -2.0])); e.update(np.array([0.5, 3.0]))
    >>> e.min, e.max
    (array([ 0.5, -2. ]), array([1., 3.]))
    """

    def __init__(self, n_cells: int):
        if int(n_cells) < 1:
            raise ValueError(f"n_cells must be positive, got {n_cells!r}")
        self.n_cells = int(n_cells)
        self._n = 0
        self._state = extrema_init(self.n_cells)

    def update(self, x) -> None:
        """Fold one sample ``x`` of shape ``(n_cells,)`` into the state."""
        extrema_update(self._state, as_sample(x, self.n_cells))
        self._n += 1

    def merge(self, other: Extrema) -> None:
        """Fold ``other``'s extremes in (exact)."""
        self._check_merge(other, n_cells=self.n_cells)
        extrema_merge(self._state, other._state)
        self._n += other._n

    @property
    def min(self) -> np.ndarray:
        """Per-cell minimum (+inf before the first sample)."""
        return self._state[0].copy()

    @property
    def max(self) -> np.ndarray:
        """Per-cell maximum (-inf before the first sample)."""
        return self._state[1].copy()

    @property
    def nbytes(self) -> int:
        """Bytes of state held (16 per cell)."""
        return self._state.nbytes

    def save(self, group) -> None:
        """Write the state into an h5py group."""
        save_state(group, "Extrema", {"state": self._state},
                   {"n": self._n, "n_cells": self.n_cells})

    @classmethod
    def load(cls, group) -> Extrema:
        """Rebuild an :class:`Extrema` from a group written by :meth:`save`."""
        arrays, attrs = load_state(group, "Extrema", ["state"])
        obj = cls(int(attrs["n_cells"]))
        restore_array(group, "state", obj._state, arrays["state"])
        obj._n = int(attrs["n"])
        return obj
