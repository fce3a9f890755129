"""Per-cell threshold exceedance counts for several thresholds.

State layout: int64 ``counts`` of shape ``(n_cells, n_thresholds)``, one row
per cell; ``counts[i, k]`` is how many samples had ``x[i] > thresholds[k]``
(strictly greater). The probability is ``counts / n``.

NaN policy: a NaN never exceeds a threshold (the comparison is false), so it
counts as a non-exceedance; callers that need NaN awareness track it with
:mod:`melissa_sa.kernels.moments`, where NaN propagates.
"""

from numba import njit, prange


@njit(cache=True, parallel=True)
def threshold_update(thresholds, counts, x):
    """Add one to ``counts[i, k]`` where ``x[i] > thresholds[k]``, in place."""
    n_thr = thresholds.shape[0]
    for i in prange(x.shape[0]):
        v = x[i]
        for k in range(n_thr):
            counts[i, k] += v > thresholds[k]  # branch-free: a bool adds 0 or 1


@njit(cache=True, parallel=True)
def threshold_merge(counts_a, counts_b):
    """Add ``counts_b`` into ``counts_a`` in place (exact)."""
    for i in prange(counts_a.shape[0]):
        for k in range(counts_a.shape[1]):
            counts_a[i, k] += counts_b[i, k]
