"""The typed events the study state is fed, and the instructions it answers.

Events carry the time (``now``, seconds on any monotonic clock) so that
:class:`~melissa_sa.server.study_state.StudyState` reads no clock. See that
module for the rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from melissa_sa import exit_codes
from melissa_sa.exit_codes import StopReason

__all__ = [
    "AbandonGroup",
    "Begin",
    "DataSeen",
    "DrawGroup",
    "EndStudy",
    "GroupFinished",
    "JobExited",
    "JobStarted",
    "KillRuns",
    "ReportProgress",
    "RunFolded",
    "RunReceived",
    "SubmitRuns",
    "Tick",
    "Converged",
    "ConvergenceChecked",
]


# -- events ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Begin:
    """The server is listening; ``resume``: it restarted from a checkpoint."""

    now: float
    resume: bool = False


@dataclass(frozen=True)
class Converged:
    """The convergence rule said stop: draw no new group; in-flight ones finish.

    ``groups_at_stop``: the finished-group count when the deciding check
    started; ``width`` and ``where``: the widest counted interval then.
    """

    now: float
    groups_at_stop: int
    width: float
    where: str = ""


@dataclass(frozen=True)
class ConvergenceChecked:
    """A convergence check ended without stopping the study: its widest counted
    interval and where (kept for the progress messages and the checkpoint)."""

    now: float
    width: float
    where: str = ""


@dataclass(frozen=True)
class JobStarted:
    """The launcher reports the run's job running."""

    sim_id: int
    now: float


@dataclass(frozen=True)
class DataSeen:
    """A data message of the run arrived (on rank 0)."""

    sim_id: int
    now: float


@dataclass(frozen=True)
class JobExited:
    """The run's job ended: ``state`` ``finished`` (``returncode`` 0 or None:
    unknown, taken as 0) or ``failed``."""

    sim_id: int
    returncode: int | None
    now: float
    state: str = "finished"

    @property
    def ok(self) -> bool:
        return self.state == "finished" and self.returncode in (0, None)


@dataclass(frozen=True)
class RunFolded:
    """Server rank ``rank`` folded every field and time step of the run (the
    run is folded once every rank has said so)."""

    sim_id: int
    now: float
    rank: int = 0


@dataclass(frozen=True)
class RunReceived:
    """Server rank ``rank`` received every field and time step of the run:
    folded, or buffered in the group assembler until a sibling sends the same
    step. Once every rank has said so the run has completed; only its group's
    folding waits (on a sibling)."""

    sim_id: int
    now: float
    rank: int = 0


@dataclass(frozen=True)
class Tick:
    """Time passes: check the grace periods and ``simulation_timeout``."""

    now: float


# -- instructions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DrawGroup:
    """Draw the parameters of a new group (``replaces``: the abandoned one)."""

    group_id: int
    replaces: int | None = None


@dataclass(frozen=True)
class SubmitRuns:
    """Write these runs' scripts and ask the launcher to start them."""

    group_id: int
    sim_ids: tuple[int, ...]


@dataclass(frozen=True)
class KillRuns:
    """Ask the launcher to stop these runs' jobs."""

    sim_ids: tuple[int, ...]


@dataclass(frozen=True)
class AbandonGroup:
    """Drop the group's buffered data on every rank; accept sim ids below ``sim_id_limit``."""

    group_id: int
    sim_id_limit: int


@dataclass(frozen=True)
class GroupFinished:
    """Every member of the group is folded on every rank."""

    group_id: int
    groups_done: int
    groups_total: int


@dataclass(frozen=True)
class ReportProgress:
    """Tell the launcher how far the study is (after a restart)."""

    groups_done: int
    groups_total: int


@dataclass(frozen=True)
class EndStudy:
    """End the study for ``reason`` (:attr:`StopReason.FINISHED`: write the
    results), with its exit ``status`` (a :mod:`melissa_sa.exit_codes` value) and
    a ``message`` saying why."""

    reason: StopReason
    status: int = exit_codes.OK
    message: str = ""
