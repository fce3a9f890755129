"""The typed events the study state is fed, and the instructions it answers.

Events carry the time (``now``, seconds on any monotonic clock) so that
:class:`~melissa_sa.server.study_state.StudyState` reads no clock. See that
module for the rules. One instruction is a message to the rank workers as it
is to be broadcast (:class:`~melissa_sa.server.ranks.Redraw`: a group was
abandoned), and a rank's report of its runs comes in as it was sent, with
the time it reached rank 0 (:class:`RunsReported`).
"""

from __future__ import annotations

from dataclasses import dataclass

from melissa_sa import exit_codes
from melissa_sa.exit_codes import StopReason
from melissa_sa.server.ranks import RunsReport

__all__ = [
    "Begin",
    "DrawGroup",
    "EndStudy",
    "GroupFinished",
    "JobExited",
    "KillRuns",
    "ReportProgress",
    "RunSeen",
    "RunsReported",
    "SubmitRuns",
    "Tick",
    "ConvergenceChecked",
]


# -- events ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Begin:
    """The server is listening; ``resume``: it restarted from a checkpoint."""

    now: float
    resume: bool = False


@dataclass(frozen=True)
class ConvergenceChecked:
    """A convergence check ended: ``groups``, the finished-group count when it
    started; ``width`` and ``where``, the widest counted interval (kept for the
    progress messages and the checkpoint); ``stop``, the rule said stop: draw
    no new group, the groups in flight finish."""

    now: float
    groups: int
    width: float
    where: str = ""
    stop: bool = False


@dataclass(frozen=True)
class RunSeen:
    """The run showed life at ``now``: the launcher reports its job running,
    or a data message of it reached rank 0."""

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
class RunsReported:
    """A server rank's :class:`~melissa_sa.server.ranks.RunsReport` reached rank 0
    at ``now``: the runs of which that rank received every field and time step
    (folded, or buffered in the group assembler until a sibling sends the same
    step) and those it folded completely. A run is received (it has completed;
    only its group's folding waits, on a sibling), or folded, once every rank
    has reported it so."""

    now: float
    report: RunsReport


@dataclass(frozen=True)
class Tick:
    """Time passes (fed when the server's loop finds nothing to do, and every
    ``tick_every`` s while data flows): a run that exited without completing
    fails once ``completion_grace`` has passed; a run silent for longer than
    ``simulation_timeout`` is killed and fails."""

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
class GroupFinished:
    """Every member of the group is folded on every rank: its scripts may go,
    the server's hook runs, a convergence check may be due."""

    group_id: int


@dataclass(frozen=True)
class ReportProgress:
    """Tell the launcher how far the study is; ``group_id``: the group whose
    finish this reports (None: after a restart or a convergence stop)."""

    groups_done: int
    groups_total: int
    group_id: int | None = None


@dataclass(frozen=True)
class EndStudy:
    """End the study for ``reason`` (:attr:`StopReason.FINISHED`: write the
    results), with its exit ``status`` (a :mod:`melissa_sa.exit_codes` value) and
    a ``message`` saying why."""

    reason: StopReason
    status: int = exit_codes.OK
    message: str = ""
