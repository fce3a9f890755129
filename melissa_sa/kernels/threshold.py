"""Per-cell threshold exceedance counts for several thresholds.

State layout: int64 ``counts`` of shape ``(n_thresholds, n_cells)``, one
contiguous row per threshold; ``counts[k, i]`` is how many samples had
``x[i] > thresholds[k]`` (strictly greater). The probability is
``counts / n``.

NaN policy: a NaN never exceeds a threshold (the comparison is false), so it
counts as a non-exceedance; callers that need NaN awareness track it with
:mod:`melissa_sa.kernels.moments`, where NaN propagates.
"""

from numba import njit, prange


@njit(cache=True, parallel=True)
def threshold_update(thresholds, counts, x):
    """Add one to ``counts[k, i]`` where ``x[i] > thresholds[k]``, in place."""
    for k in range(thresholds.shape[0]):
        t = thresholds[k]
        for i in prange(x.shape[0]):
            counts[k, i] += x[i] > t  # branch-free: a bool adds 0 or 1


@njit(cache=True, parallel=True)
def threshold_merge(counts_a, counts_b):
    """Add ``counts_b`` into ``counts_a`` in place (exact)."""
    for k in range(counts_a.shape[0]):
        for i in prange(counts_a.shape[1]):
            counts_a[k, i] += counts_b[k, i]
