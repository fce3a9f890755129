"""Second-order Martinez Sobol' kernels: the D_k rows of a pick-freeze group.

With second-order indices a group is ``2p + 2`` runs, rows
``A, B, C_1 .. C_p, D_1 .. D_p`` (:class:`melissa_sa.design.GroupLayout`):
``D_k`` is ``B`` with column ``k`` taken from ``A``. For ``i < j`` the runs
``C_i`` and ``D_j`` share exactly the inputs ``x_i`` (from ``B``) and ``x_j``
(from ``A``), so per cell::

    S_ij^closed = corr(Y_Ci, Y_Dj)
    S_ij        = S_ij^closed - S_i - S_j,      S_i = corr(Y_B, Y_Ci)

``S_i`` comes from the first-order state (:mod:`melissa_sa.kernels.sobol`,
read only here: its slots ``mean_B = 2``, ``B2 = 4``, ``mean_Ck = 5 + 4k``,
``Ck2 = 6 + 4k``, ``BCk11 = 8 + 4k``, ``shift = 0``).

State (``second``, C-contiguous float64, ``(n_cells, 2 + 2p + 2 n_pairs)``)
--------------------------------------------------------------------------
Pairs ``q`` run over ``itertools.combinations(range(p), 2)``::

    0                 shift (a copy of the first-order state's shift, see below)
    1                 W: sum of the weights of the IF^2 terms added
    2 + 2k, 3 + 2k    mean_Dk (relative to shift), Dk2 (centred sum)
    2 + 2p + q        CiDj11: centred co-moment of (C_i, D_j)
    2 + 2p + P + q    weighted sum of IF_ij^2 (prequential, see below)

The shift is the same as the first-order state's (the ``A`` value of the
first group, moved to ``A``'s running mean by re-centring and merges): the
object calls :func:`second_sync_shift` after every move of the first-order
state, so this state never needs to know how that shift is chosen. Means
are exact shifted Welford recursions; the merge is Chan et al.'s, exact.

Interval (delta method through the influence function)
------------------------------------------------------
``S_ij`` is a difference of three correlations. With the influence function
of a correlation ``IF_r(x, y; r) = x~ y~ - r/2 (x~^2 + y~^2)`` (standardised
values ``x~ = (x - mean) / sd``), that of ``S_ij`` is::

    IF_ij = IF_r(c_i, d_j; r1) - IF_r(b, c_i; r2) - IF_r(b, c_j; r3)

and ``Var(S_ij) ~ E[IF_ij^2] / n``. ``E[IF_ij^2]`` needs fourth-order cross
moments of four variables per pair; instead each new group's ``IF_ij`` is
evaluated with the estimates from *before* the group (means, sds, ``r1``,
``r2``, ``r3`` of its cell, from the ``t`` groups folded so far), and
``t IF_ij^2`` is added to the pair's sum ("prequential"), ``t`` to ``W``.
The deviations are scaled by ``sqrt(t / (t + 1))`` (a new value's
deviation from the old mean has variance ``sd^2 (t + 1) / t``). A plug-in
from ``t`` groups overestimates ``E[IF^2]`` by ``O(1/t)``: the weights
``t`` make the bias of the average ``O(1/n)`` instead of ``O(log n / n)``,
and keep the interval of a merged state close to that of one stream. A
cell contributes once at least ``n0`` groups are in and all the variances
it needs are positive. :func:`second_interval` gives
``S_ij +- q sqrt(sum / W / (n - 3))``.

NaN in a group propagates to its cell only. Kernels allocate nothing inside
their cell loop. :func:`second_update` must be called *before* the
first-order update of the same group (it reads the first-order means
before the group).
"""

import math

from numba import njit, prange


def second_width(n_params):
    """Number of float64 accumulators per cell: ``2 + 2p + p (p - 1)``."""
    return 2 + 2 * n_params + n_params * (n_params - 1)


@njit(cache=True, inline="always")
def _clip(rho):
    """``rho`` clipped to [-1, 1] (rounding can step out)."""
    if rho > 1.0:
        return 1.0
    if rho < -1.0:
        return -1.0
    return rho


@njit(cache=True, inline="always")
def _clip_corr(m11, x2, y2):
    """Correlation from centred sums, in [-1, 1]; 0 when a variance is 0."""
    if x2 == 0.0 or y2 == 0.0:
        return 0.0
    rho = m11 / math.sqrt(x2 * y2)
    if rho > 1.0:
        return 1.0
    if rho < -1.0:
        return -1.0
    return rho


