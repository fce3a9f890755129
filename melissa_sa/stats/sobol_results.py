"""The results of a :class:`~melissa_sa.stats.SobolMartinez`, read from its state.

:class:`MartinezResults` is the part of :class:`SobolMartinez` that turns the
per-cell state (:mod:`melissa_sa.kernels.sobol`) into indices, confidence
intervals and the aggregated indices' partial sums. Every reader folds the
group buffer first (``_flush``), so buffering is invisible. The methods and
their statistics are documented on :class:`SobolMartinez`.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from melissa_sa.kernels.sobol_centred import (
    DELTA,
    DELTA_LINEAR,
    FISHER,
    martinez_indices,
    martinez_interval,
)

__all__ = ["MartinezResults", "METHODS"]

#: interval methods by name (``confidence_interval(method=...)``)
METHODS = {"delta": DELTA, "fisher": FISHER, "delta-linear": DELTA_LINEAR}


class MartinezResults:
    """Indices, intervals and aggregated sums of a SobolMartinez (a mixin: it
    reads ``_state``, ``_folded``, ``_n``, ``_second``, ``ci``, ``n_params``,
    ``n_cells`` and calls ``_flush``)."""

    def _indices(self):
        self._flush()
        first = np.empty((self.n_params, self.n_cells))
        total = np.empty((self.n_params, self.n_cells))
        martinez_indices(self._state, self.n_params, first, total)
        return first, total

    @property
    def first_order(self) -> np.ndarray:
        """``S_k = corr(Y_B, Y_Ck)``, shape ``(n_params, n_cells)``."""
        return self._indices()[0]

    @property
    def total_order(self) -> np.ndarray:
        """``ST_k = 1 - corr(Y_A, Y_Ck)``, shape ``(n_params, n_cells)``."""
        return self._indices()[1]

    @property
    def indices(self) -> tuple[np.ndarray, np.ndarray]:
        """``(first_order, total_order)`` from one pass over the state."""
        return self._indices()

    @property
    def second_order(self) -> np.ndarray:
        """``S_ij = corr(Y_Ci, Y_Dj) - S_i - S_j``, shape ``(n_pairs, n_cells)``,
        pairs in :attr:`pairs` order; needs ``second_order=True``."""
        if self._second is None:
            raise ValueError("second_order indices need SobolMartinez(..., second_order=True)")
        self._flush()  # S_i come from the first-order state
        return self._second.indices(self._state)

    def confidence_interval(self, level: float = 0.95, method: str | None = None):
        """Two-sided confidence intervals of the first and total indices.

        Returns ``((first_low, first_high), (total_low, total_high))``, each
        array shaped ``(n_params, n_cells)``. ``method`` is ``"delta"``
        (default when the object keeps fourth-order moments, ``ci="delta"``),
        ``"fisher"`` (default with ``ci="fisher"``) or ``"delta-linear"``;
        see the class docstring. With second order, a third pair
        ``(second_low, second_high)``, each ``(n_pairs, n_cells)``: the
        prequential influence-function interval whatever ``method`` (see
        :mod:`melissa_sa.kernels.sobol_second`).
        """
        return self._interval(level, method, with_indices=False)[1]

    def indices_and_interval(self, level: float = 0.95, method: str | None = None):
        """``(indices, confidence_interval(level, method))`` from one pass over
        the state instead of two (the results writer's call, per time step);
        the same arrays as the two calls, bit for bit."""
        return self._interval(level, method, with_indices=True)

    def _interval(self, level, method, with_indices):
        level = float(level)
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        if method is None:
            method = self.ci
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        if method != "fisher" and self.ci != "delta":
            raise ValueError(
                f"method {method!r} needs the fourth-order co-moments: build "
                "SobolMartinez(..., ci='delta')"
            )
        self._flush()
        q = NormalDist().inv_cdf(0.5 + 0.5 * level)
        shape = (self.n_params, self.n_cells)
        out = [np.empty(shape) for _ in range(4)]
        index_shape = shape if with_indices else (self.n_params, 0)
        first, total = np.empty(index_shape), np.empty(index_shape)
        martinez_interval(self._state, self._folded, self.n_params, q,
                          METHODS[method], *out, first, total)
        bounds = (out[0], out[1]), (out[2], out[3])
        if self._second is not None:
            bounds += (self._second.interval(self._state, self._n, q),)
        return ((first, total) if with_indices else None), bounds

    def aggregated_sums(self) -> np.ndarray:
        """This object's partial sums for the field's aggregated indices.

        Shape ``(4, n_params)``, rows ``sum_c XY11(B, C_k)``,
        ``sum_c sqrt(B2 Ck2)``, ``sum_c XY11(A, C_k)``, ``sum_c sqrt(A2 Ck2)``
        over this object's cells. Sums from disjoint sets of cells (server
        ranks) add up: reduce them with a sum, then call
        :func:`aggregate_indices`. No cell is gathered.
        """
        self._flush()
        st = self._state
        out = np.empty((4, self.n_params))
        for k in range(self.n_params):
            i = 5 + 4 * k
            out[0, k] = st[:, i + 3].sum()
            out[1, k] = np.sqrt(st[:, 4] * st[:, i + 1]).sum()
            out[2, k] = st[:, i + 2].sum()
            out[3, k] = np.sqrt(st[:, 3] * st[:, i + 1]).sum()
        return out

