"""The convergence check across server ranks: two asynchronous rounds, no gather of cells.

Rank 0's :class:`ConvergenceCheck` keeps the
:class:`~melissa_sa.convergence.CheckSchedule`. After a group finishes, if a
check is due, it broadcasts :class:`VarianceRequest`; every rank worker (rank
0's too) answers with :func:`variance_report`, its slice's
:func:`~melissa_sa.convergence.variance_totals` per field; once all are in,
rank 0 sums them, broadcasts the floors (:class:`SummaryRequest`), every
rank answers with :func:`summary_report`,
:func:`~melissa_sa.convergence.local_summary` combined over its fields, and
rank 0 combines those, calls
:func:`~melissa_sa.convergence.decide` with the group count at the start of
the check, and feeds the study state a
:class:`~melissa_sa.server.study_events.ConvergenceChecked` event saying
whether the rule says stop. Every message is a typed
rank message (:mod:`melissa_sa.server.ranks`) sent with ``isend`` and read
in the event loop: no rank ever blocks in a collective. A rank folds on while
a check runs, so its slice may hold more groups than the count the decision
uses: the rule then decides on at least that many groups.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from melissa_sa.convergence import (
    CheckSchedule,
    ConvergenceRule,
    combine,
    combine_variance_totals,
    decide,
    local_summary,
    variance_totals,
)
from melissa_sa.server import ranks
from melissa_sa.server.study_events import ConvergenceChecked
from melissa_sa.server.study_state import StudyState

log = logging.getLogger("melissa_sa.server")

__all__ = ["ConvergenceCheck", "summary_report", "variance_report"]


class ConvergenceCheck:
    """Rank 0's part of the convergence check (see the module docstring).

    ``study``: the study state it reads (groups done, converged); ``feed``:
    how it hands the study state its verdict; ``link``: the link to every
    rank worker.
    """

    def __init__(self, rule: ConvergenceRule, *, study: StudyState,
                 feed: Callable[[object], None], link: ranks.RankLink):
        self.rule = rule
        self.study = study
        self.feed = feed
        self.ranks = link
        self.schedule: CheckSchedule | None = None   # rank 0, made at the first chance
        self.check_id = 0
        self._active: dict | None = None             # rank 0: the check under way
        self.checks_run = 0

    def handlers(self) -> dict:
        return {ranks.VarianceReport: self.on_variance_report,
                ranks.SummaryReport: self.on_summary_report}

    def maybe_start(self) -> None:
        """After a group finished: start a check if one is due."""
        study = self.study
        if self._active is not None or study.converged is not None or study.all_done:
            return
        groups = study.groups_done
        if self.schedule is None:   # after a restart: checks at once from min_groups on
            self.schedule = CheckSchedule(self.rule, groups)
        now = time.monotonic()
        if not self.schedule.due(groups, now):
            return
        self.check_id += 1
        self._active = {"id": self.check_id, "groups": groups, "started": now,
                        "totals": {}, "summaries": {}}
        self.ranks.broadcast(ranks.VarianceRequest(self.check_id))

    def _collect(self, round_name: str, msg, answer) -> dict | None:
        """Keep rank ``msg.rank``'s ``answer`` to this round (``"totals"`` or
        ``"summaries"``) of the check under way; the check once every rank
        has answered, else None (an answer to an older check is dropped)."""
        active = self._active
        if active is None or msg.check_id != active["id"]:
            return None
        active[round_name][msg.rank] = answer
        return active if len(active[round_name]) == self.ranks.size else None

    def on_variance_report(self, msg: ranks.VarianceReport) -> None:
        active = self._collect("totals", msg, msg.totals)
        if active is None:
            return
        parts = list(active["totals"].values())
        floors = {name: tuple(float(f) for f in combine_variance_totals(
                      p[name] for p in parts).floors(self.rule.negligible_variance))
                  for name in sorted(parts[0])}
        self.ranks.broadcast(ranks.SummaryRequest(active["id"], floors))

    def on_summary_report(self, msg: ranks.SummaryReport) -> None:
        active = self._collect("summaries", msg, msg.summary)
        if active is None:
            return
        self._active = None
        summary = combine(active["summaries"].values())
        decision = decide(summary, active["groups"], self.rule)
        ended = time.monotonic()
        self.schedule.done(active["groups"], active["started"], ended)
        self.checks_run += 1
        log.info("convergence check at %d groups (%.3g s): %s%s", active["groups"],
                 ended - active["started"], decision.reason,
                 "; stop drawing groups" if decision.stop else "")
        self.feed(ConvergenceChecked(ended, active["groups"], decision.width, summary.where(),
                                     stop=decision.stop))


# -- every rank worker ----------------------------------------------------------------------
def variance_report(msg: ranks.VarianceRequest, slices: dict, rank: int) -> ranks.VarianceReport:
    """Round 1: the variance totals of this rank's slice of every field."""
    totals = {name: variance_totals(s.moments.variance for s in lf.steps)
              for name, lf in slices.items()}
    return ranks.VarianceReport(rank, msg.check_id, totals)


def summary_report(msg: ranks.SummaryRequest, slices: dict, rank: int,
                   sa_config) -> ranks.SummaryReport:
    """Round 2: this rank's summary of its slices under the floors of ``msg``."""
    parts = []
    for name, floors in msg.floors.items():
        lf = slices[name]
        parts.append(local_summary([s.sobol for s in lf.steps],
                                   [s.moments.variance for s in lf.steps], floors,
                                   sa_config.confidence_level, cell_offset=lf.lo, field=name,
                                   method=sa_config.confidence_method))
    return ranks.SummaryReport(rank, msg.check_id, combine(parts))
