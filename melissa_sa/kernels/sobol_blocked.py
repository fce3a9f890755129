"""The Martinez fold on a cell-blocked state: the cells of a block in SIMD lanes.

A full Martinez state (:mod:`melissa_sa.kernels.sobol`, ``ci="delta"``) kept
one row per cell cannot be folded in SIMD lanes: a cell's 57 accumulators
(``p = 3``) are contiguous, the same accumulator of two cells is not. The
*cell-blocked* layout keeps :data:`BLOCK` cells per row of a
``(n_blocks, width * BLOCK)`` C-contiguous float64 array, slot-major: the
``BLOCK`` values of one accumulator are contiguous, so the loop over the
cells of a block is a loop of vector instructions (each accumulator is still
updated by the very operations of the row kernel, in the same order: the
state is the row kernel's, bit for bit).

Slot order in a block (``width = 9 + 16 p`` slots, :func:`block_slots`
maps a row slot to its block slot): block 1 of ``A`` and ``B`` (shift,
mean_A, mean_B, A2, B2), their power sums (P3_A, P4_A, P3_B, P4_B), then per
pick-freeze pair ``k`` its 16 slots together (mean_Ck, Ck2, ACk11, BCk11,
P3_Ck, P4_Ck, P_ACk 21, 12, 31, 22, 13, P_BCk 21, 12, 31, 22, 13). A cell
count that is not a multiple of ``BLOCK`` leaves the last block's extra
lanes at zero (never folded).

The fold goes by chunks of :data:`~melissa_sa.kernels.sobol.CHUNK` cells
and applies the groups to a chunk in turn, as
:func:`~melissa_sa.kernels.sobol.martinez_update_many`: :func:`fold_chunk`
here one group at a time, the batched fold of
:mod:`melissa_sa.kernels.sobol_blocked_fold` :data:`QUAD` at a time; the
fused influence sums of the aggregated interval are in
:mod:`melissa_sa.kernels.sobol_blocked_influence`. Nothing is allocated
inside the kernels: their scratch has a row per Numba thread
(:func:`scratch_for`).
"""

import numpy as np
from numba import config, njit, prange

from melissa_sa.kernels.sobol import CHUNK, welford_weights
from melissa_sa.kernels.sobol_prefetch import prefetch_cells

#: cells per block: a compile-time constant (the vectoriser needs it);
#: CHUNK is a multiple of it (measured: docs/performance.md)
BLOCK = 16
#: blocks per chunk of the batched fold
PER_CHUNK = CHUNK // BLOCK
#: groups folded per load of a block's accumulators by the batched fold
#: (:mod:`melissa_sa.kernels.sobol_blocked_fold`; a compile-time constant)
QUAD = 4


def n_blocks(n_cells):
    """Blocks that hold ``n_cells`` cells."""
    return (n_cells + BLOCK - 1) // BLOCK


def scratch_for(n_params):
    """The folds' scratch for ``n_params`` parameters, one row per Numba
    thread (the kernels run a worker per row, each over a contiguous range
    of chunks): ``QUAD (p + 8) BLOCK`` float64, the batched fold's staged groups
    (:mod:`melissa_sa.kernels.sobol_blocked_fold`; the one-group fold uses
    the first ``5 BLOCK``)."""
    return np.empty((config.NUMBA_NUM_THREADS, QUAD * (n_params + 8) * BLOCK))


def terms_for(n_params):
    """The influence terms' scratch, one row per Numba thread: ``QUAD p 4
    BLOCK`` float64 (:mod:`melissa_sa.kernels.sobol_blocked_influence`)."""
    return np.empty((config.NUMBA_NUM_THREADS, QUAD * n_params * 4 * BLOCK))


def block_slots(p):
    """``to[q]``: the block slot of row slot ``q`` (row layout of
    :mod:`melissa_sa.kernels.sobol`), for ``p`` parameters."""
    h = 5 + 4 * p
    to = np.empty(9 + 16 * p, dtype=np.int64)
    to[:5] = np.arange(5)
    to[h:h + 4] = 5 + np.arange(4)
    for k in range(p):
        to[5 + 4 * k:9 + 4 * k] = 9 + 16 * k + np.arange(4)
        to[h + 4 + 12 * k:h + 16 + 12 * k] = 13 + 16 * k + np.arange(12)
    return to


@njit(cache=True, parallel=True, nogil=True)
def _move_rows(state, slots, b0, rows, to_rows):
    """Copy between ``rows`` (one row per cell, from cell ``b0 * BLOCK`` on)
    and the blocks of ``state``: into ``rows`` if ``to_rows``, else into
    the blocks (lanes past the rows are left as they are)."""
    width = slots.shape[0]
    nb = (rows.shape[0] + BLOCK - 1) // BLOCK
    for j in prange(nb):
        blk = state[b0 + j]
        for lane in range(min(BLOCK, rows.shape[0] - j * BLOCK)):
            c = j * BLOCK + lane
            for q in range(width):
                if to_rows:
                    rows[c, q] = blk[slots[q] * BLOCK + lane]
                else:
                    blk[slots[q] * BLOCK + lane] = rows[c, q]


