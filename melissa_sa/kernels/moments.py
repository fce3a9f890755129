"""One-pass central moments per cell: Welford (order 2) and Pébay (order 4).

State layout: a C-contiguous float64 array ``state`` of shape
``(n_cells, order + 1)``, one row per cell holding
``shift, mean, M2`` (order 2) or ``shift, mean, M2, M3, M4`` (order 4).
``shift`` is the cell's first sample and ``mean`` the running mean of
``y = x - shift``; ``Mk = sum_i (y_i - mean)^k``. All cells see the same
samples, so the count ``n`` is a scalar kept by the caller and passed in.

Why the shift: for a field like ``1e9 + noise`` a plain Welford mean rounds
to the ulp of 1e9 at every step and the drift (about ``sqrt(n)`` ulps)
leaks into every deviation, costing 1e-8 relative accuracy on the variance
and 1e-5 on the skewness after 2000 samples. ``x - shift`` is exact for
values within a factor two of the shift (Sterbenz), so the recursion runs on
small numbers and the result is as accurate as a two-pass computation.

The update for one sample (``n`` samples already folded in), on ``y``:

    delta = y - mean;  n1 = n + 1;  d = delta / n1;  t = delta * d * n
    mean += d
    M4   += t d^2 (n1^2 - 3 n1 + 3) + 6 d^2 M2 - 4 d M3
    M3   += t d (n1 - 2) - 3 d M2
    M2   += t

(Welford 1962 for ``mean, M2``; Pébay 2008, SAND2008-6212, eq. 2.7 for
``M3, M4``), and two partial states merge by Pébay's pairwise formulas (the
Chan-Golub-LeVeque update for ``M2``). Every term is built from deviations,
never from raw power sums.

NaN policy: NaN propagates. A NaN sample value makes that cell's state NaN
from then on, as ``numpy.mean`` would; the other cells are unaffected.
"""

from numba import njit, prange


@njit(cache=True, parallel=True)
def welford_update(n, state, x):
    """Fold sample ``x`` (n_cells,) into ``state`` (n_cells, 3) in place.

    ``n`` is the number of samples already folded in; the first sample
    (``n == 0``) sets each cell's shift.
    """
    n1 = n + 1.0
    first = n == 0
    for i in prange(x.shape[0]):
        if first:
            state[i, 0] = x[i]
        mean = state[i, 1]
        delta = (x[i] - state[i, 0]) - mean
        d = delta / n1
        state[i, 1] = mean + d
        state[i, 2] += delta * d * n


@njit(cache=True, parallel=True)
def pebay_update(n, state, x):
    """Fold sample ``x`` (n_cells,) into ``state`` (n_cells, 5) in place.

    ``n`` is the number of samples already folded in; the first sample
    (``n == 0``) sets each cell's shift.
    """
    n1 = n + 1.0
    c4 = n1 * n1 - 3.0 * n1 + 3.0
    c3 = n1 - 2.0
    first = n == 0
    for i in prange(x.shape[0]):
        if first:
            state[i, 0] = x[i]
        mean = state[i, 1]
        m2 = state[i, 2]
        m3 = state[i, 3]
        delta = (x[i] - state[i, 0]) - mean
        d = delta / n1
        d2 = d * d
        t = delta * d * n
        state[i, 1] = mean + d
        state[i, 4] += t * d2 * c4 + 6.0 * d2 * m2 - 4.0 * d * m3
        state[i, 3] = m3 + t * d * c3 - 3.0 * d * m2
        state[i, 2] = m2 + t


@njit(cache=True, parallel=True)
def moments_merge(n_a, state_a, n_b, state_b):
    """Merge state ``b`` (``n_b`` samples) into state ``a`` (``n_a``) in place.

    Works for order 2 and order 4 rows (Pébay 2008, eqs. 3.1-3.3), keeping
    ``a``'s shift. The result equals the state of one stream that saw both
    sample sets.
    """
    if n_b == 0:
        return
    n = float(n_a + n_b)
    na = float(n_a)
    nb = float(n_b)
    width = state_a.shape[1]
    empty_a = n_a == 0
    for i in prange(state_a.shape[0]):
        if empty_a:
            for k in range(width):
                state_a[i, k] = state_b[i, k]
            continue
        mean_a = state_a[i, 1]
        # b's mean expressed in a's shifted frame
        delta = (state_b[i, 0] - state_a[i, 0]) + state_b[i, 1] - mean_a
        m2a = state_a[i, 2]
        m2b = state_b[i, 2]
        state_a[i, 1] = mean_a + delta * nb / n
        state_a[i, 2] = m2a + m2b + delta * delta * na * nb / n
        if width == 5:
            m3a = state_a[i, 3]
            m3b = state_b[i, 3]
            d2 = delta * delta
            state_a[i, 3] = (
                m3a
                + m3b
                + d2 * delta * na * nb * (na - nb) / (n * n)
                + 3.0 * delta * (na * m2b - nb * m2a) / n
            )
            state_a[i, 4] = (
                state_a[i, 4]
                + state_b[i, 4]
                + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / (n * n * n)
                + 6.0 * d2 * (na * na * m2b + nb * nb * m2a) / (n * n)
                + 4.0 * delta * (na * m3b - nb * m3a) / n
            )
