"""Per-cell one-pass statistics with update / merge / save / load.

Each class keeps float64 (or int64 count) state for ``n_cells`` cells, is fed
one sample at a time with ``update``, merges exactly with another partial
state (all but :class:`Quantiles`), and saves itself to / loads itself from an
h5py group for checkpoints. The compiled kernels live in
:mod:`melissa_sa.kernels`.
"""

from melissa_sa.stats.extrema import Extrema
from melissa_sa.stats.moments import Moments
from melissa_sa.stats.quantiles import Quantiles
from melissa_sa.stats.sobol import SobolMartinez
from melissa_sa.stats.threshold import ThresholdExceedance

__all__ = ["Moments", "Extrema", "ThresholdExceedance", "Quantiles", "SobolMartinez"]
