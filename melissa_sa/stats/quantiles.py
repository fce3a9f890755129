"""Streaming per-cell quantiles."""

from __future__ import annotations

import numbers

import numpy as np

from melissa_sa.kernels import quantiles as _k
from melissa_sa.stats._state import as_sample, load_state, save_state
from melissa_sa.stats.base import MergeError, Statistic

__all__ = ["Quantiles"]


def _check_levels(levels) -> np.ndarray:
    if isinstance(levels, (str, bytes)) or np.ndim(levels) != 1:
        raise ValueError(f"levels must be a 1-D sequence of numbers, got {levels!r}")
    out = []
    for value in levels:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise ValueError(f"quantile level {value!r} is not a real number")
        value = float(value)
        if not (0.0 < value < 1.0):  # also refuses NaN
            raise ValueError(f"quantile level {value!r} is not strictly between 0 and 1")
        out.append(value)
    if not out:
        raise ValueError("levels is empty: give at least one quantile level")
    return np.array(out, dtype=np.float64)


class Quantiles(Statistic):
    """Per-cell quantiles of a stream of samples, in one pass and O(1) memory.

    For every cell ``c`` and level ``alpha`` it estimates the alpha-quantile
    of the values ``x_1[c], x_2[c], ...`` seen so far, without storing them
    and without knowing how many will come.

    * Samples 1 to 8 are kept (sorted) in the state, so while ``count <= 8``
      :attr:`values` is exactly ``numpy.quantile(samples, levels, axis=0)``
      (method "linear").
    * From sample 9 on, each level follows Tierney's (1983) stochastic
      approximation with a recursive estimate ``f_n`` of the density at the
      current estimate ``q``. For sample number ``n`` with value ``x``::

          h   = 0.5 * min(alpha, 1 - alpha, 0.1) / f_{n-1}   # density window
          f_n = H_n / W_n,  H_n = (1 - 0.5/n) H_{n-1} + 1{|x - q| <= h},
                            W_n = (1 - 0.5/n) W_{n-1} + 2 h
          q  <- q + (1.1 + 1/sqrt(H_n)) / (n f_n) * (alpha - 1{x <= q})
          q  <- clip(q, min seen, max seen)

      It starts from the exact quantile of the first 8 samples and a
      deliberately low Gaussian density guess (``phi(z_alpha) / (4 s)``, ``s``
      their standard deviation, worth one hit). The window holds a fixed
      probability mass, so ``f_n`` is about as precise at 0.99 as at 0.5; the
      gain 1/(n f) is the optimal one (it reaches the variance of the exact
      sample quantile, ``alpha (1 - alpha) / (n f(q)^2)``), taken a little
      larger because a gain too small costs more than one too large.
    * Everything works on differences ``x - q`` relative to one of the first
      samples of the cell, so adding a constant (even 1e9) to the data shifts
      the estimates and changes nothing else.

    On reading, estimates are clipped to ``[min, max]`` of the data seen and
    sorted across levels (a quantile never decreases with its level).

    At 10^4 samples the root-mean-square error is within a few percent of the
    exact sample quantile's (``benchmarks/quantile_accuracy.py``).

    State: ``8 * (3 + L + max(2 L, 8))`` bytes per cell for ``L`` levels
    (112 bytes for 3 levels). Quantiles do not merge (:meth:`merge` raises
    :class:`~melissa_sa.stats.MergeError`): partial states of a
    stochastic approximation cannot be combined exactly.

    NaN policy: a non-finite value (NaN or +-inf) in a sample poisons that
    cell: its quantiles are NaN from then on. Other cells are unaffected.

    Parameters
    ----------
    n_cells
        Number of cells (values per sample).
    levels
        Quantile levels, each strictly between 0 and 1, in any order.

    Attributes
    ----------
    values
        ``(n_levels, n_cells)`` float64 estimates, row ``i`` for ``levels[i]``
        (NaN before the first sample).
    levels
        The levels, float64, in the order given.
    count
        Number of samples folded in.

    References
    ----------
    L. Tierney (1983), "A space-efficient recursive procedure for estimating
    a quantile of an unknown distribution", SIAM J. Sci. Stat. Comput.
    4(4), 706-711.

    Examples
    --------
    >>> import numpy as np
    >>> from melissa_sa.stats.quantiles import Quantiles
    >>> q = Quantiles(n_cells=2, levels=[0.25, 0.5])
    >>> for x in ([1.0, 5.0], [3.0, 5.0], [2.0, 5.0]):
    ...     q.update(x)
    >>> q.values                       # exact during the first 8 samples
    array([[1.5, 5. ],
           [2. , 5. ]])

    >>> rng = np.random.default_rng(0)
    >>> q = Quantiles(n_cells=3, levels=[0.05, 0.5, 0.95])
    >>> for _ in range(10_000):
    ...     q.update(rng.normal(loc=[0.0, 10.0, 1e9], scale=1.0))
    >>> q.count
    10000
    >>> truth = np.array([-1.6449, 0.0, 1.6449])[:, None] + [0.0, 10.0, 1e9]
    >>> bool(np.all(np.abs(q.values - truth) < 0.1))
    True
    """

    def __init__(self, n_cells: int, levels) -> None:
        if isinstance(n_cells, (bool, np.bool_)) or not isinstance(n_cells, numbers.Integral):
            raise TypeError(f"n_cells must be an integer, got {n_cells!r}")
        if n_cells < 1:
            raise ValueError(f"n_cells must be positive, got {n_cells}")
        self._n_cells = int(n_cells)
        self._levels = _check_levels(levels)
        self._order = np.argsort(self._levels, kind="stable").astype(np.int64)
        self._state = _k.quantiles_new_state(self._n_cells, self._levels.size)
        self._n = 0

    # -- updating ---------------------------------------------------------
    def update(self, x) -> None:
        """Fold in one sample ``x``: ``n_cells`` values, float32 or float64."""
        x = as_sample(x, self._n_cells)
        _k.quantiles_update(self._n, self._levels, self._state, x)
        self._n += 1

    def merge(self, other) -> None:
        """Not supported: raises :class:`~melissa_sa.stats.MergeError`.

        A stochastic-approximation quantile state summarises a stream in a
        way that depends on the order of the samples; two partial states
        cannot be combined into the state of the joint stream. Feed every
        sample of a cell to one ``Quantiles`` object instead.
        """
        raise MergeError(
            "Quantiles cannot be merged: streaming quantile estimates of two "
            "partial streams do not combine exactly; feed all samples of a "
            "cell to one Quantiles object"
        )

    # -- results ------------------------------------------------------------
    @property
    def values(self) -> np.ndarray:
        """Estimates, shape ``(n_levels, n_cells)``, float64 (a new array)."""
        out = np.empty((self._levels.size, self._n_cells), dtype=np.float64)
        _k.quantiles_values(self._n, self._levels, self._order, self._state, out)
        return out

    @property
    def levels(self) -> np.ndarray:
        """The quantile levels, in the order given (a copy)."""
        return self._levels.copy()

    @property
    def count(self) -> int:
        """Number of samples folded in."""
        return self._n

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return self._n_cells

    @property
    def nbytes(self) -> int:
        """Bytes of state held: ``8 * (3 + L + max(2 L, 8)) * n_cells``."""
        return self._state.nbytes

    def __repr__(self) -> str:
        lv = ", ".join(f"{v:g}" for v in self._levels)
        return f"Quantiles(n_cells={self._n_cells}, levels=[{lv}], count={self._n})"

    # -- checkpoint ---------------------------------------------------------
    def save(self, group) -> None:
        """Write the state into the h5py group ``group``."""
        save_state(
            group,
            "Quantiles",
            {"state": self._state, "levels": self._levels},
            {"count": self._n, "n_cells": self._n_cells, "warmup": _k.WARMUP},
        )

    @classmethod
    def load(cls, group) -> Quantiles:
        """Rebuild a ``Quantiles`` from what :meth:`save` wrote in ``group``."""
        arrays, attrs = load_state(group, "Quantiles", ["state", "levels"])
        where = getattr(group, "name", "<group>")
        warmup = int(attrs.get("warmup", -1))
        if warmup != _k.WARMUP:
            raise ValueError(
                f"{where}: Quantiles state has warm-up {warmup}, this melissa-sa uses {_k.WARMUP}"
            )
        levels = np.asarray(arrays["levels"], dtype=np.float64)
        state = np.asarray(arrays["state"], dtype=np.float64)
        n_cells = int(attrs["n_cells"])
        obj = cls(n_cells, levels)
        if state.shape != obj._state.shape:
            raise ValueError(
                f"{where}: Quantiles state has shape {state.shape}, expected {obj._state.shape}"
            )
        count = int(attrs["count"])
        if count < 0:
            raise ValueError(f"{where}: Quantiles count {count} is negative")
        obj._state = np.ascontiguousarray(state)
        obj._n = count
        return obj
