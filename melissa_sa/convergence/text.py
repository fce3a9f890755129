"""The convergence part of the progress line and of ``melissa-sa info``."""

from __future__ import annotations

import math
from collections.abc import Mapping

from melissa_sa.convergence.rule import ConvergenceRule

__all__ = ["progress_text", "stopping_text"]


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
