"""Second-order Martinez Sobol' kernels: the D_k rows of a pick-freeze group.

With second-order indices a group is ``2p + 2`` runs, rows
``A, B, C_1 .. C_p, D_1 .. D_p`` (:class:`melissa_sa.design.GroupLayout`):
``D_k`` is ``B`` with column ``k`` taken from ``A``. For ``i < j`` the runs
``C_i`` and ``D_j`` share exactly the inputs ``x_i`` (from ``B``) and ``x_j``
(from ``A``), so per cell::

    S_ij^closed = corr(Y_Ci, Y_Dj)
    S_ij        = S_ij^closed - S_i - S_j,      S_i = corr(Y_B, Y_Ci)

``S_i`` comes from the first-order state (:mod:`melissa_sa.kernels.sobol`,
read only here: its slots ``shift = 0``, ``mean_B = 2``, ``B2 = 4``,
``mean_Ck = 5 + 4k``, ``Ck2 = 6 + 4k``, ``BCk11 = 8 + 4k``).

State (``second``, C-contiguous float64, ``(n_cells, 2 + 3p + p (p - 1))``)
---------------------------------------------------------------------------
Pairs ``q`` run over ``itertools.combinations(range(p), 2)``, ``P`` of them::

    0                 shift: the cell's first A value (fixed)
    1                 W: sum of the weights of the IF^2 terms added
    2 + 2k, 3 + 2k    mean_Dk (relative to the shift), Dk2 (centred sum)
    2 + 2p + k        mean_Ck (relative to the shift)
    2 + 3p + q        CiDj11: centred co-moment of (C_i, D_j)
    2 + 3p + P + q    weighted sum of IF_ij^2 (prequential, see below)

Means and centred sums are exact shifted Welford recursions (Welford works
on deviations from the running mean, so a fixed shift near the data is
enough: ``1e9 + noise`` loses nothing); the merge is Chan et al.'s, exact.
The state keeps its own ``C_k`` means (rather than reading the first-order
state's) so that the exact recursions never depend on when the first-order
state is folded: the object may fold several groups per pass.

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
``S_ij +- q sqrt(sum / W / (n - 3))``. When a stack of ``m`` groups is
folded in one call, each of its groups is evaluated with the estimates from
before the stack (``t`` = the groups before the stack).

NaN in a group propagates to its cell only. Kernels allocate nothing inside
their cell loop.
"""

import math

from numba import njit, prange

from melissa_sa.kernels.sobol import merged_by_copy


def second_width(n_params):
    """Number of float64 accumulators per cell: ``2 + 3p + p (p - 1)``."""
    return 2 + 3 * n_params + n_params * (n_params - 1)


@njit(cache=True, inline="always")
def _offsets(p):
    """Where the state's blocks start (the table above): ``mean_Ck``
    (``2 + 2p``), ``CiDj11`` (``2 + 3p``), the IF^2 sums (``2 + 3p + P``)."""
    co = 2 + 3 * p
    return 2 + 2 * p, co, co + p * (p - 1) // 2


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
    return _clip(m11 / math.sqrt(x2 * y2))


@njit(cache=True, parallel=True, error_model="numpy")
def second_update(second, state, groups, n, n_state, n0):
    """Fold a stack of groups into ``second``, in place.

    ``second``: (n_cells, 2 + 3p + p (p - 1)) holding ``n`` groups;
    ``state``: the first-order state (compact or full) holding ``n_state``
    groups, none of these (``n_state < n`` when the first-order side buffers
    groups, ``n`` otherwise); ``groups``: (m, 2p + 2, n_cells), float32 or
    float64; ``n0``: groups needed before the prequential IF sums start.
    """
    m = groups.shape[0]
    p = (groups.shape[1] - 2) // 2
    cm, co, sq = _offsets(p)
    nf = float(n)
    ns = float(n_state)
    prequential = n_state >= n0 and n_state > 0
    # x~ = (x - mean) / sd * sqrt(n / (n + 1)) with sd = sqrt(X2 / n): the new
    # value's deviation from the old mean has variance sd^2 (n + 1) / n. With
    # w_x = 1 / sqrt(X2): x~ = (x - mean) w_x g, g = n / sqrt(n + 1), and
    # r = XY11 w_x w_y: one square root per variable. B and C_k come from
    # the first-order state (n_state groups), D_k from this one (n groups).
    g = ns / math.sqrt(ns + 1.0) if prequential else 0.0
    gd = nf / math.sqrt(nf + 1.0) if prequential else 0.0
    # corr(C_i, D_j) = CiDj11 / sqrt(Ci2 Dj2), Ci2 over n groups ~ Ci2 n / n_state
    rs = math.sqrt(ns / nf) if prequential else 0.0
    for c in prange(groups.shape[2]):
        if n == 0:
            second[c, 0] = groups[0, 0, c]
        s = second[c, 0]
        sm = state[c, 0]
        if prequential:
            b2 = state[c, 4]
            ok = b2 > 0.0
            for k in range(p):
                ok = ok and state[c, 6 + 4 * k] > 0.0 and second[c, 3 + 2 * k] > 0.0
            if ok:
                wb = 1.0 / math.sqrt(b2)
                for h in range(m):
                    bt = ((groups[h, 1, c] - sm) - state[c, 2]) * wb * g
                    bb = bt * bt
                    q = 0
                    for i in range(p - 1):
                        ii = 5 + 4 * i
                        wci = 1.0 / math.sqrt(state[c, ii + 1])
                        ct = ((groups[h, 2 + i, c] - sm) - state[c, ii]) * wci * g
                        cc = ct * ct
                        r2 = _clip(state[c, ii + 3] * wb * wci)
                        f2 = bt * ct - 0.5 * r2 * (bb + cc)
                        for j in range(i + 1, p):
                            jj = 5 + 4 * j
                            wcj = 1.0 / math.sqrt(state[c, jj + 1])
                            cjt = ((groups[h, 2 + j, c] - sm) - state[c, jj]) * wcj * g
                            r3 = _clip(state[c, jj + 3] * wb * wcj)
                            f3 = bt * cjt - 0.5 * r3 * (bb + cjt * cjt)
                            wdj = 1.0 / math.sqrt(second[c, 3 + 2 * j])
                            dt = ((groups[h, 2 + p + j, c] - s) - second[c, 2 + 2 * j]) * wdj * gd
                            r1 = _clip(second[c, co + q] * wci * wdj * rs)
                            f1 = ct * dt - 0.5 * r1 * (cc + dt * dt)
                            v = f1 - f2 - f3
                            second[c, sq + q] += ns * v * v
                            q += 1
                second[c, 1] += m * ns
        # exact shifted Welford, one group after the other
        for h in range(m):
            t = nf + h
            r = 1.0 / (t + 1.0)
            c2 = t * r
            q = 0
            for i in range(p):
                dci = (groups[h, 2 + i, c] - s) - second[c, cm + i]
                for j in range(i + 1, p):
                    ddj = (groups[h, 2 + p + j, c] - s) - second[c, 2 + 2 * j]
                    second[c, co + q] += c2 * dci * ddj
                    q += 1
                second[c, cm + i] += r * dci
            for k in range(p):
                dd = (groups[h, 2 + p + k, c] - s) - second[c, 2 + 2 * k]
                second[c, 2 + 2 * k] += r * dd
                second[c, 3 + 2 * k] += c2 * dd * dd


