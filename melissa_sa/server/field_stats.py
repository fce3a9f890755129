"""The statistics one server rank keeps: per field slice, per time step.

:class:`LocalField` is this rank's part of one field (cells ``[lo, hi)``)
with one :class:`StepStatistics` per time step; :func:`collect_results`
turns it into the arrays the results writer takes. Independent rows (A and
B, or the one run of a group without Sobol') feed the moments, extrema,
thresholds and quantiles; the whole group feeds the Martinez accumulators
(``p + 2`` rows, or ``2p + 2`` with ``sa_config.second_order``, as the
study's :class:`~melissa_sa.design.GroupLayout` says): one
:class:`SobolMartinez` per step, which also keeps the aggregated indices'
batch sums (:class:`SobolAggregatedInterval`, attached to it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from melissa_sa.results.schema import SECOND_ORDER_STATISTICS
from melissa_sa.stats import (
    Extrema,
    Moments,
    Quantiles,
    SobolAggregatedInterval,
    SobolMartinez,
    ThresholdExceedance,
)
from melissa_sa.stats.row_pool import RowPool

__all__ = ["STAT_CLASSES", "LocalField", "StepStatistics", "collect_results"]

#: the statistic kept under each attribute name (and checkpoint group name)
STAT_CLASSES = {"moments": Moments, "extrema": Extrema, "threshold": ThresholdExceedance,
                "quantiles": Quantiles, "sobol": SobolMartinez,
                "sobol_aggregated": SobolAggregatedInterval}


class StepStatistics:
    """The statistics of one field slice at one time step."""

    def __init__(self, n_cells: int, config):
        sa = config.sa_config
        self.layout = config.layout
        self.moments = None
        order = 4 if (sa.skewness or sa.kurtosis) else 2
        # the convergence rule needs each cell's variance (24 B per cell at order 2)
        if sa.mean or sa.variance or sa.skewness or sa.kurtosis or sa.convergence is not None:
            self.moments = Moments(n_cells, order=order)
        self.extrema = Extrema(n_cells) if (sa.min or sa.max) else None
        self.threshold = (ThresholdExceedance(n_cells, sa.threshold_exceedance)
                          if sa.threshold_exceedance else None)
        self.quantiles = Quantiles(n_cells, sa.quantiles) if sa.quantiles else None
        p = config.study_options.nb_parameters
        # with the aggregated indices' interval: batch sums of the influence values
        self.sobol = (SobolMartinez(n_cells, p, ci=sa.confidence_method,
                                    second_order=self.layout.second_order,
                                    fold_batch=sa.sobol_fold_batch,
                                    aggregated=SobolAggregatedInterval(n_cells, p))
                      if sa.sobol_indices else None)
        self.n_samples = 0

    @property
    def sobol_aggregated(self) -> SobolAggregatedInterval | None:
        """The aggregated interval's batch sums, every group's added (the
        Sobol' accumulator's :attr:`~SobolMartinez.aggregated`)."""
        return None if self.sobol is None else self.sobol.aggregated

    def items_names(self) -> list[str]:
        """Names of the statistics kept (attribute names)."""
        return [k for k in STAT_CLASSES if getattr(self, k) is not None]

    def items(self):
        """(name, statistic) pairs of the statistics kept."""
        return [(k, getattr(self, k)) for k in self.items_names()]

    def _value_statistics(self) -> list:
        """The statistics kept besides the moments that independent runs feed
        one run at a time (extrema, threshold exceedance, quantiles)."""
        return [s for s in (self.extrema, self.threshold, self.quantiles) if s is not None]

    def fold_sample(self, x: np.ndarray) -> None:
        """One independent run's values over the slice."""
        if self.moments is not None:
            self.moments.update(x)
        for stat in self._value_statistics():
            stat.update(x)
        self.n_samples += 1

    def _fold_pair(self, x: np.ndarray, y: np.ndarray) -> None:
        """Two independent runs' values (A then B): the moments in one pass
        over their state, the other statistics one run after the other."""
        if self.moments is not None:
            self.moments.update_pair(x, y)
        for stat in self._value_statistics():
            stat.update(x)
            stat.update(y)
        self.n_samples += 2

    def fold_group(self, rows: np.ndarray, group_id: int, pool: RowPool | None = None
                   ) -> None:
        """A complete group (the study's group ``group_id``): its independent
        rows, and all rows into the Sobol' accumulator (the aggregated
        interval's influence sums added by its fold).

        ``pool``: ``rows`` was leased from this pool and goes back to it once
        folded (at once without Sobol'; with it, when the Sobol' buffer is
        folded, the rows folded from where they are); without a pool the
        accumulator copies what it keeps."""
        independent = self.layout.independent_rows
        if len(independent) == 2:
            self._fold_pair(rows[independent[0]], rows[independent[1]])
        else:
            for row in independent:
                self.fold_sample(rows[row])
        if self.sobol is None:
            if pool is not None:
                pool.give_back(rows)
            return
        self.sobol.update(rows, group_id, pool=pool)

    def restore(self, sg) -> None:
        """Load every statistic kept from the checkpoint group ``sg`` of this
        step. The Sobol' accumulator keeps this step's ``fold_batch`` (a
        setting of this run, not of the checkpoint) and takes its aggregated
        interval from ``sg["sobol_aggregated"]``, or a fresh one that starts
        after the saved groups (a checkpoint written before it existed)."""
        for key in self.items_names():
            if key == "sobol":
                sobol = SobolMartinez.load(sg[key], fold_batch=self.sobol.fold_batch)
                if "sobol_aggregated" in sg:
                    aggregated = SobolAggregatedInterval.load(sg["sobol_aggregated"])
                else:
                    aggregated = SobolAggregatedInterval(sobol.n_cells, sobol.n_params)
                    aggregated.start_after(sobol.count)
                sobol.attach(aggregated)
                self.sobol = sobol
            elif key != "sobol_aggregated":   # restored with "sobol"
                setattr(self, key, STAT_CLASSES[key].load(sg[key]))


