"""When to check: every 5 % more groups, within a time budget (see the package's
docstring, "Cadence")."""

from __future__ import annotations

import math

from melissa_sa.convergence.rule import ConvergenceRule

__all__ = ["CHECK_GROWTH", "CHECK_BUDGET", "next_check", "CheckSchedule"]

#: A check happens each time the number of folded groups grew by this fraction.
CHECK_GROWTH = 0.05
#: ... and not before this many times the last check's duration has passed.
CHECK_BUDGET = 20.0


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
