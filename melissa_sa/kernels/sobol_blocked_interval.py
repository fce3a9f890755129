"""The Sobol' indices and intervals straight from a cell-blocked state.

:func:`blocked_interval` is :func:`~melissa_sa.kernels.sobol_centred.martinez_interval`
on the cell-blocked layout of :mod:`melissa_sa.kernels.sobol_blocked`: each
block's accumulators are read in place (a ``(BLOCK, width)`` view of its row,
in block slot order) and each cell's bounds and indices are written into
the caller's full ``(p, n_cells)`` arrays, by the same per-cell code
(:func:`~melissa_sa.kernels.sobol_centred.cell_interval`), so the arrays are
those of the row-layout kernel, bit for bit. Nothing is converted to the row
layout, nothing is allocated, nothing is copied afterwards: before it, the
results of a cell-blocked state were made slice by slice through a row
buffer, and the conversion cost about as much CPU as the interval itself
(docs/performance.md).

``cell_interval`` is inlined from :mod:`melissa_sa.kernels.sobol_centred`:
Numba's cache of this file does not see a change there, so a change of that
helper needs this file's cache entries dropped (or this file touched).
"""

from numba import njit, prange

from melissa_sa.kernels.sobol_blocked import BLOCK
from melissa_sa.kernels.sobol_centred import cell_interval

__all__ = ["blocked_interval"]


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def blocked_interval(state, n_cells, n, n_params, q, method, first_lo, first_hi,
                     total_lo, total_hi, first, total):
    """:func:`~melissa_sa.kernels.sobol_centred.martinez_interval` of the
    ``n_cells`` cells of a full cell-blocked ``state`` (``(n_blocks, (9 + 16
    p) BLOCK)``, ``n`` groups): bounds, and with ``(p, n_cells)`` arrays
    ``first``, ``total`` the indices, written in place; ``(p, 0)`` arrays for
    the bounds alone."""
    p = n_params
    width = 9 + 16 * p
    at = (9, 16, 5, 13, 16)   # the block slots of sobol_blocked.block_slots
    for b in prange(state.shape[0]):
        rows = state[b].reshape((width, BLOCK)).T
        lo = b * BLOCK
        for lane in range(min(BLOCK, n_cells - lo)):
            cell_interval(rows, lane, lo + lane, p, at, n, q, method, first_lo, first_hi,
                          total_lo, total_hi, first, total)
