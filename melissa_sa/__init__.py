"""melissa-sa: in-transit sensitivity analysis.

Simulations stream their fields to an MPI-parallel server that folds every
sample into one-pass, per-cell statistics (moments, extrema, threshold
exceedance, quantiles, Sobol' indices) without ever storing the ensemble.
"""

__version__ = "0.1.0"
