"""The aggregated interval's influence sums, fused with the cell-blocked fold.

:func:`blocked_update_many_influence` is
:func:`~melissa_sa.kernels.sobol_blocked_fold.blocked_update_many` adding, on
the way, the influence sums of the groups flagged in ``rows``: per group, sums
over the cells of terms computed from block 1 of the state *before* the
group (:mod:`melissa_sa.stats.sobol_aggregated`). The sums and the state are
those of :func:`~melissa_sa.kernels.sobol_influence.martinez_update_many_influence`
on the row layout, bit for bit: each term comes from the same operations,
computed in lanes (square roots and divisions included) into a scratch row,
then added to the chunk's sums in cell order.

The groups go :data:`~melissa_sa.kernels.sobol_blocked.QUAD` at a time as
in the fold: in a quad holding a flagged group, A's and B's parts of every
group's terms are computed by the A/B pass
(:func:`~melissa_sa.kernels.sobol_blocked_fold.quad_ab`) and each pair's
terms by a pass of their own over the pair's slots before the pair's fold
(:func:`_quad_pair_terms`, reading four of its slots), so the accumulators
are still stored once per quad. The groups left over go one at a time
(:func:`ab_terms` once per block, :func:`pair_terms` per pair, then
:func:`~melissa_sa.kernels.sobol_blocked.fold_chunk`).
"""

import math

from numba import njit, prange

from melissa_sa.kernels.sobol import batch_size, welford_weights
from melissa_sa.kernels.sobol_blocked import BLOCK, QUAD, chunk_blocks, fold_chunk
from melissa_sa.kernels.sobol_blocked_fold import (
    batch_dims,
    influence_factor,
    pair_rows,
    quad_ab,
    quad_chunk,
    quad_pair,
    recentre_chunk,
    stage_quad,
    worker_chunks,
)

__all__ = ["ab_terms", "blocked_update_many_influence", "pair_terms"]


@njit(cache=True, inline="always")
def ab_terms(blk, ga, gb, nb, f, ab):
    """A's and B's parts of the block's cells' influence terms (the state
    before the group), in lanes, into ``ab``'s rows (``7 BLOCK`` float64):
    the shift, ``da``, ``db``, ``sa``, ``sb``, ``ha``, ``hb``. Every pair's
    terms read them (:func:`pair_terms`): computed once per block, not once
    per pair."""
    for c in range(nb):
        s = blk[c]
        da = (ga[c] - s) - blk[BLOCK + c]
        db = (gb[c] - s) - blk[2 * BLOCK + c]
        a2 = blk[3 * BLOCK + c]
        b2 = blk[4 * BLOCK + c]
        sa = math.sqrt(a2)
        sb = math.sqrt(b2)
        ab[c] = s
        ab[BLOCK + c] = da
        ab[2 * BLOCK + c] = db
        ab[3 * BLOCK + c] = sa
        ab[4 * BLOCK + c] = sb
        ab[5 * BLOCK + c] = 0.5 * (da * da - a2 * f) / sa if a2 > 0.0 else 0.0
        ab[6 * BLOCK + c] = 0.5 * (db * db - b2 * f) / sb if b2 > 0.0 else 0.0


@njit(cache=True, inline="always")
def pair_terms(sk, ab, gc, nb, f, terms):
    """One pair's influence terms of the block's cells (slots ``sk``, A's and
    B's parts in ``ab``: :func:`ab_terms`), in lanes, into ``terms`` (``4
    BLOCK`` float64: Phi and Psi, first then total order); a term a cell does
    not add is 0 (adding 0 to the sums changes nothing)."""
    for c in range(nb):
        da = ab[BLOCK + c]
        db = ab[2 * BLOCK + c]
        sa = ab[3 * BLOCK + c]
        sb = ab[4 * BLOCK + c]
        dc = (gc[c] - ab[c]) - sk[c]
        cc = sk[BLOCK + c]
        terms[c] = db * dc - sk[3 * BLOCK + c] * f
        terms[2 * BLOCK + c] = da * dc - sk[2 * BLOCK + c] * f
        sc = math.sqrt(cc)
        hc = 0.5 * (dc * dc - cc * f) / sc
        # sb > 0 exactly when b2 > 0 (sb = sqrt(b2); NaN compares false)
        pos = cc > 0.0
        terms[BLOCK + c] = sc * ab[6 * BLOCK + c] + sb * hc if pos & (sb > 0.0) else 0.0
        terms[3 * BLOCK + c] = sc * ab[5 * BLOCK + c] + sa * hc if pos & (sa > 0.0) else 0.0


