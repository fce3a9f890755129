"""The batched fold of a cell-blocked Martinez state, four groups per load.

:func:`blocked_update_many` folds ``m`` groups into the cell-blocked state of
:mod:`melissa_sa.kernels.sobol_blocked`. The one-group fold
(:func:`~melissa_sa.kernels.sobol_blocked.fold_chunk`) loads and stores
every accumulator of a block once per group: 57 stores per cell and group at
``p = 3``, the bound of the fold once it runs in SIMD lanes. Here the groups
go :data:`~melissa_sa.kernels.sobol_blocked.QUAD` (4) at a time: each
accumulator of a lane is loaded once, goes through the four groups'
updates in a register (the loop over the four groups has a constant
count: LLVM unrolls it, then vectorises the loop over the block's cells),
and is stored once. Each accumulator still sees the
operations of the row kernel in their order, so the state is the same bit
for bit; the ``m mod 4`` groups left go one at a time.

Per block and quad the values the updates share are laid out first in a
scratch row of ``4 (p + 8) BLOCK`` float64
(:func:`~melissa_sa.kernels.sobol_blocked.scratch_for`, a row per worker
of the parallel loop), row ``q`` of group ``g`` at ``(q 4 + g) BLOCK``:
``q = 0, 1`` the shifted ``A`` and ``B`` (``x = value - shift``), ``2, 3``
their deviations from the old means (``da``, ``db``, written by the A/B
pass), ``4 .. 7`` A's and B's parts of the influence terms (only with them,
:mod:`melissa_sa.kernels.sobol_blocked_influence`), ``8 + k`` the shifted
``C_k`` (:func:`pair_rows`). Every loop reads few base pointers at
constant offsets and writes one or two (LLVM vectorises it with few
run-time alias checks, and no index can wrap).
The rows of the groups a chunk ahead are prefetched
(:mod:`melissa_sa.kernels.sobol_prefetch`).
"""

import math

from numba import njit, prange

from melissa_sa.kernels.sobol import CHUNK, batch_size, welford_weights
from melissa_sa.kernels.sobol_blocked import BLOCK, QUAD, chunk_blocks, fold_chunk
from melissa_sa.kernels.sobol_blocked_recentre import recentre_block
from melissa_sa.kernels.sobol_prefetch import prefetch_cells

__all__ = ["batch_dims", "blocked_update_many", "influence_factor", "pair_rows", "quad_ab",
           "quad_chunk", "quad_pair", "recentre_chunk", "stage_quad", "worker_chunks"]


@njit(cache=True, inline="always")
def pair_rows(x, k):
    """The quad's shifted ``C_k`` in the scratch row ``x``."""
    return x[(8 + k) * QUAD * BLOCK:(9 + k) * QUAD * BLOCK]


@njit(cache=True, inline="always")
def stage_quad(x, blk, groups, g0, lo, nb, p, first):
    """The block's cells ``[lo, lo + nb)`` of groups ``g0 .. g0 + 3``, shifted,
    into the scratch ``x`` (lanes past ``nb`` set to 0: they fold zeros into
    zeros); the shift set from ``A`` first if ``first``. Prefetches the same
    cells a chunk ahead."""
    if first:
        a = groups[g0][0]
        for c in range(nb):
            blk[c] = a[lo + c]
    for g in range(QUAD):
        grp = groups[g0 + g]
        prefetch_cells(grp, lo + CHUNK)
        for row in range(p + 2):
            src = grp[row]
            q = (row if row < 2 else row + 6) * QUAD + g
            dst = x[q * BLOCK:(q + 1) * BLOCK]
            cells = src[lo:lo + nb]
            for c in range(nb):
                dst[c] = cells[c] - blk[c]
            for c in range(nb, BLOCK):
                dst[c] = 0.0


@njit(cache=True, inline="always")
def _load_run(blk, q, c):
    """Lane ``c`` of the 8 slots ``q .. q + 7`` of a block, as a tuple (the
    quads keep them in registers through the four groups)."""
    return (blk[q * BLOCK + c], blk[(q + 1) * BLOCK + c], blk[(q + 2) * BLOCK + c],
            blk[(q + 3) * BLOCK + c], blk[(q + 4) * BLOCK + c], blk[(q + 5) * BLOCK + c],
            blk[(q + 6) * BLOCK + c], blk[(q + 7) * BLOCK + c])


