"""One-pass per-cell quantile kernels (Tierney-type stochastic approximation).

Pure Numba functions on arrays: no I/O, no Python objects, no allocation in
the update. All cells see the same samples, so the number of samples already
folded in (``n``) is a scalar argument, not part of the state.

State layout
------------
The state is one C-contiguous float64 array of shape ``(n_cells, width)``
with ``width = quantiles_row_width(n_levels)``; one row holds everything a
cell needs, for all levels (measured 3-4x faster than one array per
accumulator, because an update touches a single cache line or two per cell)::

    [0]                    MIN   smallest value seen (NaN: cell poisoned)
    [1]                    MAX   largest value seen
    [2]                    REF   reference value (0 during warm-up, then one
                                 of the first WARMUP samples); estimates are
                                 kept relative to it so that a large common
                                 offset costs no precision
    [3 : 3+L]              Q_l   estimate of level l (absolute during
                                 warm-up, relative to REF afterwards)
    [3+L : 3+2L]           H_l   discounted count of hits in the density window
    [3+2L : 3+3L]          F_l   1 / f, inverse density estimate at Q_l
                                 (W / H, W the discounted sum of the window
                                 widths); 0 while the cell has shown no spread
    [3+L : 3+L+WARMUP]     buffer of the first WARMUP samples, kept sorted;
                                 it overlays H and F, which are only set up
                                 when the buffer is no longer needed

so ``width = 3 + L + max(2 L, WARMUP)`` (14 float64, 112 bytes, for 3 levels).

Algorithm
---------
* Warm-up (``n + 1 <= WARMUP``): the samples are kept sorted in the row and
  ``Q_l`` is the exact sample quantile, bit for bit what
  ``numpy.quantile(samples, level)`` (method "linear") returns.
* At sample ``WARMUP + 1`` each level starts from the exact quantile of the
  buffer; ``REF`` is the buffer's middle order statistic; the density prior
  is a deliberately low Gaussian guess ``f0 = phi(z_alpha) / (KAPPA s)``
  (``s`` the buffer standard deviation) worth ``PRIOR_HITS`` hits. A cell
  whose first WARMUP values are all equal keeps its estimate until a value
  differs by ``d``; the prior then uses ``s = |d|``.
* Then, for sample number ``n`` (counting from 1) with value ``x`` and level
  ``alpha`` (Tierney 1983, with a discounted ratio density estimate)::

      h  = HALF_MASS * min(alpha, 1 - alpha, MASS_CAP) * F    # window
      W  = F H (1 - LAMBDA / n) + 2 h
      H  = H (1 - LAMBDA / n) + 1{|x - q| <= h}
      F  = W / H                                              # 1 / f_n
      q += (GAIN + GAIN_BOOST / sqrt(H)) * F / n * (alpha - 1{x <= q})
      q  = clip(q, min seen, max seen)

  The window holds a fixed probability mass (``h ~ mass / f``), so the
  relative precision of ``f_n`` is about the same at every level. The gain
  factor is a little above 1 (and larger while few hits have been seen)
  because a gain too small costs much more than a gain too large. Old hits
  are discounted (weight of sample ``i`` about ``i**LAMBDA``) so that the
  prior and the wide early windows are forgotten.

NaN policy: a non-finite value (NaN or +-inf) poisons the cell: from then on
its quantiles are NaN. The other cells are unaffected.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# Layout.
MIN = 0
MAX = 1
REF = 2
HEAD = 3
#: Number of first samples kept (sorted) in the row for an exact warm-up.
WARMUP = 8

# Tuning constants (measured with benchmarks/quantile_accuracy.py).
HALF_MASS = 0.5  # density window half-width, in units of min(a, 1-a, MASS_CAP)
MASS_CAP = 0.1
GAIN = 1.1  # asymptotic gain factor on 1 / (n f)
GAIN_BOOST = 1.0  # extra gain while the density rests on few hits
PRIOR_HITS = 1.0  # weight of the density prior, in hits
KAPPA = 4.0  # prior density is the Gaussian one divided by KAPPA
LAMBDA = 0.5  # old window hits are discounted: weight of sample i ~ i**LAMBDA


def quantiles_row_width(n_levels: int) -> int:
    """Number of float64 values per cell for ``n_levels`` levels."""
    return HEAD + n_levels + max(2 * n_levels, WARMUP)


def quantiles_new_state(n_cells: int, n_levels: int) -> np.ndarray:
    """A fresh state (no sample seen): zeros of shape (n_cells, width)."""
    return np.zeros((n_cells, quantiles_row_width(n_levels)), dtype=np.float64)


@njit(cache=True)
def _normal_ppf(p):
    """Inverse standard normal CDF (Acklam's rational approximation, ~1e-9)."""
    if p < 0.02425:
        r = math.sqrt(-2.0 * math.log(p))
        return (
            ((((-7.784894002430293e-03 * r - 3.223964580411365e-01) * r
               - 2.400758277161838e00) * r - 2.549732539343734e00) * r
             + 4.374664141464968e00) * r + 2.938163982698783e00
        ) / ((((7.784695709041462e-03 * r + 3.224671290700398e-01) * r
               + 2.445134137142996e00) * r + 3.754408661907416e00) * r + 1.0)
    if p > 1.0 - 0.02425:
        return -_normal_ppf(1.0 - p)
    u = p - 0.5
    r = u * u
    return (
        (((((-3.969683028665376e01 * r + 2.209460984245205e02) * r
            - 2.759285104469687e02) * r + 1.383577518672690e02) * r
          - 3.066479806614716e01) * r + 2.506628277459239e00) * u
    ) / (((((-5.447609879822406e01 * r + 1.615858368580409e02) * r
            - 1.556989798598866e02) * r + 6.680131188771972e01) * r
          - 1.328068155288572e01) * r + 1.0)


@njit(cache=True)
def _prior_inverse_density(alpha, scale):
    """1 / f0 for the prior density f0 = phi(z_alpha) / (KAPPA scale)."""
    z = _normal_ppf(alpha)
    phi = math.exp(-0.5 * z * z) * 0.3989422804014327
    return KAPPA * scale / phi


@njit(cache=True)
def _exact_quantile(state, j, start, count, alpha):
    """numpy.quantile(..., method="linear") of sorted state[j, start:start+count]."""
    vi = (count - 1) * alpha
    k = int(math.floor(vi))
    if k < 0:
        k = 0
    if k > count - 1:
        k = count - 1
    k1 = k + 1
    if k1 > count - 1:
        k1 = count - 1
    t = vi - k
    a = state[j, start + k]
    b = state[j, start + k1]
    diff = b - a
    if t >= 0.5:
        return b - diff * (1.0 - t)
    return a + diff * t


@njit(cache=True)
def _update_cell(n, levels, state, j, v):
    """Fold value ``v`` into cell ``j`` of ``state`` (see the module docstring)."""
    n_levels = levels.shape[0]
    nn = n + 1  # this sample's number
    q0 = HEAD
    h0 = HEAD + n_levels
    f0 = HEAD + 2 * n_levels
    b0 = HEAD + n_levels  # warm-up buffer
    if n > 0 and math.isnan(state[j, MIN]):
        return  # poisoned
    if not math.isfinite(v):
        state[j, MIN] = np.nan
        state[j, MAX] = np.nan
        for lev in range(n_levels):
            state[j, q0 + lev] = np.nan
        return
    if n == 0 or v < state[j, MIN]:
        state[j, MIN] = v
    if n == 0 or v > state[j, MAX]:
        state[j, MAX] = v
    if nn <= WARMUP:
        # insertion into the sorted buffer, then exact quantiles
        i = n
        while i > 0 and state[j, b0 + i - 1] > v:
            state[j, b0 + i] = state[j, b0 + i - 1]
            i -= 1
        state[j, b0 + i] = v
        for lev in range(n_levels):
            state[j, q0 + lev] = _exact_quantile(state, j, b0, nn, levels[lev])
        return
    if nn == WARMUP + 1:
        # leave the warm-up: reference, relative estimates, density prior
        ref = state[j, b0 + WARMUP // 2]
        mean = 0.0
        for i in range(WARMUP):
            mean += state[j, b0 + i] - ref
        mean /= WARMUP
        ss = 0.0
        for i in range(WARMUP):
            dd = state[j, b0 + i] - ref - mean
            ss += dd * dd
        scale = math.sqrt(ss / (WARMUP - 1))
        for lev in range(n_levels):
            state[j, q0 + lev] = state[j, q0 + lev] - ref
        # the buffer is no longer read: H and F may overwrite it
        for lev in range(n_levels):
            state[j, h0 + lev] = PRIOR_HITS
            if scale > 0.0:
                state[j, f0 + lev] = _prior_inverse_density(levels[lev], scale)
            else:
                state[j, f0 + lev] = 0.0  # no scale yet: set by the first spread
        state[j, REF] = ref
    dec = 1.0 - LAMBDA / nn
    inv_nn = 1.0 / nn
    ref = state[j, REF]
    xr = v - ref
    lo = state[j, MIN] - ref
    hi = state[j, MAX] - ref
    for lev in range(n_levels):
        alpha = levels[lev]
        q = state[j, q0 + lev]
        d = xr - q
        hh = state[j, h0 + lev]
        ff = state[j, f0 + lev]  # 1 / f = W / H
        if ff == 0.0:
            if d == 0.0:
                continue  # all values so far equal: the estimate is exact
            hh = PRIOR_HITS
            ff = _prior_inverse_density(alpha, abs(d))
        half = HALF_MASS * min(alpha, 1.0 - alpha, MASS_CAP) * ff
        ww = ff * hh * dec + 2.0 * half
        hh *= dec
        if abs(d) <= half:
            hh += 1.0
        r = 1.0 / hh
        ff = ww * r
        gain = (GAIN + GAIN_BOOST * math.sqrt(r)) * ff * inv_nn
        if d <= 0.0:
            q -= gain * (1.0 - alpha)
        else:
            q += gain * alpha
        if q < lo:
            q = lo
        if q > hi:
            q = hi
        state[j, q0 + lev] = q
        state[j, h0 + lev] = hh
        state[j, f0 + lev] = ff


@njit(cache=True, parallel=True)
def quantiles_update(n, levels, state, x):
    """Fold one sample ``x`` (n_cells values) into ``state``, in place.

    ``n`` is the number of samples already folded in (the same for every
    cell); ``levels`` the float64 levels in (0, 1); ``state`` the float64
    (n_cells, quantiles_row_width(len(levels))) array, zeros before the first
    sample; ``x`` a 1-D float32 or float64 array. The caller increments its
    own count afterwards. See the module docstring for the step rule.
    """
    for j in prange(state.shape[0]):
        _update_cell(n, levels, state, j, np.float64(x[j]))


@njit(cache=True)
def _values_cell(n, levels, order, state, out, j):
    """Clipped, level-sorted estimates of cell ``j`` into ``out[:, j]``."""
    n_levels = levels.shape[0]
    if n == 0 or math.isnan(state[j, MIN]):
        for lev in range(n_levels):
            out[lev, j] = np.nan
        return
    ref = state[j, REF]
    lo = state[j, MIN]
    hi = state[j, MAX]
    for lev in range(n_levels):
        v = ref + state[j, HEAD + lev]
        if v < lo:
            v = lo
        if v > hi:
            v = hi
        out[lev, j] = v
    # insertion sort of out[order[:], j]
    for a in range(1, n_levels):
        v = out[order[a], j]
        b = a
        while b > 0 and out[order[b - 1], j] > v:
            out[order[b], j] = out[order[b - 1], j]
            b -= 1
        out[order[b], j] = v


@njit(cache=True, parallel=True, nogil=True)
def quantiles_values(n, levels, order, state, out):
    """Write the estimates into ``out`` (n_levels, n_cells), in place.

    ``n`` is the number of samples folded in; ``order`` is
    ``numpy.argsort(levels)`` (int64). Each estimate is clipped to the range
    of the data seen, and the estimates of one cell are sorted across levels
    (monotone rearrangement: a quantile never decreases with its level, and
    sorting never moves the estimates away from a monotone truth). NaN where
    no sample was seen or the cell is poisoned.
    """
    for j in prange(state.shape[0]):
        _values_cell(n, levels, order, state, out, j)
