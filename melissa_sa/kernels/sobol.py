"""Martinez pick-freeze Sobol' kernels: one-pass co-moments per cell.

A pick-freeze group is ``p + 2`` runs: ``A``, ``B`` and ``C_k`` (``A`` with
column ``k`` taken from ``B``). It arrives as one array ``group`` of shape
``(p + 2, n_cells)``, rows ``A, B, C_1 .. C_p``, float32 or float64. Per cell
the Martinez (2011) estimators are correlations::

    S_k  = corr(Y_B, Y_Ck)          (first order)
    ST_k = 1 - corr(Y_A, Y_Ck)      (total order)

State layout (``LAYOUT = 2``)
-----------------------------
``state`` is a C-contiguous float64 array of shape ``(n_cells, width)``, one
row per cell. Every value of a cell is taken relative to the cell's
``shift`` ``s`` (the ``A`` value of the first group, later moved to ``A``'s
running mean, see *Re-centring*): ``x = value - s``, exact by Sterbenz' lemma
for outputs like ``1e9 + noise``.

Block 1, ``5 + 4 p`` values, exact shifted Welford sums: all the point
estimates and Fisher's interval need. For a variable ``X``
``X2 = sum (x_i - x̄)^2``, for a pair ``XY11 = sum (x_i - x̄)(y_i - ȳ)``::

    0          shift
    1, 2       mean_A, mean_B          (relative to shift)
    3, 4       A2, B2
    5 + 4k ..  mean_Ck, Ck2, ACk11, BCk11          k = 0 .. p-1

Block 2, ``4 + 12 p`` more values (the delta-method interval), from
``h = 5 + 4 p``: *power sums* of the shifted values, ``P3_X = sum x_i^3``,
``P_XY_ij = sum x_i^i y_i^j``::

    h .. h+3            P3_A, P4_A, P3_B, P4_B
    h + 4 + 12k ..      P3_Ck, P4_Ck,
                        P_ACk 21, 12, 31, 22, 13,
                        P_BCk 21, 12, 31, 22, 13

A "compact" state is block 1 only (``width = 5 + 4 p``, 136 bytes per cell at
``p = 3``); a "full" state is both blocks (``width = 9 + 16 p``, 456 bytes at
``p = 3``). Layout 1 (before) had the same slots holding *centred* sums
(``X3 = sum (x_i - x̄)^3`` ...): :func:`martinez_from_centred` converts it.

Update (one group, ``n`` groups already folded in, ``n' = n + 1``)
-------------------------------------------------------------------
With ``dx = x - x̄`` (deviation from the old mean), ``r = 1/n'`` and
``c2 = n/n'``: ``x̄ += r dx``, ``X2 += c2 dx^2``, ``XY11 += c2 dx dy``
(Welford 1962), then ``P3 += x^3``, ``P_XY_21 += x^2 y`` ... One pass over
the row per cell, rows indexed directly (``state[c, i]``), nothing allocated.

A group moves 40 bytes per cell in (float64, ``p = 3``) and the whole row,
912 bytes, through memory: the one-group fold is bound by its state
traffic. :func:`martinez_update_many` folds ``m`` groups in one pass over
the state (``912 / m + 40`` bytes per group), with the very operations of
``m`` one-group folds in the same order, so the result is bit for bit the
same.

The aggregated indices' interval needs, per counted group, sums over the
cells computed with block 1 *before* the group: those kernels, alone and
fused with the batched fold, are in :mod:`melissa_sa.kernels.sobol_influence`.

Merge, re-centring, layout-1 conversion, indices and intervals move block
2's power sums to another origin: :mod:`melissa_sa.kernels.sobol_centred`.

NaN in a group propagates to that cell only. Kernels allocate nothing inside
their cell loop and touch no Python object.
"""

from numba import njit, prange

#: meaning of block 2: 1 = centred sums (Pébay), 2 = power sums about the shift
LAYOUT = 2

#: cells per chunk of the batched fold: the chunk's rows (117 kB of a full
#: state at p = 3) stay in the L2 cache while the m groups are applied one
#: after the other, each read as p + 2 sequential streams (one pass per
#: group over m (p + 2) interleaved streams defeated the hardware prefetcher:
#: measured 1.3-1.7x slower at m = 8)
CHUNK = 256

