"""Running mean, unbiased variance, skewness and excess kurtosis per cell."""

from __future__ import annotations

import numpy as np

from melissa_sa.kernels.moments import (
    moments_merge,
    pebay_update,
    welford_update,
    welford_update_pair,
)
from melissa_sa.stats._state import as_sample, load_state, restore_array, save_state
from melissa_sa.stats.base import Statistic


class Moments(Statistic):
    """One-pass central moments of a field, per cell.

    Keeps, for every cell, the running mean and the centred sums
    ``M2 = sum (x - mean)^2`` (and ``M3``, ``M4`` at order 4), updated by
    Welford's algorithm (order 2) or Pébay's one-pass formulas (order 4), and
    merged exactly by Pébay's pairwise formulas. See
    :mod:`melissa_sa.kernels.moments` for the update.

    Definitions (``n`` samples, ``m_k = M_k / n``):

    * ``mean``: the sample mean.
    * ``variance``: the unbiased sample variance ``M2 / (n - 1)``, as
      ``numpy.var(x, ddof=1)``; NaN while ``n < 2``.
    * ``skewness``: the Fisher-Pearson coefficient ``g1 = m3 / m2**1.5``, as
      ``scipy.stats.skew(x)`` (``bias=True``); NaN while ``n < 2``.
    * ``kurtosis``: Fisher's *excess* kurtosis ``g2 = m4 / m2**2 - 3``, as
      ``scipy.stats.kurtosis(x)`` (``fisher=True, bias=True``), so a normal
      law gives 0; NaN while ``n < 2``.

    A constant cell (``M2 == 0``) has variance 0, skewness 0 and excess
    kurtosis 0 by convention (scipy returns NaN there); no warning is raised.
    NaN in a sample propagates to that cell's statistics.

    Memory: ``8 * (order + 1)`` bytes per cell (24 at order 2, 40 at order 4):
    the centred sums plus a per-cell shift (the first sample) that keeps full
    accuracy for fields with a large offset such as ``1e9 + noise``.

    References: B. P. Welford, "Note on a method for calculating corrected
    sums of squares and products", Technometrics 4(3), 1962. P. Pébay,
    "Formulas for robust, one-pass parallel computation of covariances and
    arbitrary-order statistical moments", Sandia report SAND2008-6212, 2008.

    Example:

    >>> import numpy as np
    >>> m = Moments(3, order=4)
    >>> for x in ([1.0, 5.0, 2.0], [2.0, 5.0, 4.0], [6.0, 5.0, 9.0]):
    ...     m.update(np.array(x))
    >>> m.mean
    array([3., 5., 5.])
    >>> m.variance
    array([ 7.,  0., 13.])
    >>> m.skewness.round(6)
    array([0.59517, 0.     , 0.47033])
    """

    def __init__(self, n_cells: int, order: int = 4):
        if order not in (2, 4):
            raise ValueError(f"order must be 2 or 4, got {order!r}")
        if int(n_cells) < 1:
            raise ValueError(f"n_cells must be positive, got {n_cells!r}")
        self.n_cells = int(n_cells)
        self.order = order
        self._n = 0
        self._state = np.zeros((order + 1, self.n_cells), dtype=np.float64)

    # -- streaming -------------------------------------------------------
    def update(self, x) -> None:
        """Fold one sample ``x`` of shape ``(n_cells,)`` into the state."""
        x = as_sample(x, self.n_cells)
        if self.order == 2:
            welford_update(self._n, self._state, x)
        else:
            pebay_update(self._n, self._state, x)
        self._n += 1

    def update_pair(self, x, y) -> None:
        """Fold sample ``x`` then sample ``y`` (each ``(n_cells,)``): the state
        of ``update(x); update(y)`` bit for bit, at order 2 in one pass over
        it (at order 4 it is those two updates)."""
        x = as_sample(x, self.n_cells)
        y = as_sample(y, self.n_cells)
        if self.order == 4:
            self.update(x)
            self.update(y)
            return
        if x.dtype != y.dtype:   # one kernel signature per sample type
            y = y.astype(np.result_type(x, y))
            x = x.astype(y.dtype)
        welford_update_pair(self._n, self._state, x, y)
        self._n += 2

    def merge(self, other: Moments) -> None:
        """Fold ``other``'s samples in, exactly as if this object saw them."""
        self._check_merge(other, n_cells=self.n_cells, order=self.order)
        other_state = other._state.copy() if other is self else other._state
        moments_merge(self._n, self._state, other._n, other_state)
        self._n += other._n

    # -- results ---------------------------------------------------------
    @property
    def count(self) -> np.ndarray:
        """Samples per cell, shape ``(n_cells,)`` (a read-only broadcast view)."""
        return np.broadcast_to(np.int64(self._n), (self.n_cells,))

    @property
    def mean(self) -> np.ndarray:
        """Sample mean per cell (NaN before the first sample)."""
        if self._n == 0:
            return np.full(self.n_cells, np.nan)
        return self._state[0] + self._state[1]

    @property
    def variance(self) -> np.ndarray:
        """Unbiased sample variance ``M2 / (n - 1)``; NaN while ``n < 2``."""
        if self._n < 2:
            return np.full(self.n_cells, np.nan)
        return self._state[2] / (self._n - 1)

    def _standardised(self, k: int) -> np.ndarray:
        if self.order < k:
            raise AttributeError(f"order-{k} moments need Moments(order=4)")
        if self._n < 2:
            return np.full(self.n_cells, np.nan)
        m2 = self._state[2] / self._n
        mk = self._state[k] / self._n
        out = np.zeros(self.n_cells)
        ok = m2 > 0
        out[ok] = mk[ok] / m2[ok] ** (k / 2)
        # NaN cells propagate: m2 > 0 is False for NaN, put NaN back.
        out[np.isnan(m2)] = np.nan
        return out

    @property
    def skewness(self) -> np.ndarray:
        """Fisher-Pearson skewness ``g1 = m3 / m2**1.5`` (biased, as scipy)."""
        return self._standardised(3)

    @property
    def kurtosis(self) -> np.ndarray:
        """Fisher excess kurtosis ``g2 = m4 / m2**2 - 3`` (biased, as scipy)."""
        g = self._standardised(4)
        constant = self._state[2] == 0
        g -= 3.0
        g[constant] = 0.0
        return g

    @property
    def nbytes(self) -> int:
        """Bytes of state held (``8 * (order + 1) * n_cells``)."""
        return self._state.nbytes

    # -- checkpoint ------------------------------------------------------
    def save(self, group) -> None:
        """Write the state into an h5py group."""
        save_state(group, "Moments", {"state": self._state},
                   {"n": self._n, "order": self.order, "n_cells": self.n_cells})

    @classmethod
    def load(cls, group) -> Moments:
        """Rebuild a :class:`Moments` from a group written by :meth:`save`."""
        arrays, attrs = load_state(group, "Moments", ["state"])
        obj = cls(int(attrs["n_cells"]), order=int(attrs["order"]))
        restore_array(group, "state", obj._state, arrays["state"])
        obj._n = int(attrs["n"])
        return obj