@njit(cache=True, inline="always")
def _zero_sums(partial, u, ch, p):
    for q in range(4):
        for k in range(p):
            partial[u, ch, q, k] = 0.0


@njit(cache=True, inline="always")
def _add_terms(partial, u, ch, p, nb, t, k_rows):
    """Add the block's terms ``t`` (pair ``k``'s term ``q`` in row ``k k_rows +
    q``) to ``partial[u, ch]``, in cell order, as the row kernel adds them."""
    for c in range(nb):
        for k in range(p):
            for q in range(4):
                partial[u, ch, q, k] += t[(k * k_rows + q) * BLOCK + c]


@njit(cache=True, inline="always")
def _influence_chunk(state, group, n, p, ch, n_cells, partial, u, t, x):
    """``group``'s influence sums over chunk ``ch`` into ``partial[u, ch]``
    (the state before ``group``, ``n >= 2`` groups), in cell order (``t``:
    ``4 p BLOCK`` float64 of scratch, ``x``: the fold's scratch row)."""
    f = influence_factor(n)
    _zero_sums(partial, u, ch, p)
    ab = x[:7 * BLOCK]
    for b in chunk_blocks(ch, n_cells):
        lo = b * BLOCK
        nb = min(BLOCK, n_cells - lo)
        blk = state[b]
        ab_terms(blk, group[0, lo:lo + nb], group[1, lo:lo + nb], nb, f, ab)
        for k in range(p):
            o = (9 + 16 * k) * BLOCK
            pair_terms(blk[o:o + 16 * BLOCK], ab, group[2 + k, lo:lo + nb], nb, f,
                       t[4 * k * BLOCK:4 * (k + 1) * BLOCK])
        _add_terms(partial, u, ch, p, nb, t, 4)


@njit(cache=True, inline="always")
def _quad_pair_terms(sk, x, xk, n, tk):
    """Each group's influence terms of pair ``k`` (slots ``sk``, part ``xk`` of
    the scratch) from the slots before the group, with the operations of
    :func:`ab_terms` and :func:`pair_terms`, into ``tk``'s rows ``4 g + q``. The four slots
    the terms read (mean_Ck, Ck2, ACk11, BCk11) go through the quad's updates
    here in registers, as :func:`~melissa_sa.kernels.sobol_blocked_fold.quad_pair`
    moves them (the same operations: the same values); ``sk`` and ``xk`` are
    only read, so that the loop writes one array and vectorises."""
    for c in range(BLOCK):
        mc = sk[c]
        cc = sk[BLOCK + c]
        ac = sk[2 * BLOCK + c]
        bc = sk[3 * BLOCK + c]
        for g in range(QUAD):
            r, c2 = welford_weights(n + g)
            f = influence_factor(n + g)
            da = x[(2 * QUAD + g) * BLOCK + c]
            db = x[(3 * QUAD + g) * BLOCK + c]
            sa = x[(4 * QUAD + g) * BLOCK + c]
            sb = x[(5 * QUAD + g) * BLOCK + c]
            ha = x[(6 * QUAD + g) * BLOCK + c]
            hb = x[(7 * QUAD + g) * BLOCK + c]
            dc = xk[g * BLOCK + c] - mc
            tk[4 * g * BLOCK + c] = db * dc - bc * f
            tk[(4 * g + 2) * BLOCK + c] = da * dc - ac * f
            sc = math.sqrt(cc)
            hc = 0.5 * (dc * dc - cc * f) / sc
            # sb > 0 exactly when b2 > 0 (sb = sqrt(b2); NaN compares false);
            # & rather than and: no branch, so that the loop vectorises
            pos = cc > 0.0
            tk[(4 * g + 1) * BLOCK + c] = sc * hb + sb * hc if pos & (sb > 0.0) else 0.0
            tk[(4 * g + 3) * BLOCK + c] = sc * ha + sa * hc if pos & (sa > 0.0) else 0.0
            mc += r * dc
            cc += c2 * dc * dc
            ac += c2 * da * dc
            bc += c2 * db * dc


