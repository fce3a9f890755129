"""Martinez pick-freeze Sobol' kernels: one-pass co-moments per cell.

A pick-freeze group is ``p + 2`` runs: ``A``, ``B`` and ``C_k`` (``A`` with
column ``k`` taken from ``B``). It arrives as one array ``group`` of shape
``(p + 2, n_cells)``, rows ``A, B, C_1 .. C_p``, float32 or float64. Per cell
the Martinez (2011) estimators are correlations::

    S_k  = corr(Y_B, Y_Ck)          (first order)
    ST_k = 1 - corr(Y_A, Y_Ck)      (total order)

so the state holds the running means and centred (co-)moments those
correlations need, and -- for the delta-method confidence interval -- the
centred moments up to order four of the ``2 p`` pairs ``(A, C_k)`` and
``(B, C_k)``.

State layout
------------
``state`` is a C-contiguous float64 array of shape ``(n_cells, width)``, one
row per cell (all accumulators of a cell are contiguous). For a variable
``X`` (values ``x_i``, running mean ``x̄``) ``X2 = sum (x_i - x̄)^2`` and for a
pair ``XY_ij = sum (x_i - x̄)^i (y_i - ȳ)^j``. Means are kept relative to the
cell's ``shift`` (the ``A`` value of the first group), so outputs like
``1e9 + noise`` are handled as accurately as a two-pass computation (``x -
shift`` is exact by Sterbenz' lemma and the recursion runs on small numbers).

Block 1, ``5 + 4 p`` values (all the point estimates and Fisher-z need)::

    0          shift
    1, 2       mean_A, mean_B          (relative to shift)
    3, 4       A2, B2
    5 + 4k ..  mean_Ck, Ck2, ACk11, BCk11          k = 0 .. p-1

Block 2, ``4 + 12 p`` more values (the delta-method interval), from
``h = 5 + 4 p``::

    h .. h+3            A3, A4, B3, B4
    h + 4 + 12k ..      Ck3, Ck4,
                        ACk21, ACk12, ACk31, ACk22, ACk13,
                        BCk21, BCk12, BCk31, BCk22, BCk13

A "compact" state is block 1 only (``width = 5 + 4 p``, 136 bytes per cell at
``p = 3``); a "full" state is both blocks (``width = 9 + 16 p``, 456 bytes at
``p = 3``). Block 1 has the same positions in both, so the finalising
kernels read either.

Update (one group, ``n`` groups already folded in, ``n' = n + 1``)
-------------------------------------------------------------------
With ``dx = x - x̄`` (deviation from the old mean), ``r = 1/n'`` and the
scalars ``c2 = n/n'``, ``c3 = n (n-1)/n'^2``, ``c4 = n (n^2-n+1)/n'^3``
(computed once per call, the count is the same for all cells)::

    x̄    += r dx
    X2   += c2 dx^2
    X3   += -3 r dx X2 + c3 dx^3
    X4   += -4 r dx X3 + 6 r^2 dx^2 X2 + c4 dx^4
    XY11 += c2 dx dy
    XY21 += -2 r dx XY11 - r dy X2 + c3 dx^2 dy
    XY31 += -3 r dx XY21 - r dy X3 + 3 r^2 dx^2 XY11 + 3 r^2 dx dy X2
            + c4 dx^3 dy
    XY22 += -2 r dx XY12 - 2 r dy XY21 + r^2 dx^2 Y2 + r^2 dy^2 X2
            + 4 r^2 dx dy XY11 + c4 dx^2 dy^2

(and the mirror images for ``XY12``, ``XY13``), every right-hand side using
the old values: Welford (1962) for order two and Pébay (2008, SAND2008-6212)
for the higher orders, all built from deviations, never raw power sums.

Merge
-----
Two partial states ``a`` (``n_a`` groups) and ``b`` (``n_b``) merge exactly
(Chan, Golub & LeVeque 1979; Pébay 2008): with ``δ = x̄_b - x̄_a`` and
``n = n_a + n_b`` each side's deviations move by ``u_a = -(n_b/n) δ``,
``u_b = (n_a/n) δ``, and a centred sum moved by ``u`` (``v`` for ``y``) is::

    XY11 + N u v
    XY21 + 2 u XY11 + v X2 + N u^2 v
    XY31 + 3 u XY21 + v X3 + 3 u^2 XY11 + 3 u v X2 + N u^3 v
    XY22 + 2 v XY21 + 2 u XY12 + v^2 X2 + u^2 Y2 + 4 u v XY11 + N u^2 v^2

(binomial expansion; ``X10 = 0``), summed over both sides.

NaN in a group propagates to that cell only. Kernels allocate nothing inside
their cell loop and touch no Python object.
"""

