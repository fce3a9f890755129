"""The re-centring of a cell-blocked Martinez state, in place, in SIMD lanes.

:func:`blocked_recentre` is :func:`~melissa_sa.kernels.sobol_centred.martinez_recentre`
on the cell-blocked layout of :mod:`melissa_sa.kernels.sobol_blocked`: every
cell's shift moves to ``shift + mean_A`` and block 2 is re-expanded about it,
one block at a time, the loop over the block's cells vectorised. Each value
comes from the operations of the row kernel on the same operands
(:func:`~melissa_sa.kernels.sobol_centred.move_pair` and
:func:`~melissa_sa.kernels.sobol_centred.move_single`, inlined), so the state
is the row kernel's, bit for bit. A cell the row kernel leaves alone (its new
shift not finite, or equal to the old one) gets its own values back: every
slot is written with a select rather than under a branch, so that the lanes
stay in vector registers; the zero lanes past the last cell do not move.

A block is done in ``p + 1`` passes over its cells: pair ``k``'s 16 slots
(:func:`_recentre_pair`, which reads block 1 and A's and B's third power
sums before they move), then A's and B's power sums, the shift and the
means (:func:`_recentre_ab`). The row kernel's path went through the row
layout a slice at a time (copy out, re-centre, copy back). The batched folds
re-centre each chunk right after folding it (:func:`recentre_block`), which
saves a pass over the state.
"""

from numba import njit, prange

from melissa_sa.kernels.sobol_blocked import BLOCK
from melissa_sa.kernels.sobol_centred import move_pair, move_single

__all__ = ["blocked_recentre", "recentre_block"]


@njit(cache=True, inline="always")
def _shift_move(blk, c):
    """``(d, moves)`` of cell ``c``: the row kernel's move ``target - shift``
    (``target = shift + mean_A``) and whether it moves (``target`` finite,
    ``d != 0``)."""
    s = blk[c]
    target = s + blk[BLOCK + c]
    d = target - s
    # target - target is 0 exactly when target is finite (NaN otherwise):
    # math.isfinite as a plain compare in the lanes
    return d, ((target - target) == 0.0) & (d != 0.0)


@njit(cache=True, inline="always")
def _ab_sums(blk, c, nf):
    """``(mean, sum x, sum x^2, sum x^3)`` of ``A`` then of ``B`` for cell ``c``
    (about the shift), as the row kernel derives them from block 1."""
    ma = blk[BLOCK + c]
    mb = blk[2 * BLOCK + c]
    return (ma, nf * ma, blk[3 * BLOCK + c] + nf * ma * ma, blk[5 * BLOCK + c],
            mb, nf * mb, blk[4 * BLOCK + c] + nf * mb * mb, blk[7 * BLOCK + c])


@njit(cache=True, inline="always")
def _store_moved(sk, q, c, moved, moves):
    """The 5 ``moved`` sums into lane ``c`` of slots ``q .. q + 4`` if ``moves``."""
    sk[q * BLOCK + c] = moved[0] if moves else sk[q * BLOCK + c]
    sk[(q + 1) * BLOCK + c] = moved[1] if moves else sk[(q + 1) * BLOCK + c]
    sk[(q + 2) * BLOCK + c] = moved[2] if moves else sk[(q + 2) * BLOCK + c]
    sk[(q + 3) * BLOCK + c] = moved[3] if moves else sk[(q + 3) * BLOCK + c]
    sk[(q + 4) * BLOCK + c] = moved[4] if moves else sk[(q + 4) * BLOCK + c]


@njit(cache=True, inline="always")
def _recentre_pair(blk, sk, nf):
    """Pair ``k``'s slots ``sk`` of block ``blk`` re-expanded, and its mean
    moved (A's and B's move in :func:`_recentre_ab`, once every pair has read
    them)."""
    for c in range(BLOCK):
        d, moves = _shift_move(blk, c)
        ma, a1, a2, a3, mb, b1, b2, b3 = _ab_sums(blk, c, nf)
        mc = sk[c]
        c1 = nf * mc
        c2 = sk[BLOCK + c] + nf * mc * mc
        ac11 = sk[2 * BLOCK + c] + nf * ma * mc
        bc11 = sk[3 * BLOCK + c] + nf * mb * mc
        c3 = sk[4 * BLOCK + c]
        p4 = sk[5 * BLOCK + c]
        qa = move_pair(nf, d, d, a1, a2, a3, c1, c2, c3, ac11,
                       sk[6 * BLOCK + c], sk[7 * BLOCK + c], sk[8 * BLOCK + c],
                       sk[9 * BLOCK + c], sk[10 * BLOCK + c])
        qb = move_pair(nf, d, d, b1, b2, b3, c1, c2, c3, bc11,
                       sk[11 * BLOCK + c], sk[12 * BLOCK + c], sk[13 * BLOCK + c],
                       sk[14 * BLOCK + c], sk[15 * BLOCK + c])
        q3, q4 = move_single(nf, d, c1, c2, c3, p4)
        sk[c] = mc - d if moves else mc
        sk[4 * BLOCK + c] = q3 if moves else c3
        sk[5 * BLOCK + c] = q4 if moves else p4
        _store_moved(sk, 6, c, qa, moves)
        _store_moved(sk, 11, c, qb, moves)


@njit(cache=True, inline="always")
def _recentre_ab(blk, nf):
    """A's and B's power sums re-expanded, the shift and their means moved."""
    for c in range(BLOCK):
        d, moves = _shift_move(blk, c)
        ma, a1, a2, a3, mb, b1, b2, b3 = _ab_sums(blk, c, nf)
        a4 = blk[6 * BLOCK + c]
        b4 = blk[8 * BLOCK + c]
        qa3, qa4 = move_single(nf, d, a1, a2, a3, a4)
        qb3, qb4 = move_single(nf, d, b1, b2, b3, b4)
        blk[5 * BLOCK + c] = qa3 if moves else a3
        blk[6 * BLOCK + c] = qa4 if moves else a4
        blk[7 * BLOCK + c] = qb3 if moves else b3
        blk[8 * BLOCK + c] = qb4 if moves else b4
        s = blk[c]
        blk[c] = s + ma if moves else s   # the row kernel's target
        blk[BLOCK + c] = ma - d if moves else ma
        blk[2 * BLOCK + c] = mb - d if moves else mb


@njit(cache=True, inline="always")
def recentre_block(blk, nf, p):
    """Re-centre the cells of block ``blk`` (``nf`` groups, float); the folds
    call it on a chunk's blocks right after its last group
    (:func:`~melissa_sa.kernels.sobol_blocked_fold.blocked_update_many`'s
    ``recentre``), while they are in cache."""
    for k in range(p):
        o = (9 + 16 * k) * BLOCK
        _recentre_pair(blk, blk[o:o + 16 * BLOCK], nf)
    _recentre_ab(blk, nf)


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def blocked_recentre(state, n, n_params):
    """Move every cell's shift of the cell-blocked full ``state`` (``n``
    groups, ``n_params`` parameters) to ``shift + mean_A``, in place: the
    state :func:`~melissa_sa.kernels.sobol_centred.martinez_recentre` makes
    of the row layout, bit for bit."""
    if n == 0:
        return
    p = n_params
    if state.shape[1] != (9 + 16 * p) * BLOCK:
        raise ValueError("blocked_recentre: the state is not a cell-blocked full state "
                         "of n_params parameters ((9 + 16 p) 16 float64 a block)")
    nf = float(n)
    for b in prange(state.shape[0]):
        recentre_block(state[b], nf, p)
