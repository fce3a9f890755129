"""The second-order part of :class:`~melissa_sa.stats.SobolMartinez`.

:class:`SecondOrderState` holds the extra per-cell accumulators of the
``D_k`` rows (:mod:`melissa_sa.kernels.sobol_second`) next to the first-order
state, and folds, merges and finalises them (:class:`SobolMartinez` saves the
array as the checkpoint dataset ``second``). The
statistic owns one when built with ``second_order=True``; the estimator and
its interval are documented in ``docs/statistics.md`` ("Second-order
indices").

Estimator (Saltelli 2002 design, Martinez 2011 correlation form)::

    S_ij = corr(Y_Ci, Y_Dj) - corr(Y_B, Y_Ci) - corr(Y_B, Y_Cj),   i < j

>>> import numpy as np
>>> from melissa_sa.design import GroupLayout
>>> from melissa_sa.stats import SobolMartinez
>>> rng = np.random.default_rng(1)
>>> layout = GroupLayout(3, second_order=True)
>>> s = SobolMartinez(n_cells=1, n_params=3, second_order=True)
>>> for _ in range(4000):   # Y = 12 X1 X2 + sqrt(12) X3, X ~ U(-1/2, 1/2)^3
...     x = layout.build(rng.random((1, 3)) - 0.5, rng.random((1, 3)) - 0.5)[0]
...     s.update((12 * x[:, 0] * x[:, 1] + 12 ** 0.5 * x[:, 2])[:, None])
>>> s.pairs                # S_12 = 1/2, the other pairs 0
[(0, 1), (0, 2), (1, 2)]
>>> np.round(s.second_order.ravel(), 1) + 0.0
array([0.5, 0. , 0. ])
"""

from __future__ import annotations

import numpy as np

from melissa_sa.kernels.sobol_second import (
    second_indices,
    second_interval,
    second_merge,
    second_update,
    second_width,
)

#: groups before a cell's prequential IF^2 sums start (measured:
#: ``benchmarks/sobol_second_coverage.py``, docs/statistics.md)
IF_START = 10


def check_second_order(second_order, n_params: int) -> bool:
    """Validate the ``second_order`` flag against ``n_params``."""
    if not isinstance(second_order, (bool, np.bool_)):
        raise ValueError(f"second_order must be True or False, got {second_order!r}")
    if second_order and n_params < 2:
        raise ValueError(f"second_order=True needs n_params >= 2 (pairs of parameters), "
                         f"got n_params={n_params}")
    return bool(second_order)


class SecondOrderState:
    """The ``D_k`` accumulators of ``n_cells`` cells for ``n_params`` parameters."""

    def __init__(self, n_cells: int, n_params: int):
        self.n_params = n_params
        self.array = np.zeros((n_cells, second_width(n_params)), dtype=np.float64)

    @property
    def n_pairs(self) -> int:
        return self.n_params * (self.n_params - 1) // 2

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def fold(self, state: np.ndarray, groups: np.ndarray, n: int,
             n_state: int | None = None) -> None:
        """Fold one checked ``(2p + 2, n_cells)`` group, or a stack of them
        ``(m, 2p + 2, n_cells)``.

        ``n``: the groups folded here so far; ``state``: the first-order
        state, holding ``n_state`` of them (default ``n``) and none of the
        new ones (call this before folding them there). The interval's
        terms of the new groups are evaluated with the estimates from before
        them (before the stack), so a first-order side that buffers groups
        (``n_state < n``) costs a plug-in a few groups older, nothing else:
        the sums here are exact either way.
        """
        if groups.ndim == 2:
            groups = groups[None]
        second_update(self.array, state, groups, n, n if n_state is None else n_state,
                      IF_START)

    def merge(self, n: int, other: SecondOrderState, other_n: int) -> None:
        """Merge ``other`` (``other_n`` groups) into this state (``n``)."""
        other_array = other.array.copy() if other is self else other.array
        second_merge(self.array, n, other_array, other_n, self.n_params)

    def indices(self, state: np.ndarray) -> np.ndarray:
        out = np.empty((self.n_pairs, self.array.shape[0]))
        second_indices(self.array, state, self.n_params, out)
        return out

    def interval(self, state: np.ndarray, n: int, q: float) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.n_pairs, self.array.shape[0])
        low, high = np.empty(shape), np.empty(shape)
        second_interval(self.array, state, n, self.n_params, q, low, high)
        return low, high
