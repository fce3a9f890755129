"""Indices, intervals and aggregated sums read from a Martinez state.

Functions of the per-cell state (:mod:`melissa_sa.kernels.sobol`), its group
count and, with second order, its :class:`~melissa_sa.stats.sobol_second.SecondOrderState`:
:class:`~melissa_sa.stats.SobolMartinez` folds its buffer, then calls them
with its own arrays. The estimator is documented on that class.

**Constant cells.** A pair whose sample variance is zero on either side
(a constant cell, or fewer than two groups) has an undefined correlation;
its index is 0 and its interval the degenerate ``[0, 0]``. Never NaN, no
warning. (A NaN *sample* does propagate: the pairs of that cell it
touches give NaN from then on; other cells are unaffected.)

**Confidence intervals** (``SobolMartinez.confidence_interval(level, method)``), for
the correlation ``r`` of each pair, then mapped to ``S_k = r`` and
``ST_k = 1 - r``:

* ``"delta"`` (default): asymptotic delta-method standard error of a
  sample correlation for *any* law of the pair (not only bivariate
  normal), ``se_r = sqrt(V / (n - 3))`` with
  ``V = r22 (1 + r^2/2) - r (r31 + r13) + r^2/4 (r40 + r04)`` and
  ``rij`` the standardised mixed moments ``E[x~^i y~^j]`` of the pair
  (e.g. Ferguson, *A Course in Large Sample Theory*, 1996, ch. 8), put
  on Fisher's z scale: ``z = atanh(r) +- q se_r / (1 - r^2)``, mapped back
  with ``tanh``. For a bivariate normal pair ``V = (1 - r^2)^2`` and
  this *is* Fisher's interval; the z scale keeps the bounds inside
  ``[-1, 1]`` and improves coverage at small ``n``.
* ``"fisher"``: Fisher's z transform, ``atanh(r) +- q / sqrt(n - 3)``,
  as in Melissa. Exact only for bivariate normal pairs: pick-freeze pairs
  are not, and its coverage at nominal 95 % ranges from about 78 % to
  96 % on Ishigami, whatever ``n``.
* ``"delta-linear"``: ``r +- q se_r`` (same ``se_r`` as ``"delta"``,
  no transform); for comparison.

``"delta"`` needs the fourth-order co-moments, kept when the object is
built with ``ci="delta"`` (the default); ``ci="fisher"`` keeps only
what the estimates and Fisher's interval need. Measured coverage
(``benchmarks/sobol_coverage.py``): ``"delta"`` is within 93-97 % for
every Ishigami index at ``n >= 1000`` groups. With fewer than 4 groups
every non-degenerate interval is the whole range (``[-1, 1]`` for
``S_k``, ``[0, 2]`` for ``ST_k``).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from melissa_sa.kernels.sobol_blocked_interval import blocked_interval
from melissa_sa.kernels.sobol_blocked_sums import blocked_aggregated_sums
from melissa_sa.kernels.sobol_centred import (
    DELTA,
    DELTA_LINEAR,
    FISHER,
    martinez_indices,
    martinez_interval,
)
from melissa_sa.stats.sobol_blocks import BlockedState

__all__ = ["METHODS", "indices", "interval", "aggregated_sums"]

#: interval methods by name (``confidence_interval(method=...)``)
METHODS = {"delta": DELTA, "fisher": FISHER, "delta-linear": DELTA_LINEAR}


def indices(state: np.ndarray, n_params: int) -> tuple[np.ndarray, np.ndarray]:
    """``(first, total)``, each ``(n_params, n_cells)``, from one pass over ``state``."""
    shape = (n_params, state.shape[0])
    first, total = np.empty(shape), np.empty(shape)
    martinez_indices(state, n_params, first, total)
    return first, total


def interval(state, n: int, n_params: int, ci: str, second, level: float,
             method: str | None, with_indices: bool):
    """``(indices or None, bounds)`` of a state of ``n`` groups kept with
    ``ci`` (``"delta"``: fourth-order co-moments, ``"fisher"``: block 1 only):
    a row-layout array or a :class:`~melissa_sa.stats.sobol_blocks.BlockedState`,
    read in place either way.

    ``bounds``: ``((first_low, first_high), (total_low, total_high))``, each
    ``(n_params, n_cells)``, then with ``second`` (a SecondOrderState) the
    pair ``(second_low, second_high)``. ``method`` (default ``ci``) picks the
    first- and total-order interval; ``with_indices``: the indices come from
    the same pass."""
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if method is None:
        method = ci
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if method != "fisher" and ci != "delta":
        raise ValueError(
            f"method {method!r} needs the fourth-order co-moments: build "
            "SobolMartinez(..., ci='delta')"
        )
    q = NormalDist().inv_cdf(0.5 + 0.5 * level)
    blocked = isinstance(state, BlockedState)
    shape = (n_params, state.n_cells if blocked else state.shape[0])
    out = [np.empty(shape) for _ in range(4)]
    index_shape = shape if with_indices else (n_params, 0)
    first, total = np.empty(index_shape), np.empty(index_shape)
    if blocked:
        blocked_interval(state.array, state.n_cells, n, n_params, q, METHODS[method], *out,
                         first, total)
    else:
        martinez_interval(state, n, n_params, q, METHODS[method], *out, first, total)
    bounds = (out[0], out[1]), (out[2], out[3])
    if second is not None:
        bounds += (second.interval(state, n, q),)
    return ((first, total) if with_indices else None), bounds


def aggregated_sums(state, n_params: int) -> np.ndarray:
    """The ``(4, n_params)`` partial sums of the aggregated indices over the
    cells of ``state`` (see :meth:`SobolMartinez.aggregated_sums`): a
    row-layout array or a :class:`~melissa_sa.stats.sobol_blocks.BlockedState`,
    read in place (the same sums bit for bit either way: NumPy's summation,
    :mod:`melissa_sa.kernels.sobol_blocked_sums`)."""
    out = np.empty((4, n_params))
    if isinstance(state, BlockedState):
        blocked_aggregated_sums(state.array, state.n_cells, n_params, out)
        return out
    a2, b2 = state[:, 3], state[:, 4]
    for k in range(n_params):
        i = 5 + 4 * k
        c2 = state[:, i + 1]
        out[0, k] = state[:, i + 3].sum()
        out[1, k] = np.sqrt(b2 * c2).sum()
        out[2, k] = state[:, i + 2].sum()
        out[3, k] = np.sqrt(a2 * c2).sum()
    return out