import math

from numba import njit, prange

#: interval method codes for :func:`martinez_interval`
FISHER = 0
DELTA = 1
DELTA_LINEAR = 2


def row_width(n_params, full=True):
    """Number of float64 accumulators per cell (``9 + 16 p`` or ``5 + 4 p``)."""
    return 9 + 16 * n_params if full else 5 + 4 * n_params


# ---------------------------------------------------------------------------
# update
# ---------------------------------------------------------------------------


@njit(cache=True, parallel=True, error_model="numpy")
def martinez_update_compact(state, group, n):
    """Fold one group into a compact state (block 1 only), in place.

    ``state``: (n_cells, 5 + 4p) float64; ``group``: (p + 2, n_cells) float32
    or float64, rows A, B, C_1..C_p; ``n``: groups already folded in.
    """
    p = group.shape[0] - 2
    nf = float(n)
    r = 1.0 / (nf + 1.0)
    c2 = nf * r
    first = n == 0
    for c in prange(group.shape[1]):
        row = state[c]
        if first:
            row[0] = group[0, c]
        s = row[0]
        ma = row[1]
        mb = row[2]
        da = (group[0, c] - s) - ma
        db = (group[1, c] - s) - mb
        for k in range(p):
            i = 5 + 4 * k
            dc = (group[2 + k, c] - s) - row[i]
            row[i] += r * dc
            row[i + 1] += c2 * dc * dc
            row[i + 2] += c2 * da * dc
            row[i + 3] += c2 * db * dc
        row[1] = ma + r * da
        row[2] = mb + r * db
        row[3] += c2 * da * da
        row[4] += c2 * db * db


@njit(cache=True, parallel=True, error_model="numpy")
def martinez_update(state, group, n):
    """Fold one group into a full state (blocks 1 and 2), in place.

    ``state``: (n_cells, 9 + 16p) float64; ``group``: (p + 2, n_cells)
    float32 or float64, rows A, B, C_1..C_p; ``n``: groups already folded in.
    """
    p = group.shape[0] - 2
    nf = float(n)
    r = 1.0 / (nf + 1.0)
    r2 = r * r
    c2 = nf * r
    c3 = nf * (nf - 1.0) * r2
    c4 = nf * (nf * nf - nf + 1.0) * r2 * r
    h = 5 + 4 * p
    first = n == 0
    for c in prange(group.shape[1]):
        row = state[c]
        if first:
            row[0] = group[0, c]
        s = row[0]
        da = (group[0, c] - s) - row[1]
        db = (group[1, c] - s) - row[2]
        a2 = row[3]
        b2 = row[4]
        a3 = row[h]
        a4 = row[h + 1]
        b3 = row[h + 2]
        b4 = row[h + 3]
        rda = r * da
        rdb = r * db
        for k in range(p):
            i = 5 + 4 * k
            j = h + 4 + 12 * k
            dc = (group[2 + k, c] - s) - row[i]
            rdc = r * dc
            y2 = row[i + 1]
            y3 = row[j]
            y4 = row[j + 1]
            # pair (A, C_k): slots i+2 and j+2 .. j+6
            m11 = row[i + 2]
            m21 = row[j + 2]
            m12 = row[j + 3]
            row[j + 4] += (-3.0 * rda * m21 - rdc * a3 + 3.0 * rda * rda * m11
                           + 3.0 * rda * rdc * a2 + c4 * da * da * da * dc)
            row[j + 5] += (-2.0 * rda * m12 - 2.0 * rdc * m21 + rda * rda * y2
                           + rdc * rdc * a2 + 4.0 * rda * rdc * m11
                           + c4 * da * da * dc * dc)
            row[j + 6] += (-3.0 * rdc * m12 - rda * y3 + 3.0 * rdc * rdc * m11
                           + 3.0 * rda * rdc * y2 + c4 * da * dc * dc * dc)
            row[j + 2] = m21 - 2.0 * rda * m11 - rdc * a2 + c3 * da * da * dc
            row[j + 3] = m12 - 2.0 * rdc * m11 - rda * y2 + c3 * da * dc * dc
            row[i + 2] = m11 + c2 * da * dc
            # pair (B, C_k): slots i+3 and j+7 .. j+11
            m11 = row[i + 3]
            m21 = row[j + 7]
            m12 = row[j + 8]
            row[j + 9] += (-3.0 * rdb * m21 - rdc * b3 + 3.0 * rdb * rdb * m11
                           + 3.0 * rdb * rdc * b2 + c4 * db * db * db * dc)
            row[j + 10] += (-2.0 * rdb * m12 - 2.0 * rdc * m21 + rdb * rdb * y2
                            + rdc * rdc * b2 + 4.0 * rdb * rdc * m11
                            + c4 * db * db * dc * dc)
            row[j + 11] += (-3.0 * rdc * m12 - rdb * y3 + 3.0 * rdc * rdc * m11
                            + 3.0 * rdb * rdc * y2 + c4 * db * dc * dc * dc)
            row[j + 7] = m21 - 2.0 * rdb * m11 - rdc * b2 + c3 * db * db * dc
            row[j + 8] = m12 - 2.0 * rdc * m11 - rdb * y2 + c3 * db * dc * dc
            row[i + 3] = m11 + c2 * db * dc
            # C_k itself
            row[j + 1] = y4 - 4.0 * rdc * y3 + 6.0 * rdc * rdc * y2 + c4 * dc * dc * dc * dc
            row[j] = y3 - 3.0 * rdc * y2 + c3 * dc * dc * dc
            row[i + 1] = y2 + c2 * dc * dc
            row[i] += rdc
        row[h + 1] = a4 - 4.0 * rda * a3 + 6.0 * rda * rda * a2 + c4 * da * da * da * da
        row[h] = a3 - 3.0 * rda * a2 + c3 * da * da * da
        row[h + 3] = b4 - 4.0 * rdb * b3 + 6.0 * rdb * rdb * b2 + c4 * db * db * db * db
        row[h + 2] = b3 - 3.0 * rdb * b2 + c3 * db * db * db
        row[3] = a2 + c2 * da * da
        row[4] = b2 + c2 * db * db
        row[1] += rda
        row[2] += rdb


