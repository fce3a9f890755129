"""Sobol' kernels that move the power sums of block 2 to another origin.

The state layout is described in :mod:`melissa_sa.kernels.sobol` (layout 2:
block 1 exact shifted Welford sums, block 2 power sums of the shifted
values). Block 2 is moved by binomial expansion (:func:`move_single`,
:func:`move_pair`, :func:`_move_row`) to:

* ``A``'s running mean (:func:`martinez_recentre`, called by the object
  after 2, 16 and 256 groups), which keeps the power sums well conditioned
  whatever the first sample was;
* the shift a layout-1 state's centred sums imply
  (:func:`martinez_from_centred`, on load of an old checkpoint);
* the merged mean of ``A`` (:func:`martinez_merge`);
* each variable's mean (the centred fourth-order sums of the delta-method
  interval, :func:`martinez_interval`).

Why two kinds of sums
---------------------
The indices need only block 1, kept by exact Welford recursions on
deviations from the running mean: they match a two-pass computation
whatever the offset. The delta-method interval is a variance estimate: power
sums (multiply-adds, no division) suffice, moved to the means at
finalisation (:func:`move_pair`) with block 1's exact means and second-order
sums. That loses about ``eps (d / sd)^4`` relative, ``d`` the distance of the
shift from the mean; :func:`martinez_recentre` (called by the object after 2,
16 and 256 groups; the merge moves to the merged mean) keeps ``d`` small
whatever the first sample was. Details and measurements:
``docs/statistics.md``.

Merge
-----
Block 1 merges by Chan, Golub & LeVeque (1979): with ``δ = x̄_b - x̄_a``
(shifts accounted for), ``X2 = X2_a + X2_b + n_a n_b/n δ_x^2``, ``XY11``
likewise; both sides' block 2 is moved to the merged mean of ``A`` and added.

The row kernels share the ``inline="always"`` helpers below; the cell-blocked
re-centring (:mod:`melissa_sa.kernels.sobol_blocked_recentre`) inlines the
two public ones. NaN in a cell propagates to that cell only; nothing is
allocated in the cell loops. The interval and indices kernels release the GIL.
"""

import math

from numba import njit, prange

from melissa_sa.kernels.sobol import merged_by_copy

#: interval method codes for :func:`martinez_interval`
FISHER = 0
DELTA = 1
DELTA_LINEAR = 2


# -- moving power sums to another origin (binomial expansion) -----------------


@njit(cache=True, inline="always")
def move_single(n, a, p1, p2, p3, p4):
    """``(sum (x-a)^3, sum (x-a)^4)`` from ``p_k = sum x^k`` and ``n``."""
    aa = a * a
    q3 = p3 - 3.0 * a * p2 + 3.0 * aa * p1 - n * aa * a
    q4 = p4 - 4.0 * a * p3 + 6.0 * aa * p2 - 4.0 * aa * a * p1 + n * aa * aa
    return q3, q4


@njit(cache=True, inline="always")
def move_pair(n, a, b, x1, x2, x3, y1, y2, y3, p11, p21, p12, p31, p22, p13):
    """Mixed sums of ``(x - a, y - b)`` from those of ``(x, y)``.

    ``x1..x3``, ``y1..y3``: ``sum x^k``, ``sum y^k``; ``pij = sum x^i y^j``.
    Returns the moved ``(p21, p12, p31, p22, p13)``.
    """
    aa = a * a
    # first x -> X = x - a (sums of X^i y^j) ...
    X1 = x1 - n * a
    X2 = x2 - 2.0 * a * x1 + n * aa
    X3 = x3 - 3.0 * a * x2 + 3.0 * aa * x1 - n * aa * a
    X1Y1 = p11 - a * y1
    X2Y1 = p21 - 2.0 * a * p11 + aa * y1
    X3Y1 = p31 - 3.0 * a * p21 + 3.0 * aa * p11 - aa * a * y1
    X1Y2 = p12 - a * y2
    X2Y2 = p22 - 2.0 * a * p12 + aa * y2
    X1Y3 = p13 - a * y3
    # ... then y -> y - b
    bb = b * b
    return (X2Y1 - b * X2,
            X1Y2 - 2.0 * b * X1Y1 + bb * X1,
            X3Y1 - b * X3,
            X2Y2 - 2.0 * b * X2Y1 + bb * X2,
            X1Y3 - 3.0 * b * X1Y2 + 3.0 * bb * X1Y1 - bb * b * X1)


