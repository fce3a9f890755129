"""The Sobol' indices and intervals straight from a cell-blocked state, in SIMD lanes.

:func:`blocked_interval` is :func:`~melissa_sa.kernels.sobol_centred.martinez_interval`
on the cell-blocked layout of :mod:`melissa_sa.kernels.sobol_blocked`: each
block's accumulators are read in place (slot ``s`` of lane ``c`` at
``s BLOCK + c`` of the block's row) and each cell's bounds and indices are
written into the caller's full ``(p, n_cells)`` arrays. Nothing is converted
to the row layout and nothing is allocated inside the loops.

How it vectorises: for each pick-freeze pair of a block, the same per-cell
operations run over the block's ``BLOCK`` lanes in loops of a constant trip
count, branch-free (the row kernel's ``if``/``elif`` chain of
:func:`~melissa_sa.kernels.sobol_centred.cell_interval` becomes selects, its
early returns values computed and then discarded), so LLVM emits vector
square roots and divisions:

1. the correlation of both sides of the pair (first order ``(B, C_k)``,
   total ``(A, C_k)``) and, for the delta methods, the standard error from
   the fourth-order sums (:func:`_pair_lanes`);
2. ``tanh`` of each lane's half-width on Fisher's z scale (a call of the C
   library, scalar: it does not vectorise without a vector math library; a
   loop of its own so the others stay vector; Fisher's half-width is the
   same for every cell, so its ``tanh`` is taken once per call);
3. the bounds, the clip to ``[-1, 1]``, the degenerate, NaN and fewer-than-4
   cases, and the total order's ``1 - r`` (:func:`_bounds_lanes`), into the
   thread's scratch, then copied to the outputs (the lanes of the last block
   past ``n_cells`` are not copied). Staging them keeps the vector loop to
   one array read and written: six output arrays that might overlap would
   need more run-time overlap checks than LLVM makes before it vectorises.

Every value is made by the operations of the row kernel in the same order on
the same operands (the moments' moves are its own inlined helpers), so the
arrays are those of :func:`~melissa_sa.kernels.sobol_centred.martinez_interval`
bit for bit (``tests/test_sobol_blocked_interval.py``). Selects compute both
sides of a branch: a discarded side may divide by zero or take a square root
of a negative number (``error_model="numpy"``: no exception), never a kept one.

``move_single``, ``move_pair`` and ``delta_var`` are inlined from
:mod:`melissa_sa.kernels.sobol_centred`: Numba's cache of this file does not
see a change there, so a change of those helpers needs this file's cache
entries dropped (or this file touched).
"""

import math

import numpy as np
from numba import get_num_threads, njit, prange

from melissa_sa.kernels.sobol_blocked import BLOCK
from melissa_sa.kernels.sobol_centred import (
    DELTA,
    DELTA_LINEAR,
    FISHER,
    delta_var,
    move_pair,
    move_single,
)

__all__ = ["blocked_interval"]

#: float64 of scratch per thread, in BLOCK-lane rows: both sides' correlation,
#: validity and half-width (6), then the six outputs of the last block (6)
SCRATCH_ROWS = 12


@njit(cache=True, inline="always")
def _centred(v, c, nf, m, s2, p3):
    """``(mean, sum x, sum x^2, P3, sum (x - mean)^4, X2)`` of a variable of
    lane ``c`` from its slots of mean, X2, P3 (P4 next) in ``v`` (slot ``s``
    of lane ``c`` at ``s BLOCK + c``):
    :func:`~melissa_sa.kernels.sobol_centred._centred` of the row layout."""
    mean = v[m * BLOCK + c]
    x2 = v[s2 * BLOCK + c]
    x1 = nf * mean
    xp2 = x2 + nf * mean * mean
    x3 = v[p3 * BLOCK + c]
    return mean, x1, xp2, x3, move_single(nf, mean, x1, xp2, x3, v[(p3 + 1) * BLOCK + c])[1], x2


@njit(cache=True, inline="always")
def _corr(m11, x2, y2):
    """``(rho, ok)`` of :func:`~melissa_sa.kernels.sobol_centred._corr`
    without branches."""
    r = m11 / math.sqrt(x2 * y2)
    r = 1.0 if r > 1.0 else r
    r = -1.0 if r < -1.0 else r
    ok = (x2 != 0.0) & (y2 != 0.0)
    return (r if ok else 0.0), ok