@njit(cache=True, parallel=True, error_model="numpy")
def second_update(second, state, group, n, n0):
    """Fold one group's D rows (and the IF sums) into ``second``, in place.

    ``second``: (n_cells, 2 + 2p + 2 n_pairs); ``state``: the first-order
    state (compact or full) *before* this group; ``group``: (2p + 2,
    n_cells), float32 or float64; ``n``: groups already folded in; ``n0``:
    groups needed before the prequential IF sums start.
    """
    p = (group.shape[0] - 2) // 2
    n_pairs = p * (p - 1) // 2
    co = 2 + 2 * p
    sq = co + n_pairs
    nf = float(n)
    r = 1.0 / (nf + 1.0)
    c2 = nf * r
    first = n == 0
    prequential = n >= n0 and n > 0
    # x~ = (x - mean) / sd * sqrt(n / (n + 1)) with sd = sqrt(X2 / n): the new
    # value's deviation from the old mean has variance sd^2 (n + 1) / n. With
    # w_x = 1 / sqrt(X2): x~ = (x - mean) w_x g, g = n / sqrt(n + 1), and
    # r = XY11 w_x w_y: one square root per variable.
    g = nf / math.sqrt(nf + 1.0)
    for c in prange(group.shape[1]):
        if first:
            second[c, 0] = group[0, c]
        s = second[c, 0]
        sm = s if first else state[c, 0]
        if prequential:
            b2 = state[c, 4]
            ok = b2 > 0.0
            for k in range(p):
                ok = ok and state[c, 6 + 4 * k] > 0.0 and second[c, 3 + 2 * k] > 0.0
            if ok:
                wb = 1.0 / math.sqrt(b2)
                bt = ((group[1, c] - sm) - state[c, 2]) * wb * g
                bb = bt * bt
                q = 0
                for i in range(p - 1):
                    ii = 5 + 4 * i
                    wci = 1.0 / math.sqrt(state[c, ii + 1])
                    ct = ((group[2 + i, c] - sm) - state[c, ii]) * wci * g
                    cc = ct * ct
                    r2 = _clip(state[c, ii + 3] * wb * wci)
                    f2 = bt * ct - 0.5 * r2 * (bb + cc)
                    for j in range(i + 1, p):
                        jj = 5 + 4 * j
                        wcj = 1.0 / math.sqrt(state[c, jj + 1])
                        cjt = ((group[2 + j, c] - sm) - state[c, jj]) * wcj * g
                        r3 = _clip(state[c, jj + 3] * wb * wcj)
                        f3 = bt * cjt - 0.5 * r3 * (bb + cjt * cjt)
                        wdj = 1.0 / math.sqrt(second[c, 3 + 2 * j])
                        dt = ((group[2 + p + j, c] - s) - second[c, 2 + 2 * j]) * wdj * g
                        r1 = _clip(second[c, co + q] * wci * wdj)
                        f1 = ct * dt - 0.5 * r1 * (cc + dt * dt)
                        v = f1 - f2 - f3
                        second[c, sq + q] += nf * v * v
                        q += 1
                second[c, 1] += nf
        # exact shifted Welford: cross co-moments with the old means first
        q = 0
        for i in range(p):
            dci = (group[2 + i, c] - sm) - state[c, 5 + 4 * i]
            for j in range(i + 1, p):
                ddj = (group[2 + p + j, c] - s) - second[c, 2 + 2 * j]
                second[c, co + q] += c2 * dci * ddj
                q += 1
        for k in range(p):
            dd = (group[2 + p + k, c] - s) - second[c, 2 + 2 * k]
            second[c, 2 + 2 * k] += r * dd
            second[c, 3 + 2 * k] += c2 * dd * dd


@njit(cache=True, parallel=True, error_model="numpy")
def second_sync_shift(second, state, n_params):
    """Move ``second``'s shift to the first-order state's, in place.

    Called after the first-order state's shift moved (re-centring, merge):
    the D means move by the difference; the sums are shift-free.
    """
    for c in prange(second.shape[0]):
        d = state[c, 0] - second[c, 0]
        if d == 0.0 or not math.isfinite(d):
            continue
        for k in range(n_params):
            second[c, 2 + 2 * k] -= d
        second[c, 0] = state[c, 0]


