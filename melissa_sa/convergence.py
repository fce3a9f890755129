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
server, launcher and results code call it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Relative variance below which a cell does not count (see module docstring).
DEFAULT_NEGLIGIBLE_VARIANCE = 1e-6
#: A check happens each time the number of folded groups grew by this fraction.
CHECK_GROWTH = 0.05
#: ... and not before this many times the last check's duration has passed.
CHECK_BUDGET = 20.0
#: The smallest ``min_groups`` a config may ask for: stopped earlier, the final
#: intervals cover less than nominal - 2 points (measured on Ishigami: 91.8 %
#: at nominal 95 % with min_groups = 20, at least 93.2 % from 200 on; see
#: ``docs/statistics.md``, "Stopping when converged").
MIN_GROUPS_FLOOR = 200
#: The keys of ``sa_config.convergence``.
KEYS = ("ci_width", "min_groups", "negligible_variance")
#: Index families, in the order used by :attr:`ConvergenceSummary.kind`.
KINDS = ("first", "total")


@dataclass(frozen=True)
class ConvergenceRule:
    """A validated ``sa_config.convergence`` (see :func:`parse_rule`)."""

    ci_width: float
    min_groups: int
    negligible_variance: float = DEFAULT_NEGLIGIBLE_VARIANCE

    def to_dict(self) -> dict:
        return {"ci_width": self.ci_width, "min_groups": self.min_groups,
                "negligible_variance": self.negligible_variance}


@dataclass(frozen=True)
class VarianceTotals:
    """Per time step: sum and number of the finite cell variances (round 1)."""

    total: tuple[float, ...]
    count: tuple[int, ...]

    def floors(self, negligible_variance: float) -> np.ndarray:
        """Per step, the variance a cell must exceed to count: ``r * mean``."""
        total = np.asarray(self.total, dtype=np.float64)
        count = np.asarray(self.count, dtype=np.float64)
        mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        return negligible_variance * mean


@dataclass(frozen=True)
class ConvergenceSummary:
    """What one rank (or, combined, the whole field) says about convergence.

    ``width`` is the widest interval over the counted (cell, step, index)
    entries, 0.0 when none counts; ``field``, ``kind`` (``"first"`` or
    ``"total"``), ``param``, ``step`` and ``cell`` (global index) say where it
    is, "" / -1 when none counts. Floors are per field and time step: run
    rounds 1 and 2 per field, then :func:`combine` the fields' summaries.
    ``n_counted``, ``n_negligible`` and ``n_undefined`` count (cell, step)
    pairs.
    """

    width: float = 0.0
    kind: str = ""
    param: int = -1
    step: int = -1
    field: str = ""
    cell: int = -1
    n_counted: int = 0
    n_negligible: int = 0
    n_undefined: int = 0

    def where(self) -> str:
        """Human-readable location of the widest interval, e.g. ``ST2, step 3, cell 17``."""
        if self.param < 0:
            return "no counted cell"
        name = ("S" if self.kind == "first" else "ST") + str(self.param + 1)
        of = f" of {self.field}" if self.field else ""
        return f"{name}{of}, step {self.step}, cell {self.cell}"


@dataclass(frozen=True)
class Decision:
    """The outcome of one check: stop drawing groups or not, and why."""

    stop: bool
    width: float
    reason: str


# -- round 1: the variance floors ------------------------------------------------

def variance_totals(variances: Iterable) -> VarianceTotals:
    """Sum and count of the finite cell variances of each time step of a slice.

    ``variances``: one ``(n_cells,)`` array per time step (e.g.
    ``Moments.variance``; NaN while fewer than 2 samples, or for a cell with a
    NaN sample, and then not counted).
    """
    total, count = [], []
    for v in variances:
        v = np.asarray(v, dtype=np.float64)
        finite = np.isfinite(v)
        total.append(float(v.sum(where=finite)))
        count.append(int(np.count_nonzero(finite)))
    return VarianceTotals(tuple(total), tuple(count))


