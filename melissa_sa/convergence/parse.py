"""``sa_config.convergence`` in the study file -> a :class:`ConvergenceRule` (or
off), every problem listed with its key path."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from melissa_sa.convergence.rule import DEFAULT_NEGLIGIBLE_VARIANCE, ConvergenceRule

__all__ = ["MIN_GROUPS_FLOOR", "KEYS", "ConvergenceConfigError", "parse_rule"]

#: The smallest ``min_groups`` a config may ask for: stopped earlier, the final
#: intervals cover less than nominal - 2 points (measured on Ishigami: 91.8 %
#: at nominal 95 % with min_groups = 20, at least 93.2 % from 200 on; see
#: ``docs/statistics.md``, "Stopping when converged").
MIN_GROUPS_FLOOR = 200
#: The keys of ``sa_config.convergence``.
KEYS = ("ci_width", "min_groups", "negligible_variance")


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