@njit(cache=True, inline="always")
def _store_run(blk, q, c, values):
    """Store the 8 ``values`` into lane ``c`` of slots ``q .. q + 7``."""
    blk[q * BLOCK + c] = values[0]
    blk[(q + 1) * BLOCK + c] = values[1]
    blk[(q + 2) * BLOCK + c] = values[2]
    blk[(q + 3) * BLOCK + c] = values[3]
    blk[(q + 4) * BLOCK + c] = values[4]
    blk[(q + 5) * BLOCK + c] = values[5]
    blk[(q + 6) * BLOCK + c] = values[6]
    blk[(q + 7) * BLOCK + c] = values[7]


@njit(cache=True, inline="always")
def quad_ab(blk, x, n, influence):
    """A's and B's 9 slots through the four groups; ``da``, ``db`` of each
    group into ``x`` (rows 2 and 3) for the pairs, and if ``influence`` A's
    and B's parts of its influence terms (rows 4 .. 7: ``sa, sb, ha, hb``, the
    operations of :func:`~melissa_sa.kernels.sobol_blocked_influence.ab_terms`),
    from the state before the group."""
    for c in range(BLOCK):
        ma, mb, a2, b2, p3a, p4a, p3b, p4b = _load_run(blk, 1, c)
        for g in range(QUAD):
            r, c2 = welford_weights(n + g)
            xa = x[g * BLOCK + c]
            xb = x[(QUAD + g) * BLOCK + c]
            da = xa - ma
            db = xb - mb
            x[(2 * QUAD + g) * BLOCK + c] = da
            x[(3 * QUAD + g) * BLOCK + c] = db
            if influence:
                f = influence_factor(n + g)
                sa = math.sqrt(a2)
                sb = math.sqrt(b2)
                x[(4 * QUAD + g) * BLOCK + c] = sa
                x[(5 * QUAD + g) * BLOCK + c] = sb
                x[(6 * QUAD + g) * BLOCK + c] = 0.5 * (da * da - a2 * f) / sa if a2 > 0.0 else 0.0
                x[(7 * QUAD + g) * BLOCK + c] = 0.5 * (db * db - b2 * f) / sb if b2 > 0.0 else 0.0
            ma += r * da
            mb += r * db
            a2 += c2 * da * da
            b2 += c2 * db * db
            xa2 = xa * xa
            xb2 = xb * xb
            p3a += xa2 * xa
            p4a += xa2 * xa2
            p3b += xb2 * xb
            p4b += xb2 * xb2
        _store_run(blk, 1, c, (ma, mb, a2, b2, p3a, p4a, p3b, p4b))


@njit(cache=True, inline="always")
def influence_factor(n):
    """``(n + 1) / (n (n - 1))``: the influence terms' factor of the state of
    ``n >= 2`` groups (the cell-blocked kernels take it from here; the row
    kernels of :mod:`melissa_sa.kernels.sobol_influence` compute the same)."""
    nf = float(n)
    return (nf + 1.0) / (nf * (nf - 1.0))


@njit(cache=True, inline="always")
def _add_mixed(x, xc, xc2, s21, s12, s31, s22, s13):
    """The power sums ``P_XC 21, 12, 31, 22, 13`` with one more ``(x, xc)``
    (``xc2 = xc * xc``), as the row kernel adds them."""
    xy = x * xc
    return s21 + xy * x, s12 + xy * xc, s31 + xy * (x * x), s22 + xy * xy, s13 + xy * xc2


@njit(cache=True, inline="always")
def quad_pair(sk, x, xk, n):
    """The 16 slots ``sk`` of pair ``k`` through the four groups (``xk``: the
    pair's rows of shifted ``C_k`` in ``x``), in the row kernel's order."""
    for c in range(BLOCK):
        mc, cc, ac, bc, p3, p4, a21, a12 = _load_run(sk, 0, c)
        a31, a22, a13, b21, b12, b31, b22, b13 = _load_run(sk, 8, c)
        for g in range(QUAD):
            r, c2 = welford_weights(n + g)
            xa = x[g * BLOCK + c]
            xb = x[(QUAD + g) * BLOCK + c]
            da = x[(2 * QUAD + g) * BLOCK + c]
            db = x[(3 * QUAD + g) * BLOCK + c]
            xc = xk[g * BLOCK + c]
            dc = xc - mc
            mc += r * dc
            cc += c2 * dc * dc
            ac += c2 * da * dc
            bc += c2 * db * dc
            xc2 = xc * xc
            p3 += xc2 * xc
            p4 += xc2 * xc2
            a21, a12, a31, a22, a13 = _add_mixed(xa, xc, xc2, a21, a12, a31, a22, a13)
            b21, b12, b31, b22, b13 = _add_mixed(xb, xc, xc2, b21, b12, b31, b22, b13)
        _store_run(sk, 0, c, (mc, cc, ac, bc, p3, p4, a21, a12))
        _store_run(sk, 8, c, (a31, a22, a13, b21, b12, b31, b22, b13))