@njit(cache=True, inline="always")
def _move_row(src, cs, dst, cd, nf, p, centred, d, add):
    """Block 2 of ``src[cs]`` moved to another origin, into ``dst[cd]``.

    ``centred=False``: ``src`` holds power sums about its shift; every
    variable moves by ``d`` (lower-order sums from ``src``'s block 1:
    ``sum x = n x̄``, ``sum x^2 = X2 + n x̄^2``). ``centred=True``: ``src``
    holds layout-1 centred sums; each variable moves by minus its own mean
    (``sum x = 0``, ``sum x^2 = X2``), giving power sums about the shift.
    ``add``: add into ``dst`` (merge) instead of overwriting it. ``src`` and
    ``dst`` may be the same row: pairs are written before the singles they read.
    """
    h = 5 + 4 * p
    ma = src[cs, 1]
    mb = src[cs, 2]
    if centred:
        ua = -ma
        ub = -mb
        a1 = 0.0
        a2 = src[cs, 3]
        b1 = 0.0
        b2 = src[cs, 4]
    else:
        ua = d
        ub = d
        a1 = nf * ma
        a2 = src[cs, 3] + nf * ma * ma
        b1 = nf * mb
        b2 = src[cs, 4] + nf * mb * mb
    a3 = src[cs, h]
    b3 = src[cs, h + 2]
    for k in range(p):
        i = 5 + 4 * k
        j = h + 4 + 12 * k
        mc = src[cs, i]
        if centred:
            uc = -mc
            c1 = 0.0
            c2 = src[cs, i + 1]
            ac11 = src[cs, i + 2]
            bc11 = src[cs, i + 3]
        else:
            uc = d
            c1 = nf * mc
            c2 = src[cs, i + 1] + nf * mc * mc
            ac11 = src[cs, i + 2] + nf * ma * mc
            bc11 = src[cs, i + 3] + nf * mb * mc
        c3 = src[cs, j]
        for side in range(2):
            o = j + 2 + 5 * side
            if side == 0:
                q = move_pair(nf, ua, uc, a1, a2, a3, c1, c2, c3, ac11,
                              src[cs, o], src[cs, o + 1], src[cs, o + 2],
                              src[cs, o + 3], src[cs, o + 4])
            else:
                q = move_pair(nf, ub, uc, b1, b2, b3, c1, c2, c3, bc11,
                              src[cs, o], src[cs, o + 1], src[cs, o + 2],
                              src[cs, o + 3], src[cs, o + 4])
            for t in range(5):
                if add:
                    dst[cd, o + t] += q[t]
                else:
                    dst[cd, o + t] = q[t]
        q3, q4 = move_single(nf, uc, c1, c2, c3, src[cs, j + 1])
        if add:
            dst[cd, j] += q3
            dst[cd, j + 1] += q4
        else:
            dst[cd, j] = q3
            dst[cd, j + 1] = q4
    qa3, qa4 = move_single(nf, ua, a1, a2, a3, src[cs, h + 1])
    qb3, qb4 = move_single(nf, ub, b1, b2, b3, src[cs, h + 3])
    if add:
        dst[cd, h] += qa3
        dst[cd, h + 1] += qa4
        dst[cd, h + 2] += qb3
        dst[cd, h + 3] += qb4
    else:
        dst[cd, h] = qa3
        dst[cd, h + 1] = qa4
        dst[cd, h + 2] = qb3
        dst[cd, h + 3] = qb4


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def martinez_recentre(state, n, n_params):
    """Move every cell's shift to ``shift + mean_A``, in place.

    Block 1 keeps its sums and moves its means; block 2 (full states) is
    re-expanded about the new shift. A cell whose new shift would not be
    finite (a NaN sample) keeps its shift.
    """
    if n == 0:
        return
    p = n_params
    full = state.shape[1] == 9 + 16 * p
    nf = float(n)
    for c in prange(state.shape[0]):
        s = state[c, 0]
        target = s + state[c, 1]
        if not math.isfinite(target):
            continue
        d = target - s
        if d == 0.0:
            continue
        if full:
            _move_row(state, c, state, c, nf, p, False, d, False)
        state[c, 0] = target
        state[c, 1] -= d
        state[c, 2] -= d
        for k in range(p):
            state[c, 5 + 4 * k] -= d


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def martinez_from_centred(state, n, n_params):
    """Convert a full layout-1 state (centred block 2) to layout 2, in place."""
    nf = float(n)
    for c in prange(state.shape[0]):
        _move_row(state, c, state, c, nf, n_params, True, 0.0, False)


