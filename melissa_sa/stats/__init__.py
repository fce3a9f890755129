"""Per-cell one-pass statistics, all following one protocol (:mod:`.base`).

Each class keeps float64 (or int64 count) state for ``n_cells`` cells, is fed
one sample at a time with ``update``, merges exactly with another partial
state (``merge`` or ``+=``; all but :class:`Quantiles`, which raises
:class:`MergeError`), and saves itself to / loads itself from an h5py group
for checkpoints (:func:`load_statistic` loads any of them). The compiled
kernels live in :mod:`melissa_sa.kernels`; the statistics never change
Numba's thread count (:func:`set_threads` sets it once per process).
"""

from melissa_sa.stats.base import MergeError, Statistic, load_statistic, set_threads
from melissa_sa.stats.extrema import Extrema
from melissa_sa.stats.moments import Moments
from melissa_sa.stats.quantiles import Quantiles
from melissa_sa.stats.sobol import SobolMartinez
from melissa_sa.stats.sobol_aggregated import SobolAggregatedInterval
from melissa_sa.stats.threshold import ThresholdExceedance

__all__ = ["Moments", "Extrema", "ThresholdExceedance", "Quantiles", "SobolMartinez",
           "SobolAggregatedInterval",
           "Statistic", "MergeError", "load_statistic", "set_threads"]