@njit(cache=True, parallel=True, error_model="numpy")
def second_merge(sec_a, n_a, sec_b, n_b, n_params):
    """Merge ``sec_b`` (``n_b`` groups) into ``sec_a`` (``n_a``), in place.

    Chan, Golub & LeVeque (1979): with ``δ`` the difference of the two
    sides' means (shifts accounted for) and ``w = n_a n_b / n``,
    ``CiDj11 = CiDj11_a + CiDj11_b + w δ_Ci δ_Dj``; the merged shift is
    ``a``'s. The weighted IF^2 sums and their weights add.
    """
    if merged_by_copy(sec_a, n_a, sec_b, n_b):
        return
    p = n_params
    cm, co, sq = _offsets(p)
    na = float(n_a)
    nb = float(n_b)
    w = na * nb / (na + nb)
    fb = nb / (na + nb)
    for c in prange(sec_a.shape[0]):
        ds = sec_b[c, 0] - sec_a[c, 0]
        q = 0
        for i in range(p):
            dci = ds + sec_b[c, cm + i] - sec_a[c, cm + i]
            for j in range(i + 1, p):
                ddj = ds + sec_b[c, 2 + 2 * j] - sec_a[c, 2 + 2 * j]
                sec_a[c, co + q] += sec_b[c, co + q] + w * dci * ddj
                sec_a[c, sq + q] += sec_b[c, sq + q]
                q += 1
            sec_a[c, cm + i] += fb * dci
        for k in range(p):
            dd = ds + sec_b[c, 2 + 2 * k] - sec_a[c, 2 + 2 * k]
            sec_a[c, 3 + 2 * k] += sec_b[c, 3 + 2 * k] + w * dd * dd
            sec_a[c, 2 + 2 * k] += fb * dd
        sec_a[c, 1] += sec_b[c, 1]


@njit(cache=True, inline="always")
def _second_index(second, state, c, p, i, j, q):
    """``S_ij`` of cell ``c`` and whether its four variances are all 0."""
    co = _offsets(p)[1]
    b2 = state[c, 4]
    ci2 = state[c, 6 + 4 * i]
    cj2 = state[c, 6 + 4 * j]
    dj2 = second[c, 3 + 2 * j]
    r1 = _clip_corr(second[c, co + q], ci2, dj2)
    r2 = _clip_corr(state[c, 8 + 4 * i], b2, ci2)
    r3 = _clip_corr(state[c, 8 + 4 * j], b2, cj2)
    flat = b2 == 0.0 and ci2 == 0.0 and cj2 == 0.0 and dj2 == 0.0
    return r1 - r2 - r3, flat


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
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


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def second_interval(second, state, n, n_params, q, low, high):
    """Write ``S_ij +- q se`` into ``low``, ``high`` (n_pairs, n_cells).

    ``se = sqrt(sum t IF^2 / sum t / (n - 3))``. A cell with no contribution
    yet gets ``[0, 0]`` when its four variances are 0 (constant cell) and
    the estimator's range ``[-3, 1]`` otherwise; NaN propagates.
    """
    p = n_params
    sq = _offsets(p)[2]
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