@njit(cache=True, inline="always")
def _side(ab, pk, c, side, y2):
    """``(rho, ok, m11)`` of lane ``c`` for one side of a pair: side 0 is
    ``(B, C_k)``, side 1 ``(A, C_k)``; ``ab``: the block's 9 slots of ``A``
    and ``B``, ``pk``: the pair's 16 slots; ``y2``: ``C_k``'s X2. Every
    index is a constant plus the lane: no negative-index check is left to
    make the loads gathers."""
    m11 = pk[(3 - side) * BLOCK + c]
    rho, ok = _corr(m11, ab[(4 - side) * BLOCK + c], y2)
    return rho, ok, m11


@njit(cache=True, inline="always")
def _side_se(ab, pk, c, nf, y, side):
    """:func:`_side` and the delta method's standard error of the
    correlation; ``y``: :func:`_centred` of ``C_k``."""
    rho, ok, m11 = _side(ab, pk, c, side, y[5])
    x = _centred(ab, c, nf, 2 - side, 4 - side, 7 - 2 * side)
    o = (11 - 5 * side) * BLOCK + c   # P_BCk 21 (side 0) or P_ACk 21
    p11 = m11 + nf * x[0] * y[0]
    q = move_pair(nf, x[0], y[0], x[1], x[2], x[3], y[1], y[2], y[3],
                   p11, pk[o], pk[o + BLOCK], pk[o + 2 * BLOCK], pk[o + 3 * BLOCK],
                   pk[o + 4 * BLOCK])
    v = delta_var(nf, m11, x[5], y[5], x[4], y[4], q[3], q[2], q[4], rho)
    return rho, ok, math.sqrt(v / (nf - 3.0))


@njit(cache=True, inline="always")
def _pair_lanes(blk, k, nf, qz, kind, sc):
    """Step 1 for pair ``k`` over the block's lanes: rows 0-1 of ``sc``:
    ``rho``, 2-3: ``ok``, 4-5 (``kind`` ``DELTA`` or ``DELTA_LINEAR``) the
    half-width: ``q se`` on the z scale for ``DELTA``, ``se`` for
    ``DELTA_LINEAR``."""
    ab = blk[:9 * BLOCK]
    pk = blk[(9 + 16 * k) * BLOCK:(25 + 16 * k) * BLOCK]
    if kind == FISHER:
        for c in range(BLOCK):
            y2 = pk[BLOCK + c]
            r0, ok0, _ = _side(ab, pk, c, 0, y2)
            r1, ok1, _ = _side(ab, pk, c, 1, y2)
            sc[c] = r0
            sc[BLOCK + c] = r1
            sc[2 * BLOCK + c] = 1.0 if ok0 else 0.0
            sc[3 * BLOCK + c] = 1.0 if ok1 else 0.0
        return
    delta = kind == DELTA
    for c in range(BLOCK):
        y = _centred(pk, c, nf, 0, 1, 4)
        r0, ok0, se0 = _side_se(ab, pk, c, nf, y, 0)
        r1, ok1, se1 = _side_se(ab, pk, c, nf, y, 1)
        sc[c] = r0
        sc[BLOCK + c] = r1
        sc[2 * BLOCK + c] = 1.0 if ok0 else 0.0
        sc[3 * BLOCK + c] = 1.0 if ok1 else 0.0
        sc[4 * BLOCK + c] = qz * (se0 / (1.0 - r0 * r0)) if delta else se0
        sc[5 * BLOCK + c] = qz * (se1 / (1.0 - r1 * r1)) if delta else se1


@njit(cache=True, inline="always")
def _bounds(rho, ok, w, qz, mode):
    """``(lo, hi)`` of the correlation ``rho`` (``ok``: not degenerate) from
    the half-width ``w``: ``tanh`` of it (``mode`` 0), ``se`` for ``rho +- q
    se`` (1), or the whole range (2: fewer than 4 groups)."""
    if mode == 0:
        lo = (rho - w) / (1.0 - rho * w)
        hi = (rho + w) / (1.0 + rho * w)
        lo = max(lo, -1.0)
        hi = min(hi, 1.0)
        edge = (rho >= 1.0) | (rho <= -1.0)
        lo = rho if edge else lo
        hi = rho if edge else hi
    elif mode == 1:
        lo = rho - qz * w
        hi = rho + qz * w
    else:
        lo = -1.0
        hi = 1.0
    nan = rho != rho
    lo = rho if nan else lo
    hi = rho if nan else hi
    return (lo if ok else 0.0), (hi if ok else 0.0)