# ---------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def martinez_merge(state_a, n_a, state_b, n_b, n_params):
    """Merge state ``b`` (``n_b`` groups) into state ``a`` (``n_a``), in place.

    Both states have the same width: compact (``5 + 4p``) or full
    (``9 + 16p``). The merged shift is the merged mean of ``A`` (both sides'
    power sums are moved there before they are added: each side is moved
    from a shift that is one of its own samples, to the mean, which keeps
    the conditioning of a single stream). The result is the state of one
    stream that saw both sets of groups, up to rounding.
    """
    if merged_by_copy(state_a, n_a, state_b, n_b):
        return
    p = n_params
    full = state_a.shape[1] == 9 + 16 * p
    na = float(n_a)
    nb = float(n_b)
    n = na + nb
    w = na * nb / n
    fb = nb / n
    for c in prange(state_a.shape[0]):
        sa = state_a[c, 0]
        ds = state_b[c, 0] - sa
        dA = ds + state_b[c, 1] - state_a[c, 1]
        dB = ds + state_b[c, 2] - state_a[c, 2]
        target = sa + (state_a[c, 1] + fb * dA)  # merged mean of A
        if not math.isfinite(target):
            target = sa
        move = target - sa
        if full:
            # a's and b's power sums about the new shift, added (each move
            # reads its side's block 1, so block 1 is merged after)
            _move_row(state_a, c, state_a, c, na, p, False, move, False)
            _move_row(state_b, c, state_a, c, nb, p, False, move - ds, True)
        state_a[c, 3] += state_b[c, 3] + w * dA * dA
        state_a[c, 4] += state_b[c, 4] + w * dB * dB
        for k in range(p):
            i = 5 + 4 * k
            dC = ds + state_b[c, i] - state_a[c, i]
            state_a[c, i + 1] += state_b[c, i + 1] + w * dC * dC
            state_a[c, i + 2] += state_b[c, i + 2] + w * dA * dC
            state_a[c, i + 3] += state_b[c, i + 3] + w * dB * dC
            state_a[c, i] += fb * dC - move
        state_a[c, 1] += fb * dA - move
        state_a[c, 2] += fb * dB - move
        state_a[c, 0] = target


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


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def martinez_indices(state, n_params, first, total):
    """Write S_k and ST_k, each (p, n_cells), from a compact or full state.

    ``S_k = corr(B, C_k)``, ``ST_k = 1 - corr(A, C_k)``. A pair with a zero
    sample variance on either side (a constant cell, or fewer than two
    groups) gives index 0.
    """
    for c in prange(state.shape[0]):
        a2 = state[c, 3]
        b2 = state[c, 4]
        for k in range(n_params):
            i = 5 + 4 * k
            y2 = state[c, i + 1]
            rho, ok = _corr(state[c, i + 3], b2, y2)
            first[k, c] = rho
            rho, ok = _corr(state[c, i + 2], a2, y2)
            total[k, c] = 1.0 - rho if ok else 0.0


