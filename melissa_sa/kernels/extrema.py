"""Per-cell running minimum and maximum.

State layout: float64 ``state`` of shape ``(n_cells, 2)``, one row
``(min, max)`` per cell, started at ``(+inf, -inf)`` so that the first sample
sets both.

NaN policy: NaN propagates, as in ``numpy.min``: once a cell has seen a NaN
its min and max are NaN.
"""

import numpy as np
from numba import njit, prange


def extrema_init(n_cells):
    """Return a fresh ``(n_cells, 2)`` state: min = +inf, max = -inf."""
    state = np.empty((n_cells, 2), dtype=np.float64)
    state[:, 0] = np.inf
    state[:, 1] = -np.inf
    return state


@njit(cache=True, parallel=True)
def extrema_update(state, x):
    """Fold sample ``x`` (n_cells,) into ``state`` (n_cells, 2) in place."""
    for i in prange(x.shape[0]):
        v = np.float64(x[i])
        lo = state[i, 0]
        hi = state[i, 1]
        if v < lo or v != v:
            state[i, 0] = v
        if v > hi or v != v:
            state[i, 1] = v


@njit(cache=True, parallel=True)
def extrema_merge(state_a, state_b):
    """Merge ``state_b`` into ``state_a`` in place (NaN propagates)."""
    for i in prange(state_a.shape[0]):
        lo = state_b[i, 0]
        hi = state_b[i, 1]
        if lo < state_a[i, 0] or lo != lo:
            state_a[i, 0] = lo
        if hi > state_a[i, 1] or hi != hi:
            state_a[i, 1] = hi
