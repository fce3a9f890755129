"""Convergence-driven stopping of a Sobol' study: the rule, its reduction, its config.

A study with ``sa_config.convergence: {"ci_width": W, "min_groups": M}``
stops drawing new pick-freeze groups once every first- and total-order
index's interval (at ``confidence_level``) is at most ``W`` wide, over every
time step and every cell that *counts*, and only after at least ``M`` groups.
``parameter_sweep_size`` stays the ceiling. See ``docs/statistics.md``,
"Stopping when converged", for the rule, its cadence and its measured
coverage (``benchmarks/stopping_coverage.py``).

**Which cells count.** At time step ``t`` let ``v_c`` be the variance of the
output in cell ``c`` (over the independent runs, rows A and B) and
``vbar_t`` the mean of ``v_c`` over the field's cells with a finite
variance. A (cell, step) counts when ``v_c > r * vbar_t`` (``r`` is
``negligible_variance``, default 1e-6) and its interval is finite. The cells
left out together carry at most ``r`` of the field's total variance at that
step, so they cannot matter to an index of the whole field; a constant cell
(``v_c = 0``, interval ``[0, 0]``) never counts. A cell with a NaN (a broken
run) has no defined interval: it is left out and counted apart
(``n_undefined``), so a study with NaN cells can still stop, and says so.

**Reduction without a gather of cells.** Each server rank reduces its slice
to a few numbers, in two tiny rounds:

1. :func:`variance_totals` per rank (sum and count of finite cell variances
   per time step), summed over ranks by :func:`combine_variance_totals`, gives
   the per-step floors ``r * vbar_t`` (:meth:`VarianceTotals.floors`);
2. :func:`local_summary` per rank (the widest counted interval and where it
   is, and how many (cell, step) pairs count, are negligible, are undefined),
   combined by :func:`combine` (max / sums), then :func:`decide`.

Both combinations are exact: any split of the field over ranks gives the
summary of the whole field (tested).

**Cadence.** :class:`CheckSchedule` (kept by rank 0) makes a check due
when the group count reached :func:`next_check` (``M``, then every
``CHECK_GROWTH`` = 5 % more groups, at least one more) *and* at least
``CHECK_BUDGET`` (20) times the last check's duration has passed since it
ended. A check costs one interval computation per time step and rank slice
(measured 0.7 s of CPU per 10^6 cells and time step at p = 3, about 10
group updates, plus about 0.1 s for :func:`step_summary`); the geometric
spacing bounds the extra groups run after the target is met to 5 %, and the
time budget bounds the checks to about 5 % of the server's time on any mesh.

**Floor.** The config check refuses ``min_groups < MIN_GROUPS_FLOOR`` (200):
studies stopped earlier report intervals that cover measurably less than
their level (optional stopping plus the small-sample bias of the delta
interval; see ``benchmarks/stopping_coverage.py``).

Everything here is pure (NumPy arrays and small frozen dataclasses): the
server, launcher and results code call it. One role a module:
:mod:`.rule` (the rule, its reduction and the decision), :mod:`.schedule`
(when to check), :mod:`.text` (the progress and ``info`` text) and
:mod:`.parse` (the config key).
"""

from melissa_sa.convergence.parse import (
    KEYS,
    MIN_GROUPS_FLOOR,
    ConvergenceConfigError,
    parse_rule,
)
from melissa_sa.convergence.rule import (
    DEFAULT_NEGLIGIBLE_VARIANCE,
    KINDS,
    ConvergenceRule,
    ConvergenceSummary,
    Decision,
    VarianceTotals,
    combine,
    combine_variance_totals,
    decide,
    local_summary,
    step_summary,
    variance_totals,
)
from melissa_sa.convergence.schedule import CHECK_BUDGET, CHECK_GROWTH, CheckSchedule, next_check
from melissa_sa.convergence.text import progress_text, stopping_text

__all__ = [
    "DEFAULT_NEGLIGIBLE_VARIANCE", "CHECK_GROWTH", "CHECK_BUDGET", "MIN_GROUPS_FLOOR", "KEYS",
    "KINDS", "ConvergenceRule", "VarianceTotals", "ConvergenceSummary", "Decision",
    "variance_totals", "combine_variance_totals", "step_summary", "local_summary", "combine",
    "decide", "progress_text", "stopping_text", "next_check", "CheckSchedule",
    "ConvergenceConfigError", "parse_rule",
]
