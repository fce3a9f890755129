"""The aggregated indices' partial sums straight from a cell-blocked state.

:func:`blocked_aggregated_sums` gives the ``(4, p)`` sums of
:func:`melissa_sa.stats.sobol_results.aggregated_sums` (``sum_c XY11(B,
C_k)``, ``sum_c sqrt(B2 Ck2)``, ``sum_c XY11(A, C_k)``, ``sum_c sqrt(A2
Ck2)``) reading the blocks in place, in one pass: the ``4 p`` sums of each
run of 128 cells (8 blocks) are made while its blocks are in cache. Before,
each sum copied one to three columns out of the blocks (a strided pass over
the whole state each) and made the products and square roots as arrays.

Each sum is NumPy's ``ndarray.sum`` of the same values, bit for bit: its
pairwise summation (runs of at most 128 values summed by 8 accumulators,
longer runs split in two at a multiple of 8 below the middle, added to the
reduction's start ``0.0``: a sum of ``-0.0`` is ``0.0``), on the values
``x`` or ``sqrt(x y)`` made by the same operations
(``tests/test_sobol_blocked_sums.py``).
"""

import math

import numpy as np
from numba import njit

from melissa_sa.kernels.sobol_blocked import BLOCK

__all__ = ["blocked_aggregated_sums"]

#: values per leaf of NumPy's pairwise summation (its ``PW_BLOCKSIZE``)
PAIRWISE_BLOCK = 128
#: depth of the summation tree :func:`blocked_aggregated_sums` can walk:
#: ``n_cells <= 128 * 2^(DEPTH - 1)``
DEPTH = 64


@njit(cache=True, inline="always")
def _value(state, c, s, t):
    """Cell ``c``'s value of block slot ``s`` (``t < 0``), or ``sqrt(slot s *
    slot t)``."""
    b = c // BLOCK
    lane = c - b * BLOCK
    x = state[b, s * BLOCK + lane]
    if t < 0:
        return x
    return math.sqrt(x * state[b, t * BLOCK + lane])


@njit(cache=True, inline="always")
def _slots(task, p):
    """Block slots ``(s, t)`` of sum ``task`` (row ``task // p`` of the
    ``(4, p)`` sums, parameter ``task % p``): ``t < 0`` for ``sum x_s``, else
    ``sum sqrt(x_s x_t)``."""
    row = task // p
    i = 9 + 16 * (task - row * p)   # the pair's slots: mean_Ck, Ck2, ACk11, BCk11
    if row == 0:
        return i + 3, -1
    if row == 1:
        return 4, i + 1
    if row == 2:
        return i + 2, -1
    return 3, i + 1


@njit(cache=True)
def _leaf(state, lo, n, s, t):
    """NumPy's sum of the ``n <= 128`` values from cell ``lo`` (a multiple
    of 8: each 8 cells are contiguous lanes of one block)."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += _value(state, lo + i, s, t)
        return res
    r0 = _value(state, lo, s, t)
    r1 = _value(state, lo + 1, s, t)
    r2 = _value(state, lo + 2, s, t)
    r3 = _value(state, lo + 3, s, t)
    r4 = _value(state, lo + 4, s, t)
    r5 = _value(state, lo + 5, s, t)
    r6 = _value(state, lo + 6, s, t)
    r7 = _value(state, lo + 7, s, t)
    end = n - n % 8
    for i in range(8, end, 8):
        c = lo + i
        blk = c // BLOCK
        x = state[blk, s * BLOCK + c - blk * BLOCK:]
        if t < 0:
            r0 += x[0]
            r1 += x[1]
            r2 += x[2]
            r3 += x[3]
            r4 += x[4]
            r5 += x[5]
            r6 += x[6]
            r7 += x[7]
        else:
            y = state[blk, t * BLOCK + c - blk * BLOCK:]
            r0 += math.sqrt(x[0] * y[0])
            r1 += math.sqrt(x[1] * y[1])
            r2 += math.sqrt(x[2] * y[2])
            r3 += math.sqrt(x[3] * y[3])
            r4 += math.sqrt(x[4] * y[4])
            r5 += math.sqrt(x[5] * y[5])
            r6 += math.sqrt(x[6] * y[6])
            r7 += math.sqrt(x[7] * y[7])
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(end, n):
        res += _value(state, lo + i, s, t)
    return res


@njit(cache=True, error_model="numpy", nogil=True)
def blocked_aggregated_sums(state, n_cells, n_params, out):
    """The ``(4, n_params)`` partial sums of the aggregated indices of the
    ``n_cells`` cells of a full cell-blocked ``state``, into ``out``.

    NumPy's recursion (a run longer than :data:`PAIRWISE_BLOCK` is the sum of
    its halves, the first ``n // 2`` rounded down to a multiple of 8) is
    walked with a stack, each leaf making the ``4 p`` sums of its cells
    (Numba's cache does not keep recursive functions safely)."""
    tasks = 4 * n_params
    lo = np.empty(DEPTH, dtype=np.int64)
    size = np.empty(DEPTH, dtype=np.int64)
    stage = np.empty(DEPTH, dtype=np.int64)   # 0: first half next, 1: second, 2: add
    sums = np.empty((DEPTH + 1, tasks))       # the partial sums made, a stack
    top = 0
    lo[0], size[0], stage[0] = 0, n_cells, 0
    done = 0
    while top >= 0:
        m = size[top]
        if m <= PAIRWISE_BLOCK:
            for task in range(tasks):
                s, t = _slots(task, n_params)
                sums[done, task] = _leaf(state, lo[top], m, s, t)
            done += 1
            top -= 1
        elif stage[top] == 2:
            for task in range(tasks):
                sums[done - 2, task] = sums[done - 2, task] + sums[done - 1, task]
            done -= 1
            top -= 1
        else:
            half = m // 2
            half -= half % 8
            first = stage[top] == 0
            stage[top] += 1
            start = lo[top] if first else lo[top] + half
            top += 1
            lo[top], size[top], stage[top] = start, (half if first else m - half), 0
    for task in range(tasks):
        row = task // n_params
        out[row, task - row * n_params] = 0.0 + sums[0, task]