@njit(cache=True, inline="always")
def delta_var(n, m11, x2, y2, x4, y4, m22, m31, m13, rho):
    """Asymptotic variance ``n Var(r)`` of a sample correlation, any law.

    ``V = r22 (1 + rho^2/2) - rho (r31 + r13) + rho^2/4 (r40 + r04)`` with the
    standardised moments ``rij = E[x~^i y~^j]`` estimated from the centred
    sums. It is the mean square of the influence function
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
    # tanh(atanh(rho) -+ d) by the addition formula, t = tanh(d): one
    # transcendental instead of three; the clip removes rounding past +-1
    t = math.tanh(q * se)
    lo = (rho - t) / (1.0 - rho * t)
    hi = (rho + t) / (1.0 + rho * t)
    return max(lo, -1.0), min(hi, 1.0)


@njit(cache=True, inline="always")
def _centred(st, c, nf, m, s2, p3, p4):
    """``(mean, sum x, sum x^2, P3, sum (x - mean)^4, X2)`` of a variable of cell
    ``c`` from its slots of mean, X2, P3 and P4 (block 1's exact sums)."""
    mean = st[c, m]
    x2 = st[c, s2]
    x1 = nf * mean
    xp2 = x2 + nf * mean * mean
    x3 = st[c, p3]
    return mean, x1, xp2, x3, move_single(nf, mean, x1, xp2, x3, st[c, p4])[1], x2


@njit(cache=True, inline="always")
def _pair_delta_var(st, c, nf, m11, o, rho, x, y):
    """``V`` of the pair (X, C_k) of cell ``c``: ``x``, ``y``: :func:`_centred`
    of X and C_k; ``m11``: the pair's centred co-moment; ``o``: its first
    block-2 slot (``P_XC 21``)."""
    p11 = m11 + nf * x[0] * y[0]
    q = move_pair(nf, x[0], y[0], x[1], x[2], x[3], y[1], y[2], y[3],
                  p11, st[c, o], st[c, o + 1], st[c, o + 2], st[c, o + 3], st[c, o + 4])
    return delta_var(nf, m11, x[5], y[5], x[4], y[4], q[3], q[2], q[4], rho)


@njit(cache=True, inline="always")
def cell_interval(st, c, p, n, q, method, first_lo, first_hi, total_lo, total_hi,
                  first, total):
    """:func:`martinez_interval` of cell ``c`` of the row-layout state ``st``
    into column ``c`` of the outputs: pair ``k``'s block-1 slots from ``5 +
    4 k`` (mean_Ck, Ck2, ACk11, BCk11), its block-2 slots from ``9 + 4 p +
    12 k`` (P3_Ck, P4_Ck, P_ACk 21..13, P_BCk 21..13), P3, P4 of ``A`` then
    ``B`` from ``5 + 4 p``."""
    h = 5 + 4 * p
    nf = float(n)
    few = n < 4
    se_f = 1.0 / math.sqrt(nf - 3.0) if not few else 0.0
    full = method != FISHER and not few
    if full:
        xs = (_centred(st, c, nf, 1, 3, h, h + 1), _centred(st, c, nf, 2, 4, h + 2, h + 3))
    for k in range(p):
        i = 5 + 4 * k
        j = h + 4 + 12 * k
        y2 = st[c, i + 1]
        if full:
            y = _centred(st, c, nf, i, i + 1, j, j + 1)
        for side in range(2):
            # side 0: first order, pair (B, C_k); side 1: total, (A, C_k)
            x = 2 - side
            m11 = st[c, i + 3 - side]
            rho, ok = _corr(m11, st[c, x + 2], y2)
            if first.shape[1] != 0:
                if side == 0:
                    first[k, c] = rho
                else:
                    total[k, c] = 1.0 - rho if ok else 0.0
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
                    v = _pair_delta_var(st, c, nf, m11, j + 7 - 5 * side, rho, xs[1 - side], y)
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


@njit(cache=True, parallel=True, error_model="numpy", nogil=True)
def martinez_interval(state, n, n_params, q, method, first_lo, first_hi,
                      total_lo, total_hi, first, total):
    """Write confidence bounds of S_k and ST_k, each (p, n_cells); ``first``,
    ``total``: (p, n_cells) arrays for the indices from the same pass (the
    values of :func:`martinez_indices`, bit for bit), or (p, 0) arrays.

    ``q``: the standard normal quantile of the two-sided level (1.96 at 95 %).
    ``method``: ``FISHER`` (z = atanh r, se 1/sqrt(n-3); compact or full
    state), ``DELTA`` (se of r from the delta method on the z scale: se_z =
    se_r / (1 - r^2); full state) or ``DELTA_LINEAR`` (r +- q se_r; full
    state). Degenerate pairs (a zero variance) give [0, 0]; with fewer than 4
    groups every other pair gets [-1, 1] for S_k and [0, 2] for ST_k.
    """
    for c in prange(state.shape[0]):
        cell_interval(state, c, n_params, n, q, method, first_lo, first_hi,
                      total_lo, total_hi, first, total)