def blocks_to_rows(state, slots, b0, rows):
    """``rows[i]`` = the row of cell ``b0 * BLOCK + i`` of the blocked ``state``
    (``slots``: :func:`block_slots`), for every row of ``rows``."""
    _move_rows(state, slots, b0, rows, True)


def rows_to_blocks(rows, slots, b0, state):
    """The inverse of :func:`blocks_to_rows`: write ``rows`` into the blocks
    from ``b0`` on (lanes past the rows are left as they are)."""
    _move_rows(state, slots, b0, rows, False)


@njit(cache=True, inline="always")
def _mixed_power_sums(sk, o, c, x, xc, xc2):
    """The five power sums ``P_XC 21, 12, 31, 22, 13`` of cell ``c`` of a
    pair, in slots ``o .. o + 4`` of ``sk`` (``X``: ``A`` or ``B``)."""
    xy = x * xc
    sk[o * BLOCK + c] += xy * x
    sk[(o + 1) * BLOCK + c] += xy * xc
    sk[(o + 2) * BLOCK + c] += xy * (x * x)
    sk[(o + 3) * BLOCK + c] += xy * xy
    sk[(o + 4) * BLOCK + c] += xy * xc2


@njit(cache=True, inline="always")
def _fold_pair(sk, x, gc, nb, r, c2):
    """The 16 slots ``sk`` of one pair from the block's values in ``x``
    (:func:`_fold_ab`), as ``fold_full_row`` orders its operations."""
    for c in range(nb):
        xa = x[c]
        xb = x[BLOCK + c]
        da = x[2 * BLOCK + c]
        db = x[3 * BLOCK + c]
        xc = gc[c] - x[4 * BLOCK + c]
        dc = xc - sk[c]
        sk[c] += r * dc
        sk[BLOCK + c] += c2 * dc * dc
        sk[2 * BLOCK + c] += c2 * da * dc
        sk[3 * BLOCK + c] += c2 * db * dc
        xc2 = xc * xc
        sk[4 * BLOCK + c] += xc2 * xc
        sk[5 * BLOCK + c] += xc2 * xc2
        _mixed_power_sums(sk, 6, c, xa, xc, xc2)
        _mixed_power_sums(sk, 11, c, xb, xc, xc2)


@njit(cache=True, inline="always")
def _fold_ab(blk, x, ga, gb, nb, first, r, c2):
    """A's and B's slots; keeps in ``x`` the values the pairs need (xa, xb,
    da, db: before the means move; the shift)."""
    if first:
        for c in range(nb):
            blk[c] = ga[c]
    for c in range(nb):
        s = blk[c]
        xa = ga[c] - s
        xb = gb[c] - s
        da = xa - blk[BLOCK + c]
        db = xb - blk[2 * BLOCK + c]
        x[c] = xa
        x[BLOCK + c] = xb
        x[2 * BLOCK + c] = da
        x[3 * BLOCK + c] = db
        x[4 * BLOCK + c] = s
        blk[BLOCK + c] += r * da
        blk[2 * BLOCK + c] += r * db
        blk[3 * BLOCK + c] += c2 * da * da
        blk[4 * BLOCK + c] += c2 * db * db
        xa2 = xa * xa
        xb2 = xb * xb
        blk[5 * BLOCK + c] += xa2 * xa
        blk[6 * BLOCK + c] += xa2 * xa2
        blk[7 * BLOCK + c] += xb2 * xb
        blk[8 * BLOCK + c] += xb2 * xb2


@njit(cache=True, inline="always")
def _fold_block(state, b, group, lo, nb, first, r, c2, p, x):
    """Fold ``group``'s cells ``[lo, lo + nb)`` into block ``b`` (``x``:
    ``5 BLOCK`` float64 of scratch). Each accumulator sees the operations
    of the row kernel in its order (the pairs read A's and B's old means
    from ``x``)."""
    blk = state[b]
    _fold_ab(blk[:9 * BLOCK], x, group[0, lo:lo + nb], group[1, lo:lo + nb], nb, first, r, c2)
    for k in range(p):
        o = (9 + 16 * k) * BLOCK
        _fold_pair(blk[o:o + 16 * BLOCK], x, group[2 + k, lo:lo + nb], nb, r, c2)


@njit(cache=True, inline="always")
def chunk_blocks(ch, n_cells):
    """The blocks of chunk ``ch`` of a state of ``n_cells`` cells."""
    return range(ch * PER_CHUNK, min(ch * PER_CHUNK + PER_CHUNK, (n_cells + BLOCK - 1) // BLOCK))


@njit(cache=True, inline="always")
def fold_chunk(state, group, n, p, ch, n_cells, x):
    """Fold ``group``, the group after ``n``, into the blocks of chunk ``ch``
    (``x``: the chunk's scratch, as :func:`_fold_block` takes it)."""
    r, c2 = welford_weights(n)
    for b in chunk_blocks(ch, n_cells):
        lo = b * BLOCK
        prefetch_cells(group, lo + CHUNK)
        _fold_block(state, b, group, lo, min(BLOCK, n_cells - lo), n == 0, r, c2, p, x)