@dataclass
class LocalField:
    """This rank's part of one field: cells ``[lo, hi)`` and their statistics."""

    name: str
    field_id: int
    lo: int
    hi: int
    steps: list[StepStatistics]

    @property
    def n_cells(self) -> int:
        return self.hi - self.lo


def collect_results(lf: LocalField, config) -> dict:
    """This rank's slice of every statistic of one field, for the results writer.

    Each statistic is a callable ``t -> array`` giving time step ``t``
    (``(cells,)`` or ``(k, cells)`` with k thresholds or quantile levels),
    so the writer holds at most two steps at a time (one being written
    while the next is computed, ``results/write_behind.py``); ``n_samples`` (and ``n_groups``)
    are arrays over time steps. The six Sobol' datasets come under one key,
    the tuple :data:`SOBOL_NAMES`, as a callable ``t -> six (parameter,
    cell) arrays``: indices and intervals of a step are computed in one
    pass, written while the next step is computed, then released, during
    this rank's turn to write (finalisation holds two steps of them, never
    the field).
    With second order the key is ``SOBOL_NAMES + SECOND_NAMES`` and the
    callable adds the three ``(pair, cell)`` arrays of :data:`SECOND_NAMES`,
    from the same ``confidence_interval`` call (one pass per step, not two).
    Every step's Sobol' buffer is folded and freed first
    (:meth:`SobolMartinez.trim`): finalisation holds the accumulators and
    two steps of results, not the group buffers.
    """
    sa = config.sa_config
    steps = lf.steps
    for step in steps:
        if step.sobol is not None:
            step.sobol.trim()   # fold the buffered groups, free the buffers
    out: dict = {"n_samples": np.array([s.n_samples for s in steps], dtype=np.int64)}
    if steps[0].moments is not None:
        for stat in ("mean", "variance", "skewness", "kurtosis"):
            if getattr(sa, stat):
                out[stat] = lambda t, stat=stat: getattr(steps[t].moments, stat)
    if sa.min:
        out["min"] = lambda t: steps[t].extrema.min
    if sa.max:
        out["max"] = lambda t: steps[t].extrema.max
    if steps[0].threshold is not None:
        out["threshold_exceedance"] = lambda t: steps[t].threshold.probability
    if steps[0].quantiles is not None:
        out["quantiles"] = lambda t: steps[t].quantiles.values
    if steps[0].sobol is not None:
        out["n_groups"] = np.array([s.sobol.count for s in steps], dtype=np.int64)
        names = SOBOL_NAMES + (SECOND_NAMES if steps[0].sobol.has_second_order else ())
        out[names] = lambda t: sobol_step(steps[t].sobol, sa.confidence_level)
    return out


SOBOL_NAMES = ("sobol_first", "sobol_total", "sobol_first_low", "sobol_first_high",
               "sobol_total_low", "sobol_total_high")
#: the second-order datasets, each (pair, cell) per step (sa_config.second_order)
SECOND_NAMES = SECOND_ORDER_STATISTICS


def sobol_step(sobol, confidence_level: float) -> tuple[np.ndarray, ...]:
    """One time step's Sobol' indices and intervals, in :data:`SOBOL_NAMES` order,
    followed by :data:`SECOND_NAMES` when ``sobol`` has second order."""
    (first, total), intervals = sobol.indices_and_interval(confidence_level)
    (f_lo, f_hi), (t_lo, t_hi) = intervals[:2]
    if not sobol.has_second_order:
        return first, total, f_lo, f_hi, t_lo, t_hi
    s_lo, s_hi = intervals[2]
    return first, total, f_lo, f_hi, t_lo, t_hi, sobol.second_order, s_lo, s_hi


def aggregated_sums(lf: LocalField) -> dict | None:
    """This rank's partial sums for the aggregated indices and their interval.

    JSON-able for the reduction over ranks, None without Sobol': ``sums``
    ``[t][row][k]`` (rows of :meth:`SobolMartinez.aggregated_sums`),
    ``n_groups`` ``[t]``, and the interval's ``batches`` ``[t][j][row][k]``,
    ``batch_counts`` and ``batch_ids`` ``[t][j]``
    (:class:`SobolAggregatedInterval`).
    """
    if not lf.steps or lf.steps[0].sobol is None:
        return None
    return {"sums": [step.sobol.aggregated_sums().tolist() for step in lf.steps],
            "n_groups": [step.sobol.count for step in lf.steps],
            "batches": [step.sobol_aggregated.batches.tolist() for step in lf.steps],
            "batch_counts": [step.sobol_aggregated.batch_counts.tolist() for step in lf.steps],
            "batch_ids": [step.sobol_aggregated.batch_ids.tolist() for step in lf.steps]}