@njit(cache=True, inline="always")
def quad_chunk(state, groups, g0, n, p, ch, n_cells, x):
    """Fold groups ``g0 .. g0 + 3`` (the first after ``n``) into the blocks of
    chunk ``ch`` (``x``: the chunk's scratch row)."""
    for b in chunk_blocks(ch, n_cells):
        lo = b * BLOCK
        blk = state[b]
        stage_quad(x, blk, groups, g0, lo, min(BLOCK, n_cells - lo), p, n == 0)
        quad_ab(blk, x, n, False)
        for k in range(p):
            o = (9 + 16 * k) * BLOCK
            quad_pair(blk[o:o + 16 * BLOCK], x, pair_rows(x, k), n)


@njit(cache=True, inline="always")
def recentre_chunk(state, ch, n_cells, n, p, recentre):
    """If ``recentre``, re-centre the blocks of chunk ``ch`` (``n`` groups)."""
    if recentre:
        for b in chunk_blocks(ch, n_cells):
            recentre_block(state[b], float(n), p)


@njit(cache=True, inline="always")
def batch_dims(groups, scratch):
    """``(p, n_cells, n_chunks)`` of a batched fold of ``groups`` (at least
    one); refuses a scratch smaller than
    :func:`~melissa_sa.kernels.sobol_blocked.scratch_for`'s."""
    p = groups[0].shape[0] - 2
    n_cells = groups[0].shape[1]
    if scratch.shape[0] < 1 or scratch.shape[1] < QUAD * (p + 8) * BLOCK:
        raise ValueError("scratch too small: rows of 4 (p + 8) 16 float64 "
                         "(kernels.sobol_blocked.scratch_for)")
    return p, n_cells, (n_cells + CHUNK - 1) // CHUNK


@njit(cache=True, inline="always")
def worker_chunks(w, n_workers, n_chunks):
    """The chunks of worker ``w`` of ``n_workers`` (one per scratch row, the
    parallel loop's iterations): a contiguous range."""
    per = (n_chunks + n_workers - 1) // n_workers
    return range(w * per, min(w * per + per, n_chunks))


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def blocked_update_many(state, groups, n, scratch, m=-1, recentre=False):
    """Fold ``m`` groups into a cell-blocked full state, in one pass over it.

    ``groups``, ``n`` and ``m`` as in
    :func:`~melissa_sa.kernels.sobol.martinez_update_many` (an ``(m, p + 2,
    n_cells)`` array or a tuple of ``(p + 2, n_cells)`` arrays, float32 or
    float64); the state is that kernel's, bit for bit, in blocks.
    ``scratch``: float64 ``(workers, >= 4 (p + 8) BLOCK)``
    (:func:`~melissa_sa.kernels.sobol_blocked.scratch_for`: a row per Numba
    thread): the parallel loop runs a worker per row, each over a contiguous
    range of chunks with its own scratch row. ``recentre``: then re-centre
    the state of ``n + m`` groups as
    :func:`~melissa_sa.kernels.sobol_blocked_recentre.blocked_recentre`
    does, each chunk once folded (the same state, one pass less).
    """
    m = batch_size(groups, m)
    if m == 0:
        return
    p, n_cells, n_chunks = batch_dims(groups, scratch)
    n_workers = scratch.shape[0]
    for w in prange(n_workers):
        x = scratch[w]
        for ch in worker_chunks(w, n_workers, n_chunks):
            g = 0
            while g + QUAD <= m:
                quad_chunk(state, groups, g, n + g, p, ch, n_cells, x)
                g += QUAD
            while g < m:
                fold_chunk(state, groups[g], n + g, p, ch, n_cells, x)
                g += 1
            recentre_chunk(state, ch, n_cells, n + m, p, recentre)