def combine_variance_totals(parts: Iterable[VarianceTotals]) -> VarianceTotals:
    """Sum :class:`VarianceTotals` over ranks (all must have the same steps)."""
    parts = list(parts)
    if not parts:
        raise ValueError("combine_variance_totals needs at least one part")
    n_steps = len(parts[0].total)
    if any(len(p.total) != n_steps for p in parts):
        raise ValueError("cannot combine variance totals of different numbers of time steps: "
                         + ", ".join(str(len(p.total)) for p in parts))
    total = [math.fsum(p.total[t] for p in parts) for t in range(n_steps)]
    count = [sum(p.count[t] for p in parts) for t in range(n_steps)]
    return VarianceTotals(tuple(total), tuple(count))


# -- round 2: the widths -----------------------------------------------------------

def step_summary(first_ci, total_ci, variance, floor: float, *, step: int = 0,
                 cell_offset: int = 0, field: str = "") -> ConvergenceSummary:
    """Summary of one time step of a slice, from its intervals and variances.

    ``first_ci`` and ``total_ci`` are ``(low, high)`` pairs of
    ``(n_params, n_cells)`` arrays (as ``SobolMartinez.confidence_interval``
    returns), ``variance`` is ``(n_cells,)`` and ``floor`` the step's floor
    from :meth:`VarianceTotals.floors`. ``cell_offset`` is the global index of
    the slice's first cell.
    """
    variance = np.asarray(variance, dtype=np.float64)
    (f_lo, f_hi), (t_lo, t_hi) = first_ci, total_ci
    widths = np.stack([np.asarray(f_hi, dtype=np.float64) - f_lo,
                       np.asarray(t_hi, dtype=np.float64) - t_lo])   # (2, p, n)
    if widths.shape[2:] != variance.shape:
        raise ValueError(f"intervals over {widths.shape[2]} cells but variance over "
                         f"{variance.shape} cells")
    defined = np.isfinite(variance) & np.isfinite(widths).all(axis=(0, 1))
    counted = defined & (variance > floor)
    n_undefined = int(variance.size - np.count_nonzero(defined))
    n_counted = int(np.count_nonzero(counted))
    n_negligible = int(variance.size) - n_undefined - n_counted
    if n_counted == 0:
        return ConvergenceSummary(n_negligible=n_negligible, n_undefined=n_undefined)
    # (cell, kind, param) order: the first maximum is the one combine() keeps
    masked = np.where(counted, widths, -np.inf).transpose(2, 0, 1)
    cell, kind, param = np.unravel_index(int(np.argmax(masked)), masked.shape)
    return ConvergenceSummary(width=float(masked[cell, kind, param]), kind=KINDS[kind],
                              param=int(param), step=int(step), field=field,
                              cell=int(cell) + int(cell_offset), n_counted=n_counted,
                              n_negligible=n_negligible, n_undefined=n_undefined)


def local_summary(sobols: Sequence, variances: Sequence, floors: Sequence[float],
                  level: float, *, cell_offset: int = 0, field: str = "",
                  method: str | None = None) -> ConvergenceSummary:
    """Summary of a rank's slice over all time steps.

    ``sobols``: one :class:`~melissa_sa.stats.SobolMartinez` per time step;
    ``variances``: the matching ``(n_cells,)`` variance arrays; ``floors``:
    per-step floors (round 1); ``level``: ``confidence_level``. Costs one
    ``confidence_interval`` per time step.
    """
    if not len(sobols) == len(variances) == len(floors):
        raise ValueError(f"{len(sobols)} Sobol' states, {len(variances)} variances and "
                         f"{len(floors)} floors: one of each per time step")
    parts = []
    for t, (sobol, variance, floor) in enumerate(zip(sobols, variances, floors)):
        # first and total order only: second-order intervals (if any) do not count
        first_ci, total_ci = sobol.confidence_interval(level, method=method)[:2]
        parts.append(step_summary(first_ci, total_ci, variance, float(floor), step=t,
                                  cell_offset=cell_offset, field=field))
    return combine(parts)