@njit(cache=True, parallel=True, error_model="numpy")
def second_merge(sec_a, state_a, n_a, sec_b, state_b, n_b, n_params):
    """Merge ``sec_b`` (``n_b`` groups) into ``sec_a`` (``n_a``), in place.

    Call it *before* the first-order merge (it reads both first-order
    states' C means as they were), then :func:`second_sync_shift`. Chan,
    Golub & LeVeque (1979): with ``δ`` the difference of the two sides'
    means (shifts accounted for) and ``w = n_a n_b / n``,
    ``CiDj11 = CiDj11_a + CiDj11_b + w δ_Ci δ_Dj``. The weighted IF^2 sums
    and their weights add.
    """
    if n_b == 0:
        return
    width = sec_a.shape[1]
    if n_a == 0:
        for c in prange(sec_a.shape[0]):
            for t in range(width):
                sec_a[c, t] = sec_b[c, t]
        return
    p = n_params
    n_pairs = p * (p - 1) // 2
    co = 2 + 2 * p
    sq = co + n_pairs
    na = float(n_a)
    nb = float(n_b)
    w = na * nb / (na + nb)
    fb = nb / (na + nb)
    for c in prange(sec_a.shape[0]):
        ds_c = state_b[c, 0] - state_a[c, 0]
        ds_d = sec_b[c, 0] - sec_a[c, 0]
        q = 0
        for i in range(p):
            dci = ds_c + state_b[c, 5 + 4 * i] - state_a[c, 5 + 4 * i]
            for j in range(i + 1, p):
                ddj = ds_d + sec_b[c, 2 + 2 * j] - sec_a[c, 2 + 2 * j]
                sec_a[c, co + q] += sec_b[c, co + q] + w * dci * ddj
                sec_a[c, sq + q] += sec_b[c, sq + q]
                q += 1
        for k in range(p):
            dd = ds_d + sec_b[c, 2 + 2 * k] - sec_a[c, 2 + 2 * k]
            sec_a[c, 3 + 2 * k] += sec_b[c, 3 + 2 * k] + w * dd * dd
            sec_a[c, 2 + 2 * k] += fb * dd
        sec_a[c, 1] += sec_b[c, 1]


@njit(cache=True, inline="always")
def _second_index(second, state, c, p, i, j, q):
    """``S_ij`` of cell ``c`` and whether its four variances are all 0."""
    co = 2 + 2 * p
    b2 = state[c, 4]
    ci2 = state[c, 6 + 4 * i]
    cj2 = state[c, 6 + 4 * j]
    dj2 = second[c, 3 + 2 * j]
    r1 = _clip_corr(second[c, co + q], ci2, dj2)
    r2 = _clip_corr(state[c, 8 + 4 * i], b2, ci2)
    r3 = _clip_corr(state[c, 8 + 4 * j], b2, cj2)
    flat = b2 == 0.0 and ci2 == 0.0 and cj2 == 0.0 and dj2 == 0.0
    return r1 - r2 - r3, flat


@njit(cache=True, parallel=True, error_model="numpy")
def second_indices(second, state, n_params, out):
    """Write ``S_ij`` (n_pairs, n_cells): ``corr(C_i, D_j) - S_i - S_j``.

    A correlation with a zero variance on either side counts as 0, so a
    constant cell gives 0; a NaN sample gives NaN in its cell.
    """
    p = n_params
    for c in prange(second.shape[0]):
        q = 0
        for i in range(p):
            for j in range(i + 1, p):
                out[q, c] = _second_index(second, state, c, p, i, j, q)[0]
                q += 1


#: the whole range of the estimator ``r1 - r2 - r3``: the interval before
#: any IF contribution (fewer than ``n0`` groups) in a cell that is not flat
RANGE_LOW = -3.0
RANGE_HIGH = 1.0


@njit(cache=True, parallel=True, error_model="numpy")
def second_interval(second, state, n, n_params, q, low, high):
    """Write ``S_ij +- q se`` into ``low``, ``high`` (n_pairs, n_cells).

    ``se = sqrt(sum t IF^2 / sum t / (n - 3))``. A cell with no contribution
    yet gets ``[0, 0]`` when its four variances are 0 (constant cell) and
    the estimator's range ``[-3, 1]`` otherwise; NaN propagates.
    """
    p = n_params
    n_pairs = p * (p - 1) // 2
    sq = 2 + 2 * p + n_pairs
    nf = float(n)
    for c in prange(second.shape[0]):
        weight = second[c, 1]
        qq = 0
        for i in range(p):
            for j in range(i + 1, p):
                s, flat = _second_index(second, state, c, p, i, j, qq)
                if s != s:
                    lo = s
                    hi = s
                elif weight == 0.0 or nf <= 3.0:
                    if flat:
                        lo = s
                        hi = s
                    else:
                        lo = RANGE_LOW
                        hi = RANGE_HIGH
                else:
                    se = math.sqrt(second[c, sq + qq] / weight / (nf - 3.0))
                    lo = s - q * se
                    hi = s + q * se
                low[qq, c] = lo
                high[qq, c] = hi
                qq += 1