# ---------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------


@njit(cache=True, parallel=True, error_model="numpy")
def martinez_merge(state_a, n_a, state_b, n_b, n_params):
    """Merge state ``b`` (``n_b`` groups) into state ``a`` (``n_a``), in place.

    Both states have the same width: compact (``5 + 4p``) or full
    (``9 + 16p``). Keeps ``a``'s shift. The result is the state of one
    stream that saw both sets of groups, up to rounding.
    """
    if n_b == 0:
        return
    width = state_a.shape[1]
    if n_a == 0:
        for c in prange(state_a.shape[0]):
            for q in range(width):
                state_a[c, q] = state_b[c, q]
        return
    p = n_params
    full = width == 9 + 16 * p
    h = 5 + 4 * p
    na = float(n_a)
    nb = float(n_b)
    n = na + nb
    wa = -nb / n  # a's deviations move by wa * delta
    wb = na / n   # b's deviations move by wb * delta
    for c in prange(state_a.shape[0]):
        ra = state_a[c]
        rb = state_b[c]
        ds = rb[0] - ra[0]
        dA = ds + rb[1] - ra[1]
        dB = ds + rb[2] - ra[2]
        uA = wa * dA
        vA = wb * dA
        uB = wa * dB
        vB = wb * dB
        a2a = ra[3]
        a2b = rb[3]
        b2a = ra[4]
        b2b = rb[4]
        if full:
            a3a = ra[h]
            a3b = rb[h]
            b3a = ra[h + 2]
            b3b = rb[h + 2]
        else:
            a3a = 0.0
            a3b = 0.0
            b3a = 0.0
            b3b = 0.0
        for k in range(p):
            i = 5 + 4 * k
            dC = ds + rb[i] - ra[i]
            uC = wa * dC
            vC = wb * dC
            y2a = ra[i + 1]
            y2b = rb[i + 1]
            if full:
                j = h + 4 + 12 * k
                y3a = ra[j]
                y3b = rb[j]
                # pair (A, C_k) then pair (B, C_k)
                for side in range(2):
                    if side == 0:
                        o11 = i + 2
                        o = j + 2
                        ux = uA
                        vx = vA
                        x2a = a2a
                        x2b = a2b
                        x3a = a3a
                        x3b = a3b
                    else:
                        o11 = i + 3
                        o = j + 7
                        ux = uB
                        vx = vB
                        x2a = b2a
                        x2b = b2b
                        x3a = b3a
                        x3b = b3b
                    m11a = ra[o11]
                    m11b = rb[o11]
                    m21a = ra[o]
                    m21b = rb[o]
                    m12a = ra[o + 1]
                    m12b = rb[o + 1]
                    ra[o + 2] = (
                        ra[o + 2] + 3.0 * ux * m21a + uC * x3a + 3.0 * ux * ux * m11a
                        + 3.0 * ux * uC * x2a + na * ux * ux * ux * uC
                        + rb[o + 2] + 3.0 * vx * m21b + vC * x3b + 3.0 * vx * vx * m11b
                        + 3.0 * vx * vC * x2b + nb * vx * vx * vx * vC)
                    ra[o + 3] = (
                        ra[o + 3] + 2.0 * uC * m21a + 2.0 * ux * m12a + uC * uC * x2a
                        + ux * ux * y2a + 4.0 * ux * uC * m11a + na * ux * ux * uC * uC
                        + rb[o + 3] + 2.0 * vC * m21b + 2.0 * vx * m12b + vC * vC * x2b
                        + vx * vx * y2b + 4.0 * vx * vC * m11b + nb * vx * vx * vC * vC)
                    ra[o + 4] = (
                        ra[o + 4] + 3.0 * uC * m12a + ux * y3a + 3.0 * uC * uC * m11a
                        + 3.0 * ux * uC * y2a + na * ux * uC * uC * uC
                        + rb[o + 4] + 3.0 * vC * m12b + vx * y3b + 3.0 * vC * vC * m11b
                        + 3.0 * vx * vC * y2b + nb * vx * vC * vC * vC)
                    ra[o] = (m21a + 2.0 * ux * m11a + uC * x2a + na * ux * ux * uC
                             + m21b + 2.0 * vx * m11b + vC * x2b + nb * vx * vx * vC)
                    ra[o + 1] = (m12a + 2.0 * uC * m11a + ux * y2a + na * ux * uC * uC
                                 + m12b + 2.0 * vC * m11b + vx * y2b + nb * vx * vC * vC)
                    ra[o11] = m11a + na * ux * uC + m11b + nb * vx * vC
                # C_k's own third and fourth moments
                ra[j + 1] = (ra[j + 1] + 4.0 * uC * y3a + 6.0 * uC * uC * y2a
                             + na * uC * uC * uC * uC
                             + rb[j + 1] + 4.0 * vC * y3b + 6.0 * vC * vC * y2b
                             + nb * vC * vC * vC * vC)
                ra[j] = (y3a + 3.0 * uC * y2a + na * uC * uC * uC
                         + y3b + 3.0 * vC * y2b + nb * vC * vC * vC)
            else:
                ra[i + 2] = ra[i + 2] + na * uA * uC + rb[i + 2] + nb * vA * vC
                ra[i + 3] = ra[i + 3] + na * uB * uC + rb[i + 3] + nb * vB * vC
            ra[i + 1] = y2a + na * uC * uC + y2b + nb * vC * vC
            ra[i] += (nb / n) * dC
        if full:
            ra[h + 1] = (ra[h + 1] + 4.0 * uA * a3a + 6.0 * uA * uA * a2a
                         + na * uA * uA * uA * uA
                         + rb[h + 1] + 4.0 * vA * a3b + 6.0 * vA * vA * a2b
                         + nb * vA * vA * vA * vA)
            ra[h] = (a3a + 3.0 * uA * a2a + na * uA * uA * uA
                     + a3b + 3.0 * vA * a2b + nb * vA * vA * vA)
            ra[h + 3] = (ra[h + 3] + 4.0 * uB * b3a + 6.0 * uB * uB * b2a
                         + na * uB * uB * uB * uB
                         + rb[h + 3] + 4.0 * vB * b3b + 6.0 * vB * vB * b2b
                         + nb * vB * vB * vB * vB)
            ra[h + 2] = (b3a + 3.0 * uB * b2a + na * uB * uB * uB
                         + b3b + 3.0 * vB * b2b + nb * vB * vB * vB)
        ra[3] = a2a + na * uA * uA + a2b + nb * vA * vA
        ra[4] = b2a + na * uB * uB + b2b + nb * vB * vB
        ra[1] += (nb / n) * dA
        ra[2] += (nb / n) * dB


