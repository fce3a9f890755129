"""Probability of exceeding thresholds, per cell, with Wilson intervals."""

from __future__ import annotations

import numpy as np

from melissa_sa.kernels.threshold import threshold_merge, threshold_update
from melissa_sa.stats._state import as_sample, load_state, restore_array, save_state
from melissa_sa.stats.base import Statistic


class ThresholdExceedance(Statistic):
    """Per-cell probability that the output exceeds each threshold.

    ``probability[k, i] = #{samples with x[i] > thresholds[k]} / n`` (strict
    inequality), exact integer counts underneath, merged exactly by adding
    counts. :meth:`confidence_interval` gives the Wilson score interval
    (Wilson 1927, "Probable inference, the law of succession, and
    statistical inference", JASA 22), which, unlike the Wald interval, stays
    inside [0, 1] and does not collapse when the count is 0 or n.

    A NaN sample value never exceeds a threshold. Memory: ``8 * n_thresholds``
    bytes per cell.

    Example:

    >>> import numpy as np
    >>> t = ThresholdExceedance(2, [0.5, 1.0])
    >>> for x in ([0.2, 2.0], [0.7, 0.9], [0.6, 1.5], [0.1, 3.0]):
    ...     t.update(np.array(x))
    >>> t.probability
    array([[0.5 , 1.  ],
           [0.  , 0.75]])
    """

    def __init__(self, n_cells: int, thresholds):
        if int(n_cells) < 1:
            raise ValueError(f"n_cells must be positive, got {n_cells!r}")
        thr = np.asarray(thresholds, dtype=np.float64).ravel()
        if thr.size == 0:
            raise ValueError("thresholds must hold at least one value")
        if not np.all(np.isfinite(thr)):
            raise ValueError(f"thresholds must be finite, got {thr.tolist()}")
        self.n_cells = int(n_cells)
        self.thresholds = thr
        self._n = 0
        self._counts = np.zeros((thr.size, self.n_cells), dtype=np.int64)

    def update(self, x) -> None:
        """Fold one sample ``x`` of shape ``(n_cells,)`` into the counts."""
        threshold_update(self.thresholds, self._counts, as_sample(x, self.n_cells))
        self._n += 1

    def merge(self, other: ThresholdExceedance) -> None:
        """Add ``other``'s counts (same cells and thresholds) to this one."""
        self._check_merge(other, n_cells=self.n_cells, thresholds=self.thresholds)
        other_counts = other._counts.copy() if other is self else other._counts
        threshold_merge(self._counts, other_counts)
        self._n += other._n

    @property
    def counts(self) -> np.ndarray:
        """Exceedance counts, shape ``(n_thresholds, n_cells)``."""
        return self._counts.copy()

    @property
    def probability(self) -> np.ndarray:
        """``counts / n``, shape ``(n_thresholds, n_cells)``; NaN before any sample."""
        if self._n == 0:
            return np.full((self.thresholds.size, self.n_cells), np.nan)
        return self._counts / self._n

    def confidence_interval(self, level: float = 0.95):
        """Wilson score interval ``(low, high)``, each ``(n_thresholds, n_cells)``.

        With ``p = counts / n`` and ``z`` the two-sided normal quantile:
        centre ``(p + z^2/2n) / (1 + z^2/n)``, half-width
        ``z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)``.
        """
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        if self._n == 0:
            nan = np.full((self.thresholds.size, self.n_cells), np.nan)
            return nan, nan.copy()
        from scipy.special import ndtri  # here: scipy costs a server 0.1-0.2 s to import

        n = float(self._n)
        z = float(ndtri(0.5 + level / 2.0))
        p = self._counts / n
        denom = 1.0 + z * z / n
        centre = (p + z * z / (2.0 * n)) / denom
        half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
        return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)

    @property
    def nbytes(self) -> int:
        """Bytes of state held (8 per threshold per cell)."""
        return self._counts.nbytes

    def save(self, group) -> None:
        """Write the state into an h5py group."""
        save_state(group, "ThresholdExceedance",
                   {"counts": self._counts, "thresholds": self.thresholds},
                   {"n": self._n, "n_cells": self.n_cells})

    @classmethod
    def load(cls, group) -> ThresholdExceedance:
        """Rebuild from a group written by :meth:`save`."""
        arrays, attrs = load_state(group, "ThresholdExceedance", ["counts", "thresholds"])
        obj = cls(int(attrs["n_cells"]), arrays["thresholds"])
        restore_array(group, "counts", obj._counts, arrays["counts"])
        obj._n = int(attrs["n"])
        return obj
