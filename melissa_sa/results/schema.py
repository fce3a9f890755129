"""What a results file holds: format tag, statistic names and shapes, definitions.

The file ``OUT/results.h5`` (see ``docs/results.md`` for the user's view)::

    /                          attrs: format = "melissa-sa/1", config (JSON),
                               melissa_sa_version, fields, created, complete
    /parameters/               the design actually run, one row per run
        run         (run,)            dimension scale 0..n_runs-1
        parameter   (parameter,)      dimension scale, the parameter names
        value       (run, parameter)  float64, attr names
        sim_id, group_id, member (run,) int64; redrawn, folded (run,) bool
    /<field>/                  one group per field; attrs n_cells, n_time_steps
        time_step (T,) cell (N,) [threshold] [quantile_level] [parameter] [pair]
                                      dimension scales of this field
        mean variance skewness kurtosis min max          (time_step, cell)
        threshold_exceedance                             (threshold, time_step, cell)
        quantiles                                        (quantile_level, time_step, cell)
        sobol_first sobol_total sobol_{first,total}_{low,high}
                                                         (parameter, time_step, cell)
        sobol_second sobol_second_{low,high}             (pair, time_step, cell)
                                      with sa_config.second_order; pairs "x1:x2"
        n_samples (time_step,) int64; n_groups (time_step,) int64 with Sobol'
        sobol_{first,total}_aggregated[_low, _high] (parameter, time_step) with Sobol'

Every statistic carries a one-line ``definition`` attribute; the confidence
bounds also ``confidence_level`` and ``method``.
"""

from __future__ import annotations

import numpy as np

FORMAT = "melissa-sa/1"

#: Per-cell statistics in canonical order, with the name of their leading
#: dimension (``None``: shaped (time_step, cell)).
STATISTICS: dict[str, str | None] = {
    "mean": None,
    "variance": None,
    "skewness": None,
    "kurtosis": None,
    "min": None,
    "max": None,
    "threshold_exceedance": "threshold",
    "quantiles": "quantile_level",
    "sobol_first": "parameter",
    "sobol_total": "parameter",
    "sobol_first_low": "parameter",
    "sobol_first_high": "parameter",
    "sobol_total_low": "parameter",
    "sobol_total_high": "parameter",
    "sobol_second": "pair",
    "sobol_second_low": "pair",
    "sobol_second_high": "pair",
}
SOBOL_STATISTICS = ("sobol_first", "sobol_total", "sobol_first_low", "sobol_first_high",
                    "sobol_total_low", "sobol_total_high")
#: Per-time-step counts, shaped (time_step,), int64.
COUNTS = ("n_samples", "n_groups")
#: Names of the dimension-scale datasets inside a field group.
SCALES = ("time_step", "cell", "threshold", "quantile_level", "parameter", "pair")
#: Second-order Sobol' datasets (sa_config.second_order), (pair, time_step, cell);
#: pairs in itertools.combinations(range(p), 2) order, named "x1:x2".
SECOND_ORDER_STATISTICS = ("sobol_second", "sobol_second_low", "sobol_second_high")

DEFINITIONS: dict[str, str] = {
    "mean": "sample mean over independent runs",
    "variance": "unbiased sample variance M2/(n-1)",
    "skewness": "Fisher-Pearson skewness g1 = m3/m2^1.5 (biased, as scipy.stats.skew); "
                "0 for a constant cell",
    "kurtosis": "Fisher excess kurtosis g2 = m4/m2^2 - 3 (biased, as scipy.stats.kurtosis); "
                "0 for a constant cell",
    "min": "sample minimum over independent runs",
    "max": "sample maximum over independent runs",
    "threshold_exceedance": "empirical probability P(Y > threshold) (strict inequality)",
    "quantiles": "one-pass estimate of the quantile of the given level",
    "sobol_first": "Martinez first-order index corr(Y_B, Y_Ck); 0 for a constant cell",
    "sobol_total": "Martinez total-order index 1 - corr(Y_A, Y_Ck); 0 for a constant cell",
    "sobol_first_low": "lower confidence bound of sobol_first",
    "sobol_first_high": "upper confidence bound of sobol_first",
    "sobol_total_low": "lower confidence bound of sobol_total",
    "sobol_total_high": "upper confidence bound of sobol_total",
    "sobol_second": "second-order Sobol' index S_ij = S_ij^closed - S_i - S_j of the pair",
    "sobol_second_low": "lower confidence bound of sobol_second",
    "sobol_second_high": "upper confidence bound of sobol_second",
    "n_samples": "independent runs folded in per time step (A and B of each group under Sobol')",
    "n_groups": "pick-freeze groups folded into the Sobol' indices per time step",
}