#: the batched kernels take up to this many groups as a tuple of arrays (the
#: caller's own arrays, folded without a copy): one tuple length, so one
#: compiled version whatever the number of groups (:func:`group_tuple` pads)
GROUP_TUPLE = 8


def row_width(n_params, full=True):
    """Number of float64 accumulators per cell (``9 + 16 p`` or ``5 + 4 p``)."""
    return 9 + 16 * n_params if full else 5 + 4 * n_params


# ---------------------------------------------------------------------------
# update
# ---------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _fold_compact(state, c, group, first, r, c2, p):
    """Fold ``group`` ((p + 2, n_cells)) into block 1 of cell ``c``'s row."""
    if first:
        state[c, 0] = group[0, c]
    s = state[c, 0]
    da = (group[0, c] - s) - state[c, 1]
    db = (group[1, c] - s) - state[c, 2]
    for k in range(p):
        i = 5 + 4 * k
        dc = (group[2 + k, c] - s) - state[c, i]
        state[c, i] += r * dc
        state[c, i + 1] += c2 * dc * dc
        state[c, i + 2] += c2 * da * dc
        state[c, i + 3] += c2 * db * dc
    state[c, 1] += r * da
    state[c, 2] += r * db
    state[c, 3] += c2 * da * da
    state[c, 4] += c2 * db * db


@njit(cache=True, inline="always")
def _mixed_power_sums(power, c, j, x, x2, xc, xc2):
    """The five power sums ``P_XC 21, 12, 31, 22, 13`` of cell ``c``, in
    ``power[c, j:j + 5]`` (``X``: ``A`` or ``B``; ``x2 = x * x``)."""
    xy = x * xc
    power[c, j] += xy * x
    power[c, j + 1] += xy * xc
    power[c, j + 2] += xy * x2
    power[c, j + 3] += xy * xy
    power[c, j + 4] += xy * xc2


@njit(cache=True, inline="always")
def fold_full_row(state, power, c, group, first, r, c2, p):
    """Fold ``group`` ((p + 2, n_cells)) into blocks 1 and 2 of cell ``c``'s row.

    ``power`` is the view ``state[:, h:]`` of block 2: indexing it from 0
    lets the compiler see that no index is negative (no wrap-around test
    per access).
    """
    if first:
        state[c, 0] = group[0, c]
    s = state[c, 0]
    xa = group[0, c] - s
    xb = group[1, c] - s
    da = xa - state[c, 1]
    db = xb - state[c, 2]
    xa2 = xa * xa
    xb2 = xb * xb
    for k in range(p):
        i = 5 + 4 * k
        j = 4 + 12 * k
        xc = group[2 + k, c] - s
        dc = xc - state[c, i]
        state[c, i] += r * dc
        state[c, i + 1] += c2 * dc * dc
        state[c, i + 2] += c2 * da * dc
        state[c, i + 3] += c2 * db * dc
        xc2 = xc * xc
        power[c, j] += xc2 * xc
        power[c, j + 1] += xc2 * xc2
        _mixed_power_sums(power, c, j + 2, xa, xa2, xc, xc2)
        _mixed_power_sums(power, c, j + 7, xb, xb2, xc, xc2)
    state[c, 1] += r * da
    state[c, 2] += r * db
    state[c, 3] += c2 * da * da
    state[c, 4] += c2 * db * db
    power[c, 0] += xa2 * xa
    power[c, 1] += xa2 * xa2
    power[c, 2] += xb2 * xb
    power[c, 3] += xb2 * xb2


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def martinez_update(state, group, n):
    """Fold one group into a state, in place: block 1, and block 2 too when
    the state is full.

    ``state``: (n_cells, 5 + 4p) (compact) or (n_cells, 9 + 16p) (full)
    float64; ``group``: (p + 2, n_cells) C-contiguous float32 or float64,
    rows A, B, C_1..C_p; ``n``: groups already folded in.
    """
    p = group.shape[0] - 2
    r, c2 = welford_weights(n)
    h = 5 + 4 * p
    first = n == 0
    if state.shape[1] > h:
        power = state[:, h:]
        for c in prange(group.shape[1]):
            fold_full_row(state, power, c, group, first, r, c2, p)
    else:
        for c in prange(group.shape[1]):
            _fold_compact(state, c, group, first, r, c2, p)


