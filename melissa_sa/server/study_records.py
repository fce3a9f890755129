"""The plain records :class:`~melissa_sa.server.study_state.StudyState` keeps.

:class:`StudyLimits` holds the numbers of the study's rules (the window of
groups in flight, crash and failure limits, timeouts; the rules themselves
are in :mod:`~melissa_sa.server.study_state`), :class:`GroupRecord` one
group's runs and how they fared.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["GroupRecord", "StudyLimits"]


@dataclass(frozen=True)
class StudyLimits:
    """The rules' numbers (see :mod:`.study_state`); from the config by :meth:`from_config`."""

    n_groups: int
    window: int = 2
    crashes_before_redraw: int = 3
    simulation_timeout: float = 60.0
    completion_grace: float = 10.0
    fault_tolerance: bool = True
    max_consecutive_failures: int = 20
    max_redrawn_groups: int = 5
    offline: bool = False

    @classmethod
    def from_config(cls, config, *, window: int, fault_tolerance: bool, offline: bool,
                    completion_grace: float = 10.0) -> StudyLimits:
        so = config.study_options
        return cls(n_groups=config.n_groups, window=window,
                   crashes_before_redraw=so.crashes_before_redraw,
                   simulation_timeout=float(so.simulation_timeout),
                   completion_grace=completion_grace, fault_tolerance=fault_tolerance,
                   max_consecutive_failures=so.max_consecutive_failures,
                   max_redrawn_groups=so.effective_max_redrawn_groups,
                   offline=offline)


@dataclass
class GroupRecord:
    """One group's runs: ids, crash counts per member, members done."""

    group_id: int
    sim_ids: list[int]
    crashes: Counter = field(default_factory=Counter)
    members_done: set = field(default_factory=set)
    submitted_at: float = 0.0
    redraws: int = 0             # how many redraws led to this group
    replaces: int | None = None  # the abandoned group this one replaces
    abandoned: bool = False      # crashed too often; replaced by a redraw

    @property
    def finished(self) -> bool:
        return len(self.members_done) == len(self.sim_ids)

    def to_dict(self) -> dict:
        """JSON-able record (a checkpoint's; ``members_done`` and
        ``submitted_at`` are not kept: they follow from the runs done)."""
        return {"group_id": self.group_id, "sim_ids": self.sim_ids,
                "crashes": {str(k): v for k, v in self.crashes.items()},
                "redraws": self.redraws, "replaces": self.replaces, "abandoned": self.abandoned}

    @classmethod
    def from_dict(cls, saved: dict) -> GroupRecord:
        """:meth:`to_dict`'s output back (``members_done`` empty)."""
        return cls(int(saved["group_id"]), [int(s) for s in saved["sim_ids"]],
                   Counter({int(k): v for k, v in saved["crashes"].items()}),
                   redraws=int(saved["redraws"]), replaces=saved["replaces"],
                   abandoned=bool(saved["abandoned"]))