# ---------------------------------------------------------------------------
# finalise
# ---------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _corr(m11, x2, y2):
    """Pearson correlation from centred sums; 0 when a variance is 0.

    NaN sums (a NaN sample in the cell) give NaN.
    """
    if x2 == 0.0 or y2 == 0.0:
        return 0.0, False
    rho = m11 / math.sqrt(x2 * y2)
    if rho > 1.0:
        rho = 1.0
    elif rho < -1.0:
        rho = -1.0
    return rho, True


@njit(cache=True, parallel=True, error_model="numpy")
def martinez_indices(state, n_params, first, total):
    """Write S_k and ST_k, each (p, n_cells), from a compact or full state.

    ``S_k = corr(B, C_k)``, ``ST_k = 1 - corr(A, C_k)``. A pair with a zero
    sample variance on either side (a constant cell, or fewer than two
    groups) gives index 0.
    """
    for c in prange(state.shape[0]):
        row = state[c]
        a2 = row[3]
        b2 = row[4]
        for k in range(n_params):
            i = 5 + 4 * k
            y2 = row[i + 1]
            rho, ok = _corr(row[i + 3], b2, y2)
            first[k, c] = rho
            rho, ok = _corr(row[i + 2], a2, y2)
            total[k, c] = 1.0 - rho if ok else 0.0


