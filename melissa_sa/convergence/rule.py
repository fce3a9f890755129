"""The stopping rule and its reduction over ranks: which cells count, the widest
interval of a slice, the exact combination of slices, and the decision (see the
package's docstring)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_NEGLIGIBLE_VARIANCE", "KINDS", "ConvergenceRule", "VarianceTotals",
           "ConvergenceSummary", "Decision", "variance_totals", "combine_variance_totals",
           "step_summary", "local_summary", "combine", "decide"]

#: Relative variance below which a cell does not count (see module docstring).
DEFAULT_NEGLIGIBLE_VARIANCE = 1e-6
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


# -- the decision ------------------------------------------------------------------

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
