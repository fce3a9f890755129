"""The cell-blocked Sobol' folds before four groups went per load, as a
benchmark baseline.

Copies (but for their names and the removed caching) of the batched fold
and of the fold with the aggregated interval's influence sums (whose
per-block terms are the package's ``ab_terms`` and ``pair_terms`` called
once per pair, the work of the ``block_terms`` of then) as they were
on 5 December 2026 before the folds went four groups per load of a block's
accumulators (:mod:`melissa_sa.kernels.sobol_blocked_fold`): each group of a
batch in turn, chunk by chunk, every accumulator loaded and stored per
group, the rows not prefetched, a scratch row per chunk. And the
re-centring of a cell-blocked state as it was until 5 December 2026
(:func:`recentre_before`: through the row layout a slice at a time, with the
package's kernels), before it moved the blocks in place
(:mod:`melissa_sa.kernels.sobol_blocked_recentre`). This file exists only so
that ``benchmarks/sobol_fold.py`` measures before and now side by side in one
run; nothing in melissa-sa uses it.
"""

import numpy as np
from numba import njit, prange

from melissa_sa.kernels.sobol import CHUNK, batch_size, welford_weights
from melissa_sa.kernels.sobol_blocked import (
    BLOCK,
    PER_CHUNK,
    _fold_block,
    blocks_to_rows,
    rows_to_blocks,
)
from melissa_sa.kernels.sobol_blocked_influence import ab_terms, pair_terms
from melissa_sa.kernels.sobol_centred import martinez_recentre
from melissa_sa.stats.sobol_blocks import SLICE


def recentre_before(blocks, n):
    """Re-centre the :class:`~melissa_sa.stats.sobol_blocks.BlockedState`
    ``blocks`` (``n`` groups) as before: each slice of ``SLICE`` cells copied
    to rows, re-centred by the row kernel, copied back."""
    buf = np.empty((min(SLICE, blocks.n_cells), blocks.width))
    for lo in range(0, blocks.n_cells, SLICE):
        rows = buf[:min(SLICE, blocks.n_cells - lo)]
        blocks_to_rows(blocks.array, blocks.slots, lo // BLOCK, rows)
        martinez_recentre(rows, n, blocks.n_params)
        rows_to_blocks(rows, blocks.slots, lo // BLOCK, blocks.array)


@njit(inline="always")
def _fold_chunk(state, group, n, p, ch, n_cells, x):
    r, c2 = welford_weights(n)
    n_blk = (n_cells + BLOCK - 1) // BLOCK
    for b in range(ch * PER_CHUNK, min(ch * PER_CHUNK + PER_CHUNK, n_blk)):
        lo = b * BLOCK
        _fold_block(state, b, group, lo, min(BLOCK, n_cells - lo), n == 0, r, c2, p, x)


@njit(parallel=True, error_model="numpy", nogil=True)
def fold_before(state, groups, n, scratch, m=-1):
    """The batched fold before (``scratch``: ``(chunks, 5 BLOCK)`` float64)."""
    m = batch_size(groups, m)
    if m == 0:
        return
    p = groups[0].shape[0] - 2
    n_cells = groups[0].shape[1]
    for ch in prange((n_cells + CHUNK - 1) // CHUNK):
        for g in range(m):
            _fold_chunk(state, groups[g], n + g, p, ch, n_cells, scratch[ch])


@njit(inline="always")
def _influence_chunk(state, group, n, p, ch, n_cells, partial, u, terms, ab):
    """``group``'s influence sums over chunk ``ch`` into ``partial[u, ch]``
    (the state before ``group``, ``n >= 2`` groups), in cell order; A's and
    B's parts of the terms computed again for every pair, as then (``ab``:
    ``7 BLOCK`` float64)."""
    nf = float(n)
    f = (nf + 1.0) / (nf * (nf - 1.0))
    for q in range(4):
        for k in range(p):
            partial[u, ch, q, k] = 0.0
    n_blk = (n_cells + BLOCK - 1) // BLOCK
    t = terms[ch]
    for b in range(ch * PER_CHUNK, min(ch * PER_CHUNK + PER_CHUNK, n_blk)):
        lo = b * BLOCK
        nb = min(BLOCK, n_cells - lo)
        blk = state[b]
        ga = group[0, lo:lo + nb]
        gb = group[1, lo:lo + nb]
        for k in range(p):
            o = (9 + 16 * k) * BLOCK
            ab_terms(blk, ga, gb, nb, f, ab)
            pair_terms(blk[o:o + 16 * BLOCK], ab, group[2 + k, lo:lo + nb], nb, f,
                       t[k].reshape(4 * BLOCK))
        for c in range(nb):      # in cell order, as the row kernel adds them
            for k in range(p):
                for q in range(4):
                    partial[u, ch, q, k] += t[k, q, c]


@njit(parallel=True, error_model="numpy", nogil=True)
def influence_before(state, groups, n, scratch, rows, partial, terms, out,
                                  m=-1):
    """:func:`fold_before`, adding the influence sums of the groups
    flagged in ``rows`` into ``out`` on the way: the arguments and sums of
    :func:`~melissa_sa.kernels.sobol_influence.martinez_update_many_influence`,
    bit for bit, plus ``scratch`` (``(>= ceil(n_cells / CHUNK), 7 BLOCK)``
    float64) and ``terms``, float64 scratch ``(>= ceil(n_cells / CHUNK), p, 4,
    BLOCK)``."""
    m = batch_size(groups, m)
    if m == 0:
        return
    p = groups[0].shape[0] - 2
    n_cells = groups[0].shape[1]
    n_chunks = (n_cells + CHUNK - 1) // CHUNK
    if (partial.shape[0] < m or partial.shape[1] < n_chunks or rows.shape[0] < m
            or terms.shape[0] < n_chunks or scratch.shape[0] < n_chunks
            or scratch.shape[1] < 7 * BLOCK):
        raise ValueError("blocked_update_many_influence: partial, terms or rows too small")
    for ch in prange(n_chunks):
        for g in range(m):
            group = groups[g]
            if rows[g] >= 0:
                _influence_chunk(state, group, n + g, p, ch, n_cells, partial, g, terms,
                                 scratch[ch, :7 * BLOCK])
            _fold_chunk(state, group, n + g, p, ch, n_cells, scratch[ch])
    for g in range(m):
        if rows[g] >= 0:
            for t in range(n_chunks):
                for q in range(4):
                    for k in range(p):
                        out[rows[g], q, k] += partial[g, t, q, k]