@njit(cache=True, inline="always")
def welford_weights(n):
    """``(r, c2)`` of the Welford step of a group after ``n``: ``1 / (n + 1)``
    and ``n / (n + 1)``; every fold kernel takes them from here, so a
    batched fold uses the very values of one-group folds."""
    nf = float(n)
    r = 1.0 / (nf + 1.0)
    return r, nf * r


@njit(cache=True, inline="always")
def merged_by_copy(state_a, n_a, state_b, n_b):
    """The merge of ``state_b`` (``n_b`` groups) into ``state_a`` (``n_a``)
    when a side is empty: nothing to add (``n_b == 0``), or ``state_a``
    becomes a copy of ``state_b`` (``n_a == 0``). Whether it was done (the
    merge kernels of the first- and second-order states start with it)."""
    if n_b == 0:
        return True
    if n_a > 0:
        return False
    for c in prange(state_a.shape[0]):
        for q in range(state_a.shape[1]):
            state_a[c, q] = state_b[c, q]
    return True


@njit(cache=True, inline="always")
def batch_size(groups, m):
    """The number of groups a batched kernel folds: ``m``, or all of
    ``groups`` if ``m < 0``."""
    return len(groups) if m < 0 else m


@njit(cache=True, inline="always")
def fold_rows(state, power, lo, hi, group, n, p):
    """Fold ``group``, the group after ``n``, into the rows ``[lo, hi)`` of a
    full state (``power``: its block 2, as :func:`fold_full_row` takes it)."""
    r, c2 = welford_weights(n)
    for c in range(lo, hi):
        fold_full_row(state, power, c, group, n == 0, r, c2, p)


@njit(cache=True, inline="always")
def _fold_rows_compact(state, lo, hi, group, n, p):
    """:func:`fold_rows` for a compact state (block 1 only)."""
    r, c2 = welford_weights(n)
    for c in range(lo, hi):
        _fold_compact(state, c, group, n == 0, r, c2, p)


@njit(cache=True, nogil=True)
def martinez_update_many(state, groups, n, m=-1):
    """Fold ``m`` groups into a state (compact or full, as
    :func:`martinez_update`), in one pass over it.

    ``groups``: the groups in the order they count, an ``(m, p + 2,
    n_cells)`` array or a tuple of ``(p + 2, n_cells)`` arrays (see
    :data:`GROUP_TUPLE`) of which the first ``m`` are folded (``m < 0``:
    all); float32 or float64. The result is that of ``m`` calls of
    :func:`martinez_update` with ``n, n + 1, .., n + m - 1``, bit for bit
    (each accumulator goes through the same operations in the same order);
    each cell's row (``8 (9 + 16 p)`` bytes when full) is read from and
    written to memory once instead of ``m`` times (that traffic is what
    bounds the one-group fold): the cells go by chunks of :data:`CHUNK`,
    whose rows stay in cache while the ``m`` groups are applied to them in
    turn. The compact and the full fold are two compiled loops: one function
    holding both parallel loops folded a compact state about 5 % slower
    (measured on 10^6 cells, p = 3).
    """
    m = batch_size(groups, m)
    if m == 0:
        return
    p = groups[0].shape[0] - 2
    if state.shape[1] > 5 + 4 * p:
        _update_many_full(state, groups, n, m, p)
    else:
        _update_many_compact(state, groups, n, m, p)


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def _update_many_full(state, groups, n, m, p):
    power = state[:, 5 + 4 * p:]
    n_cells = groups[0].shape[1]
    for b in prange((n_cells + CHUNK - 1) // CHUNK):
        lo = b * CHUNK
        hi = min(lo + CHUNK, n_cells)
        for g in range(m):
            fold_rows(state, power, lo, hi, groups[g], n + g, p)


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def _update_many_compact(state, groups, n, m, p):
    n_cells = groups[0].shape[1]
    for b in prange((n_cells + CHUNK - 1) // CHUNK):
        lo = b * CHUNK
        hi = min(lo + CHUNK, n_cells)
        for g in range(m):
            _fold_rows_compact(state, lo, hi, groups[g], n + g, p)


def group_tuple(groups) -> tuple:
    """``groups`` (a list of at most :data:`GROUP_TUPLE` arrays of one shape
    and dtype) as the batched kernels' tuple, padded with its first array."""
    if not 0 < len(groups) <= GROUP_TUPLE:
        raise ValueError(f"{len(groups)} groups, expected 1 to {GROUP_TUPLE} per call")
    return tuple(groups) + (groups[0],) * (GROUP_TUPLE - len(groups))