def combine(parts: Iterable[ConvergenceSummary]) -> ConvergenceSummary:
    """Combine summaries of disjoint slices (ranks, steps): max width, summed counts.

    Ties on the width go to the lowest (field, step, cell, kind, param), so the
    result does not depend on the order of ``parts``.
    """
    parts = list(parts)
    counted = [p for p in parts if p.n_counted > 0]
    totals = dict(n_counted=sum(p.n_counted for p in parts),
                  n_negligible=sum(p.n_negligible for p in parts),
                  n_undefined=sum(p.n_undefined for p in parts))
    if not counted:
        return ConvergenceSummary(**totals)
    best = min(counted, key=lambda p: (-p.width, p.field, p.step, p.cell, p.kind, p.param))
    return ConvergenceSummary(width=best.width, kind=best.kind, param=best.param,
                              step=best.step, cell=best.cell, field=best.field,
                              **totals)


# -- the decision and its cadence --------------------------------------------------------

def decide(summary: ConvergenceSummary, groups_folded: int,
           rule: ConvergenceRule) -> Decision:
    """Stop drawing new groups?  Only from ``min_groups`` on, once ``width <= ci_width``."""
    width = summary.width
    if groups_folded < rule.min_groups:
        return Decision(False, width, f"{groups_folded} groups folded, fewer than "
                                      f"min_groups = {rule.min_groups}")
    if summary.n_counted == 0:
        return Decision(True, width, "no (cell, time step) has a non-negligible variance "
                                     "and a defined interval")
    if width <= rule.ci_width:
        return Decision(True, width, f"widest interval {width:.4g} <= ci_width "
                                     f"{rule.ci_width:g} ({summary.where()})")
    return Decision(False, width, f"widest interval {width:.4g} > ci_width "
                                  f"{rule.ci_width:g} ({summary.where()})")


def progress_text(width: float | None, rule: ConvergenceRule) -> str:
    """The convergence part of a progress line or of ``melissa-sa info``.

    ``width`` is the last checked (or final) widest interval, ``None`` before
    the first check: ``"CI width 0.0831 / target 0.05"`` or
    ``"CI width - / target 0.05 (from 200 groups)"``.
    """
    if width is None or not math.isfinite(width):
        return f"CI width - / target {rule.ci_width:g} (from {rule.min_groups} groups)"
    return f"CI width {width:.3g} / target {rule.ci_width:g}"


def stopping_text(attrs: Mapping) -> str | None:
    """The ``melissa-sa info`` line on how a study stopped, from results.h5 root attributes.

    ``None`` for a file written before these attributes existed. E.g.
    ``"  stopped by: convergence after 212 groups (CI width 0.0481 / target 0.05)"``.
    """
    if "stopped_by" not in attrs:
        return None
    stopped_by = attrs["stopped_by"]
    stopped_by = stopped_by.decode() if isinstance(stopped_by, bytes) else str(stopped_by)
    text = f"  stopped by: {stopped_by}"
    if "convergence_ci_width" in attrs:
        rule = ConvergenceRule(float(attrs["convergence_ci_width"]),
                               int(attrs["convergence_min_groups"]))
        at_stop = int(attrs.get("convergence_groups_at_stop", -1))
        if at_stop >= 0:
            text += f" after {at_stop} groups"
        text += f" ({progress_text(float(attrs['convergence_width_reached']), rule)})"
    return text


def next_check(groups_folded: int, rule: ConvergenceRule) -> int:
    """The group count at which the next check is due, after one at ``groups_folded``.

    The first check is at ``min_groups``; then geometric, every
    ``CHECK_GROWTH`` (5 %) more groups, at least one more.
    """
    if groups_folded < rule.min_groups:
        return rule.min_groups
    return max(groups_folded + 1, math.ceil(groups_folded * (1.0 + CHECK_GROWTH)))