@njit(cache=True, inline="always")
def _bounds_lanes(sc, t_fisher, qz, mode, fisher):
    """Step 3 over the block's lanes, into rows 6-11 of ``sc``: first_lo,
    first_hi, total_lo, total_hi, first, total (one array written and read:
    no aliasing check stops the vectoriser)."""
    for c in range(BLOCK):
        for side in (0, 1):
            rho = sc[side * BLOCK + c]
            ok = sc[(2 + side) * BLOCK + c] != 0.0
            w = t_fisher if fisher else sc[(4 + side) * BLOCK + c]
            lo, hi = _bounds(rho, ok, w, qz, mode)
            if side == 0:
                sc[10 * BLOCK + c] = rho
                sc[6 * BLOCK + c] = lo
                sc[7 * BLOCK + c] = hi
            else:
                sc[11 * BLOCK + c] = 1.0 - rho if ok else 0.0
                sc[8 * BLOCK + c] = 1.0 - hi if ok else 0.0
                sc[9 * BLOCK + c] = 1.0 - lo if ok else 0.0


@njit(cache=True, inline="always")
def _block(blk, k, lo, m, nf, qz, kind, mode, t_fisher, sc, out):
    """Pair ``k`` of the block at cell ``lo`` with ``m`` cells into ``out``
    (``first_lo, first_hi, total_lo, total_hi``, then ``first, total``
    when they have cells)."""
    _pair_lanes(blk, k, nf, qz, kind, sc)
    if kind == DELTA:
        for c in range(4 * BLOCK, 6 * BLOCK):
            sc[c] = math.tanh(sc[c])
    _bounds_lanes(sc, t_fisher, qz, mode, kind == FISHER)
    _copy_out(sc, 6, out[0], k, lo, m)
    _copy_out(sc, 7, out[1], k, lo, m)
    _copy_out(sc, 8, out[2], k, lo, m)
    _copy_out(sc, 9, out[3], k, lo, m)
    if out[4].shape[1] != 0:
        _copy_out(sc, 10, out[4], k, lo, m)
        _copy_out(sc, 11, out[5], k, lo, m)


@njit(cache=True, inline="always")
def _copy_out(sc, row, dst, k, lo, m):
    """Lanes ``0 .. m - 1`` of scratch row ``row`` into ``dst[k, lo:lo + m]``."""
    cells = dst[k, lo:lo + m]
    for c in range(m):
        cells[c] = sc[row * BLOCK + c]


def blocked_interval(state, n_cells, n, n_params, q, method, first_lo, first_hi,
                     total_lo, total_hi, first, total):
    """:func:`~melissa_sa.kernels.sobol_centred.martinez_interval` of the
    ``n_cells`` cells of a full cell-blocked ``state`` (``(n_blocks, (9 + 16
    p) BLOCK)``, ``n`` groups): bounds, and with ``(p, n_cells)`` arrays
    ``first``, ``total`` the indices, written in place; ``(p, 0)`` arrays for
    the bounds alone. The blocks are split into one contiguous range per
    Numba thread, each with its row of scratch (made here: Numba's thread
    count read inside a kernel would keep it out of the cache)."""
    nb = (n_cells + BLOCK - 1) // BLOCK
    scratch = np.empty((max(1, min(get_num_threads(), nb)), SCRATCH_ROWS * BLOCK))
    _blocked_interval(state, n_cells, n, n_params, q, method, first_lo, first_hi,
                      total_lo, total_hi, first, total, scratch)


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def _blocked_interval(state, n_cells, n, n_params, q, method, first_lo, first_hi,
                      total_lo, total_hi, first, total, scratch):
    """:func:`blocked_interval` with its ``(workers, SCRATCH_ROWS BLOCK)``
    scratch."""
    nf = float(n)
    few = n < 4
    se_f = 1.0 / math.sqrt(nf - 3.0) if not few else 0.0
    t_fisher = math.tanh(q * se_f)
    kind = FISHER if few else method   # FISHER: no standard error per cell
    mode = 2 if few else (1 if method == DELTA_LINEAR else 0)
    out = (first_lo, first_hi, total_lo, total_hi, first, total)
    nb = (n_cells + BLOCK - 1) // BLOCK
    workers = scratch.shape[0]
    for w in prange(workers):
        sc = scratch[w]
        for b in range(w * nb // workers, (w + 1) * nb // workers):
            lo = b * BLOCK
            m = min(BLOCK, n_cells - lo)
            for k in range(n_params):
                _block(state[b], k, lo, m, nf, q, kind, mode, t_fisher, sc, out)