#: Aggregated Sobol' indices of the whole field (Gamboa et al. 2014, Martinez form),
#: shaped (parameter, time_step), float64; rank 0 writes them with the counts.
AGGREGATED = ("sobol_first_aggregated", "sobol_total_aggregated",
              "sobol_first_aggregated_low", "sobol_first_aggregated_high",
              "sobol_total_aggregated_low", "sobol_total_aggregated_high")
DEFINITIONS["sobol_first_aggregated"] = (
    "first-order Sobol' index of the whole field: sum_c Cov_c(Y_B, Y_Ck) / "
    "sum_c sqrt(Var_c(Y_B) Var_c(Y_Ck)) over every cell")
DEFINITIONS["sobol_total_aggregated"] = (
    "total Sobol' index of the whole field: 1 - sum_c Cov_c(Y_A, Y_Ck) / "
    "sum_c sqrt(Var_c(Y_A) Var_c(Y_Ck)) over every cell")
for _kind in ("first", "total"):
    DEFINITIONS[f"sobol_{_kind}_aggregated_low"] = (
        f"lower confidence bound of sobol_{_kind}_aggregated")
    DEFINITIONS[f"sobol_{_kind}_aggregated_high"] = (
        f"upper confidence bound of sobol_{_kind}_aggregated")
#: how the aggregated indices' bounds are computed (their ``method`` attribute)
AGGREGATED_CI_METHOD = (
    "batch-means delta method: value +- t_q se, se from K batch sums of the whole "
    "field's influence values (docs/statistics.md)")

CI_METHODS: dict[str, str] = {
    "delta": "delta-method standard error of the correlation (any law), "
             "interval on Fisher's z scale, z = atanh(r) +- q se_r/(1-r^2)",
    "fisher": "Fisher's z-transform, atanh(r) +- q/sqrt(n-3)",
    "delta-linear": "delta-method standard error of the correlation, r +- q se_r",
}

#: Value of a statistic not written yet, and of a count not written yet.
FLOAT_FILL = np.nan
COUNT_FILL = -1

__all__ = [
    "FORMAT", "STATISTICS", "SOBOL_STATISTICS", "COUNTS", "SCALES", "DEFINITIONS",
    "CI_METHODS", "FLOAT_FILL", "COUNT_FILL", "ResultsFileError", "ResultsWriteError",
    "as_text", "version",
]


class ResultsFileError(ValueError):
    """A file that is not a complete, readable melissa-sa results file."""


class ResultsWriteError(RuntimeError):
    """Writing the results file failed (on this rank or another one).

    ``cause``: the rank and the error in a few words; ``file_system``: the
    file system refused the write (full, quota, I/O error), so the same
    write may succeed once it has room (set by the parallel writer).
    """

    cause: str = ""
    file_system: bool = False


def version() -> str:
    """The melissa-sa version written into a file."""
    try:
        from melissa_sa import __version__
        return str(__version__)
    except Exception:  # pragma: no cover
        return "unknown"


def as_text(x) -> str:
    """An HDF5 string attribute or dataset value as ``str``."""
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, np.ndarray) and x.shape == ():
        return as_text(x[()])
    return str(x)