class CheckSchedule:
    """When to check: by group count (:func:`next_check`) and by a time budget.

    A check is due once ``groups_folded >= next_groups`` *and* the time since
    the end of the previous check is at least ``CHECK_BUDGET`` (20) times that
    check's duration, so checking takes at most about 5 % of the server's wall
    time however large the mesh. Only rank 0 keeps one: it says when all ranks
    run the (collective) check. Times are ``time.monotonic()`` seconds.
    Nothing here needs checkpointing: after a restart,
    ``CheckSchedule(rule, groups_folded)`` checks at once if ``min_groups``
    is reached.
    """

    def __init__(self, rule: ConvergenceRule, groups_folded: int = 0):
        self.rule = rule
        self.next_groups = max(rule.min_groups, groups_folded)
        self.not_before = -math.inf

    def due(self, groups_folded: int, now: float) -> bool:
        """Is a check due with ``groups_folded`` complete groups at time ``now``?"""
        return groups_folded >= self.next_groups and now >= self.not_before

    def done(self, groups_folded: int, started: float, ended: float) -> None:
        """Record a check run at ``groups_folded`` groups from ``started`` to ``ended``."""
        self.next_groups = next_check(groups_folded, self.rule)
        self.not_before = ended + CHECK_BUDGET * max(0.0, ended - started)


# -- config ---------------------------------------------------------------------------

class ConvergenceConfigError(ValueError):
    """Invalid ``sa_config.convergence``; ``errors`` lists ``(key path, message)``."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = list(errors)
        super().__init__("\n".join(f"{path}: {message}" for path, message in self.errors))


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def parse_rule(value, *, sobol_indices: bool, parameter_sweep_size: int,
               path: str = "sa_config.convergence") -> ConvergenceRule | None:
    """Validate the parsed ``sa_config.convergence`` value; ``None`` means off.

    ``value`` is ``None`` (absent: off) or a mapping with ``ci_width`` (a
    number > 0, at most 2, required), ``min_groups`` (an integer, at least
    ``MIN_GROUPS_FLOOR`` = 200 and at most ``parameter_sweep_size``,
    required) and ``negligible_variance`` (a number in [0, 1), optional).
    Raises :class:`ConvergenceConfigError` (a ``ValueError``) listing every
    problem with its key path.
    """
    if value is None:
        return None
    errors: list[tuple[str, str]] = []
    if not isinstance(value, Mapping):
        raise ConvergenceConfigError([(path, "expected an object like "
                                       '{"ci_width": 0.05, "min_groups": 200}, '
                                       f"got {value!r}")])
    if not sobol_indices:
        errors.append((path, "needs sa_config.sobol_indices: true (the rule is on the "
                             "widths of the Sobol' intervals)"))
    for key in value:
        if key not in KEYS:
            errors.append((f"{path}.{key}", f"unknown key; known keys: {', '.join(KEYS)}"))
    width = value.get("ci_width")
    if "ci_width" not in value:
        errors.append((f"{path}.ci_width", "missing: the target interval width"))
    elif not _is_num(width) or not math.isfinite(width) or not 0 < width <= 2:
        errors.append((f"{path}.ci_width", "must be a number > 0 and <= 2 (an interval "
                                           f"of a Sobol' index), got {width!r}"))
    groups = value.get("min_groups")
    if "min_groups" not in value:
        errors.append((f"{path}.min_groups", "missing: the number of groups before the "
                                             "rule may stop the study"))
    elif not _is_int(groups):
        errors.append((f"{path}.min_groups", f"must be an integer, got {groups!r}"))
    elif groups < MIN_GROUPS_FLOOR:
        errors.append((f"{path}.min_groups", f"is {groups}, must be >= {MIN_GROUPS_FLOOR}: "
                                             "a study stopped earlier reports intervals "
                                             "that cover less than they say (see "
                                             "docs/statistics.md, Stopping when converged)"))
    elif groups > parameter_sweep_size:
        errors.append((f"{path}.min_groups", f"is {groups}, larger than "
                                             "study_options.parameter_sweep_size = "
                                             f"{parameter_sweep_size}"))
    negligible = value.get("negligible_variance", DEFAULT_NEGLIGIBLE_VARIANCE)
    if not _is_num(negligible) or not math.isfinite(negligible) or not 0 <= negligible < 1:
        errors.append((f"{path}.negligible_variance",
                       f"must be a number in [0, 1), got {negligible!r}"))
    if errors:
        raise ConvergenceConfigError(errors)
    return ConvergenceRule(float(width), int(groups), float(negligible))