@njit(cache=True, inline="always")
def _quad_chunk_terms(state, groups, g0, n, p, ch, n_cells, x, t, rows, partial):
    """Fold groups ``g0 .. g0 + 3`` into chunk ``ch`` as
    :func:`~melissa_sa.kernels.sobol_blocked_fold.quad_chunk`, adding the
    influence sums of those flagged in ``rows`` to ``partial[g, ch]`` (cell
    order within the chunk, as :func:`_influence_chunk`)."""
    for g in range(g0, g0 + QUAD):
        if rows[g] >= 0:
            _zero_sums(partial, g, ch, p)
    for b in chunk_blocks(ch, n_cells):
        lo = b * BLOCK
        nb = min(BLOCK, n_cells - lo)
        blk = state[b]
        stage_quad(x, blk, groups, g0, lo, nb, p, n == 0)
        quad_ab(blk, x, n, True)
        for k in range(p):
            o = (9 + 16 * k) * BLOCK
            sk = blk[o:o + 16 * BLOCK]
            xk = pair_rows(x, k)
            _quad_pair_terms(sk, x, xk, n, t[4 * QUAD * k * BLOCK:4 * QUAD * (k + 1) * BLOCK])
            quad_pair(sk, x, xk, n)
        for g in range(QUAD):
            if rows[g0 + g] >= 0:
                _add_terms(partial, g0 + g, ch, p, nb, t[4 * g * BLOCK:], 4 * QUAD)


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def blocked_update_many_influence(state, groups, n, scratch, rows, partial, terms, out,
                                  m=-1, recentre=False):
    """:func:`~melissa_sa.kernels.sobol_blocked_fold.blocked_update_many`,
    adding the influence sums of the groups flagged in ``rows`` into ``out``
    on the way: the arguments and sums of
    :func:`~melissa_sa.kernels.sobol_influence.martinez_update_many_influence`,
    bit for bit, plus ``scratch`` and ``terms`` (a row per worker of the
    parallel loop, as in ``blocked_update_many``, and its ``recentre``;
    :func:`~melissa_sa.kernels.sobol_blocked.scratch_for`,
    :func:`~melissa_sa.kernels.sobol_blocked.terms_for`)."""
    m = batch_size(groups, m)
    if m == 0:
        return
    p, n_cells, n_chunks = batch_dims(groups, scratch)
    if (partial.shape[0] < m or partial.shape[1] < n_chunks or rows.shape[0] < m
            or terms.shape[0] < scratch.shape[0] or terms.shape[1] < QUAD * p * 4 * BLOCK):
        raise ValueError("blocked_update_many_influence: partial, terms or rows too small")
    n_workers = scratch.shape[0]
    for w in prange(n_workers):
        x = scratch[w]
        t = terms[w]
        for ch in worker_chunks(w, n_workers, n_chunks):
            g = 0
            while g + QUAD <= m:
                if rows[g] >= 0 or rows[g + 1] >= 0 or rows[g + 2] >= 0 or rows[g + 3] >= 0:
                    _quad_chunk_terms(state, groups, g, n + g, p, ch, n_cells, x, t, rows,
                                      partial)
                else:
                    quad_chunk(state, groups, g, n + g, p, ch, n_cells, x)
                g += QUAD
            while g < m:
                group = groups[g]
                if rows[g] >= 0:
                    _influence_chunk(state, group, n + g, p, ch, n_cells, partial, g, t, x)
                fold_chunk(state, group, n + g, p, ch, n_cells, x)
                g += 1
            recentre_chunk(state, ch, n_cells, n + m, p, recentre)
    for g in range(m):
        if rows[g] >= 0:
            for c in range(n_chunks):
                for q in range(4):
                    for k in range(p):
                        out[rows[g], q, k] += partial[g, c, q, k]
