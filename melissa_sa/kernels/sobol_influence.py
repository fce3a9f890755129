"""The aggregated indices' influence sums: a pass over block 1 of the Martinez
state, alone or fused with the batched fold.

The aggregated indices' interval (:mod:`melissa_sa.stats.sobol_aggregated`)
needs, per counted group, sums over the cells computed with block 1 of the
state (:mod:`melissa_sa.kernels.sobol`) as it was *before* the group.
:func:`aggregated_influence` is that pass alone;
:func:`martinez_update_many_influence` does it inside the batched fold,
chunk by chunk of :data:`~melissa_sa.kernels.sobol.CHUNK` cells, each
group's sums before its fold (one pass over the state for both; the same sums
and state, bit for bit). A group's terms are summed per chunk, then the
chunks in order: the sums do not depend on the thread count nor on the path.
"""

import math

from numba import njit, prange

from melissa_sa.kernels.sobol import CHUNK, batch_size, fold_rows
from melissa_sa.kernels.sobol_prefetch import prefetch

#: rows ahead whose block 1 is prefetched (measured: 4-16 all about halve the
#: influence pass, which reads 136 of a full row's 456 bytes at p = 3: a
#: gapped pattern the hardware prefetcher does not anticipate)
AHEAD = 8


@njit(cache=True, inline="always")
def _influence(state, group, n, p, lo, hi, partial, u, t, last):
    """``group``'s influence terms over cells ``[lo, hi)`` into ``partial[u, t]``.

    ``partial[u, t]`` (``(4, p)``: Phi and Psi, first then total order, see
    :mod:`melissa_sa.stats.sobol_aggregated`) is set to the sum over the
    cells, in cell order, of the terms computed with block 1 of ``state``
    holding ``n >= 2`` groups (the state *before* ``group``). The
    columns ``0 .. last`` of the rows :data:`AHEAD` cells on are prefetched
    (none if ``last < 0``).
    """
    nf = float(n)
    f = (nf + 1.0) / (nf * (nf - 1.0))
    for q in range(4):
        for k in range(p):
            partial[u, t, q, k] = 0.0
    for c in range(lo, hi):
        ahead = c + AHEAD
        if ahead < hi and last >= 0:
            for col in range(0, last + 8, 8):   # every cache line of the columns
                prefetch(state[ahead], min(col, last))
        s = state[c, 0]
        da = (group[0, c] - s) - state[c, 1]
        db = (group[1, c] - s) - state[c, 2]
        a2 = state[c, 3]
        b2 = state[c, 4]
        # Psi's term 1/2 (sqrt(c2/b2) eb + sqrt(b2/c2) ec) as sc hb + sb hc,
        # with hx = ex / (2 sx): one sqrt and one division per variable
        sa = math.sqrt(a2)
        sb = math.sqrt(b2)
        ha = 0.5 * (da * da - a2 * f) / sa if a2 > 0.0 else 0.0
        hb = 0.5 * (db * db - b2 * f) / sb if b2 > 0.0 else 0.0
        for k in range(p):
            i = 5 + 4 * k
            dc = (group[2 + k, c] - s) - state[c, i]
            c2 = state[c, i + 1]
            partial[u, t, 0, k] += db * dc - state[c, i + 3] * f
            partial[u, t, 2, k] += da * dc - state[c, i + 2] * f
            if c2 > 0.0:
                sc = math.sqrt(c2)
                hc = 0.5 * (dc * dc - c2 * f) / sc
                if b2 > 0.0:
                    partial[u, t, 1, k] += sc * hb + sb * hc
                if a2 > 0.0:
                    partial[u, t, 3, k] += sc * ha + sa * hc


@njit(cache=True, inline="always")
def _reduce(partial, n_chunks, u, p, out, row):
    """``out[row] += partial[u, t]`` for ``t = 0 .. n_chunks - 1``, in that order."""
    for t in range(n_chunks):
        for q in range(4):
            for k in range(p):
                out[row, q, k] += partial[u, t, q, k]


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def aggregated_influence(state, group, n, n_params, batch, partial, out):
    """Add one group's whole-slice influence sums into ``out[batch]``.

    ``state``: a SobolMartinez state (compact or full, block 1 read only)
    holding ``n >= 2`` groups, *before* this group is folded in; ``group``:
    ``(rows, n_cells)`` C-contiguous float32 or float64 whose first
    ``p + 2`` rows are ``A, B, C_1 .. C_p``; ``partial``: C-contiguous
    float64 scratch ``(>= ceil(n_cells / CHUNK), 4, p)``; ``out``:
    ``(n_batches, 4, p)`` float64, row ``batch`` incremented. The cells go
    by chunks of :data:`CHUNK`, each summed into its own row of ``partial``,
    the rows then added in chunk order: the sums of
    :func:`martinez_update_many_influence`, bit for bit, whatever the thread
    count. Nothing is allocated.
    """
    p = n_params
    n_cells = group.shape[1]
    n_chunks = (n_cells + CHUNK - 1) // CHUNK
    if partial.shape[0] < n_chunks:
        raise ValueError("aggregated_influence: partial has fewer rows than chunks of cells")
    part = partial.reshape((1, partial.shape[0], 4, p))
    for t in prange(n_chunks):
        lo = t * CHUNK
        _influence(state, group, n, p, lo, min(lo + CHUNK, n_cells), part, 0, t,
                   4 + 4 * p)   # block 1's columns
    _reduce(part, n_chunks, 0, p, out, batch)


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def martinez_update_many_influence(state, groups, n, rows, partial, out, m=-1):
    """:func:`martinez_update_many`, adding the influence sums of the groups
    flagged in ``rows`` into ``out`` on the way (one pass over the state).

    ``rows``: ``(m,)`` int64, the row of ``out`` (``(n_batches, 4, p)``
    float64) that group ``g``'s sums go to, or -1 for none; a flagged group
    needs ``n + g >= 2``. ``partial``: float64 scratch ``(>= m, >= ceil(n_cells /
    CHUNK), 4, p)``. For each chunk of :data:`CHUNK` cells and each
    group ``g`` in order: group ``g``'s influence terms from the chunk's
    rows as they are (every group before ``g`` folded, count ``n + g``),
    then the fold of ``g``. The state is that of :func:`martinez_update_many`
    and each ``out`` row gets the sums :func:`aggregated_influence` before
    each one-group fold would add, bit for bit, whatever the thread count.
    ``groups`` and ``m`` as in :func:`martinez_update_many` (an array, or a
    tuple of which the first ``m`` are folded). Nothing is allocated.
    """
    m = batch_size(groups, m)
    if m == 0:
        return
    p = groups[0].shape[0] - 2
    h = 5 + 4 * p
    n_cells = groups[0].shape[1]
    n_chunks = (n_cells + CHUNK - 1) // CHUNK
    if partial.shape[0] < m or partial.shape[1] < n_chunks or rows.shape[0] < m:
        raise ValueError("martinez_update_many_influence: partial or rows too small")
    power = state[:, h:]
    for b in prange(n_chunks):
        lo = b * CHUNK
        hi = min(lo + CHUNK, n_cells)
        for g in range(m):
            group = groups[g]
            # the first group's pass brings the rows in (prefetch all of
            # each: the fold reads it next); later ones find them in cache
            last = state.shape[1] - 1 if g == 0 else -1
            if rows[g] >= 0:
                _influence(state, group, n + g, p, lo, hi, partial, g, b, last)
            fold_rows(state, power, lo, hi, group, n + g, p)
    for g in range(m):
        if rows[g] >= 0:
            _reduce(partial, n_chunks, g, p, out, rows[g])