@njit(cache=True, inline="always")
def _delta_var(n, m11, x2, y2, x4, y4, m22, m31, m13, rho):
    """Asymptotic variance ``n Var(r)`` of a sample correlation, any law.

    ``V = r22 (1 + rho^2/2) - rho (r31 + r13) + rho^2/4 (r40 + r04)`` with the
    standardised moments ``rij = E[x~^i y~^j]`` estimated from the sums. It
    is the mean square of the influence function
    ``x~ y~ - rho/2 (x~^2 + y~^2)``, hence >= 0 (clipped for rounding).
    """
    sx = math.sqrt(x2)
    sy = math.sqrt(y2)
    r22 = n * m22 / (x2 * y2)
    r40 = n * x4 / (x2 * x2)
    r04 = n * y4 / (y2 * y2)
    r31 = n * m31 / (x2 * sx * sy)
    r13 = n * m13 / (y2 * sx * sy)
    rr = rho * rho
    v = r22 * (1.0 + 0.5 * rr) - rho * (r31 + r13) + 0.25 * rr * (r40 + r04)
    return 0.0 if v < 0.0 else v  # NaN stays NaN


@njit(cache=True, inline="always")
def _interval(rho, se, q, method):
    """(low, high) for a correlation ``rho`` with standard error ``se``."""
    if method == DELTA_LINEAR:
        return rho - q * se, rho + q * se
    if rho >= 1.0 or rho <= -1.0:
        return rho, rho
    if method == DELTA:
        se = se / (1.0 - rho * rho)
    z = math.atanh(rho)
    return math.tanh(z - q * se), math.tanh(z + q * se)


@njit(cache=True, parallel=True, error_model="numpy")
def martinez_interval(state, n, n_params, q, method, first_lo, first_hi,
                      total_lo, total_hi):
    """Write confidence bounds of S_k and ST_k, each (p, n_cells).

    ``q`` is the standard normal quantile of the two-sided level (1.96 at
    95 %). ``method``: ``FISHER`` (z = atanh r, se 1/sqrt(n-3); compact or
    full state), ``DELTA`` (se of r from the delta method, mapped to the
    z scale: se_z = se_r / (1 - r^2); full state) or ``DELTA_LINEAR``
    (r +- q se_r; full state). Degenerate pairs (a zero variance) give
    [0, 0]; with fewer than 4 groups every other pair gets the whole range
    of a correlation, [-1, 1] for S_k and [0, 2] for ST_k.
    """
    p = n_params
    h = 5 + 4 * p
    nf = float(n)
    few = n < 4
    se_f = 1.0 / math.sqrt(nf - 3.0) if not few else 0.0
    for c in prange(state.shape[0]):
        row = state[c]
        a2 = row[3]
        b2 = row[4]
        for k in range(p):
            i = 5 + 4 * k
            y2 = row[i + 1]
            for side in range(2):
                if side == 0:
                    x2 = b2
                    m11 = row[i + 3]
                else:
                    x2 = a2
                    m11 = row[i + 2]
                rho, ok = _corr(m11, x2, y2)
                if not ok:
                    lo = 0.0
                    hi = 0.0
                elif rho != rho:  # NaN sample in this cell
                    lo = rho
                    hi = rho
                elif few:
                    lo = -1.0
                    hi = 1.0
                else:
                    if method == FISHER:
                        se = se_f
                    else:
                        j = h + 4 + 12 * k
                        if side == 0:
                            x4 = row[h + 3]
                            o = j + 7
                        else:
                            x4 = row[h + 1]
                            o = j + 2
                        v = _delta_var(nf, m11, x2, y2, x4, row[j + 1],
                                       row[o + 3], row[o + 2], row[o + 4], rho)
                        se = math.sqrt(v / (nf - 3.0))
                    lo, hi = _interval(rho, se, q, method)
                if side == 0:
                    first_lo[k, c] = lo
                    first_hi[k, c] = hi
                elif ok:
                    total_lo[k, c] = 1.0 - hi
                    total_hi[k, c] = 1.0 - lo
                else:
                    total_lo[k, c] = 0.0
                    total_hi[k, c] = 0.0
