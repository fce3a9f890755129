"""The study's state as a pure object: groups, runs, crashes, redraws, completion.

:class:`StudyState` is fed the typed events of
:mod:`~melissa_sa.server.study_events` and answers each with a list of its
typed instructions (and the rank message :class:`~melissa_sa.server.ranks.Redraw`
as it is to be broadcast), which rank 0's coordinator carries out. It knows no
socket, no MPI and no clock: the time comes in the events (``now``, seconds
on any monotonic clock), so it is tested without a server
(``tests/test_study_state.py``), like Dask's ``worker_state_machine``.

Rules:

* at most ``window`` groups are in flight (submitted, not finished, not
  abandoned); a finished group makes room for the next one;
* a run fails when its job exits non-zero, when it exits 0 without all its
  data received within ``completion_grace`` s, or when nothing of it was seen
  for ``simulation_timeout`` s (its job is then killed);
* each server rank reports the runs it received and folded completely
  (:class:`RunsReported`); a run counts once all ``n_ranks`` said so;
* a run whose every time step was received on every rank (folded, or
  buffered until a sibling of its group sends the same step) has
  completed: its exit, whatever its code, and its silence are no failure (a
  hanging sibling must not make the members that sent everything run again);
  it counts as done once its group's steps are folded on every rank;
* a failed run is resubmitted, until one member of a group failed
  ``crashes_before_redraw`` times: the group is then abandoned and its
  parameters redrawn as a new group;
* the study stops with :data:`~melissa_sa.exit_codes.FAILED` when fault
  tolerance is off and a run fails, after ``max_consecutive_failures`` failed
  runs in a row with no completed run in between, or once more than
  ``max_redrawn_groups`` groups were redrawn;
* it finishes when ``n_groups`` groups are finished, or, once the
  convergence rule said stop (a :class:`ConvergenceChecked` with ``stop``:
  no new group is drawn, the groups in flight and their redraws still
  finish), when every submitted, non-abandoned group is finished.
"""

from __future__ import annotations

import logging
import typing

from melissa_sa import exit_codes
from melissa_sa.design import GroupLayout
from melissa_sa.exit_codes import StopReason
from melissa_sa.server.ranks import Redraw
from melissa_sa.server.study_events import (
    Begin,
    ConvergenceChecked,
    DrawGroup,
    EndStudy,
    GroupFinished,
    JobExited,
    KillRuns,
    ReportProgress,
    RunSeen,
    RunsReported,
    SubmitRuns,
    Tick,
)
from melissa_sa.server.study_records import GroupRecord, StudyLimits

log = logging.getLogger("melissa_sa.server")

__all__ = ["StudyState"]


# -- state ----------------------------------------------------------------------------------
class StudyState:
    """The study's bookkeeping on rank 0; see the module docstring.

    ``managed=False`` (no launcher): runs are not submitted, any sim id below
    the design's size may stream, and groups appear as their runs complete.
    ``n_ranks``: the server ranks that each report a run received and folded.
    ``convergence_rule``: the rule (``ConvergenceRule.to_dict()``) the study
    runs under, or None. Nothing outside changes the state but :meth:`handle`
    (and :meth:`load_dict`, the restart).
    """

    def __init__(self, layout: GroupLayout, limits: StudyLimits, *, managed: bool = True,
                 n_ranks: int = 1, convergence_rule: dict | None = None):
        self.layout = layout
        self.limits = limits
        self.managed = managed
        self.n_ranks = n_ranks
        self.groups: dict[int, GroupRecord] = {}
        self.finished_groups: set[int] = set()
        self.sims_done: set[int] = set()
        self.n_submitted_groups = 0
        self.next_group_id = limits.n_groups
        self.n_sims_completed = 0
        self.consecutive_failures = 0
        self.redrawn_groups = 0
        #: mean seconds from a run's submission to its completion
        self.mean_run_seconds = 0.0
        self.stopped: EndStudy | None = None
        #: set by the check that stopped: ``{"groups_at_stop", "width", "where"}``
        self.converged: dict | None = None
        #: the convergence rule (``ConvergenceRule.to_dict()``) the study runs under
        self.convergence_rule = convergence_rule
        #: the last check's widest interval and where (None before any check)
        self.last_width: float | None = None
        self.last_where: str = ""
        self._last_seen: dict[int, float] = {}
        self._exited_at: dict[int, float] = {}
        self._active: set[int] = set()
        self._received: set[int] = set()  # active runs whose every step was received
        # run -> the ranks that reported it folded / received (until every rank has)
        self._folded_on: dict[int, set[int]] = {}
        self._received_on: dict[int, set[int]] = {}

    # -- read-only views ----------------------------------------------------------------
    @property
    def sim_id_limit(self) -> int:
        """Simulation ids ``0 .. limit - 1`` may stream (grows with redraws)."""
        return self.next_group_id * self.layout.size

    @property
    def active_sim_ids(self) -> frozenset[int]:
        """Runs submitted and neither completed nor given up."""
        return frozenset(self._active)

    @property
    def groups_done(self) -> int:
        return len(self.finished_groups)

    @property
    def groups_total(self) -> int:
        """Groups the study will finish: the sweep, or those submitted once converged."""
        return self.n_submitted_groups if self.converged is not None else self.limits.n_groups

    @property
    def all_done(self) -> bool:
        if self.converged is not None and self.managed:
            return self._in_flight() == 0
        return len(self.finished_groups) >= self.limits.n_groups

    @property
    def stopped_by(self) -> str:
        """``"convergence"`` once the rule stopped the draws, else ``"sweep_size"``."""
        return "convergence" if self.converged is not None else "sweep_size"

    def is_abandoned(self, group_id: int) -> bool:
        g = self.groups.get(group_id)
        return g is not None and g.abandoned

    def group_ids(self) -> list[int]:
        """Every group drawn so far (abandoned ones too), in order."""
        return sorted(self.groups)

    def group_sim_ids(self, group_id: int) -> tuple[int, ...]:
        """The runs of group ``group_id`` (KeyError if it was never drawn)."""
        return tuple(self.groups[group_id].sim_ids)

    def is_redrawn(self, group_id: int) -> bool:
        """Whether the group's parameters replace an abandoned group's."""
        return self.groups[group_id].redraws > 0

    def submission(self, sim_id: int) -> int:
        """How many times the run failed before: its next job's submission number."""
        group_id, member = self.layout.split(sim_id)
        return self.groups[group_id].crashes[member]

    # -- events -------------------------------------------------------------------------
    def handle(self, event) -> list:
        """Apply one event; return the instructions to carry out, in order."""
        handler = self._HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"StudyState cannot handle {type(event).__name__}")
        if self.stopped is not None:
            return []
        return handler(self, event)

    def _on_begin(self, ev: Begin) -> list:
        out: list = []
        if self.all_done:  # restarted after the last run, before the results
            return [EndStudy(StopReason.FINISHED)]
        if not self.managed:
            return out
        if ev.resume:
            for group in sorted(self.groups.values(), key=lambda g: g.group_id):
                if group.abandoned or group.group_id in self.finished_groups:
                    continue
                todo = [s for s in group.sim_ids if s not in self.sims_done]
                if todo:
                    log.info("resubmitting group %d: simulations %s", group.group_id, todo)
                    out += self._submit(group, todo, ev.now)
            out.append(ReportProgress(self.groups_done, self.groups_total))
        return out + self._fill_window(ev.now)

    def _on_run_seen(self, ev: RunSeen) -> list:
        # the silence of a received run is no failure; one that exited is
        # watched by its grace period (Tick), which also forgets when it was seen
        if ev.sim_id in self._active and ev.sim_id not in self._received:
            self._last_seen[ev.sim_id] = ev.now
        return []

    def _on_runs_reported(self, ev: RunsReported) -> list:
        rank = ev.report.rank
        for sim_id in ev.report.received:
            if self._on_every_rank(self._received_on, sim_id, rank) and sim_id in self._active:
                self._received.add(sim_id)
                self._last_seen.pop(sim_id, None)
                self._exited_at.pop(sim_id, None)
        out: list = []
        for sim_id in ev.report.folded:
            if self._on_every_rank(self._folded_on, sim_id, rank):
                out += self._run_done(sim_id, ev.now)
        return out

    def _on_every_rank(self, reports: dict[int, set[int]], sim_id: int, rank: int) -> bool:
        """Count ``rank``'s report of ``sim_id``; True once every rank has reported it."""
        if sim_id in self.sims_done:
            return False
        reports.setdefault(sim_id, set()).add(rank)
        return len(reports[sim_id]) >= self.n_ranks

    def _on_job_exited(self, ev: JobExited) -> list:
        if ev.sim_id in self._received:
            if not ev.ok:
                log.info("simulation %d %s after sending every time step: nothing to redo",
                         ev.sim_id, ev.state)
            return []
        if ev.ok:
            if self.limits.offline:  # nothing is streamed: the exit is the completion
                return [] if ev.sim_id in self.sims_done else self._run_done(ev.sim_id, ev.now)
            if ev.sim_id in self._active:
                self._exited_at[ev.sim_id] = ev.now
            return []
        why = (f"exited with code {ev.returncode}" if ev.returncode not in (0, None)
               else f"{ev.state} (exit code {ev.returncode})")
        return self._failure(ev.sim_id, why, ev.now)

    def _run_done(self, sim_id: int, now: float) -> list:
        self._folded_on.pop(sim_id, None)
        self._received_on.pop(sim_id, None)
        self.sims_done.add(sim_id)
        self._forget(sim_id)
        self.n_sims_completed += 1
        self.consecutive_failures = 0
        group_id, member = self.layout.split(sim_id)
        group = self.groups.get(group_id)
        if group is None:
            if self.managed:
                return []  # a run of no known group (cannot happen with a launcher)
            group = self.groups[group_id] = GroupRecord(group_id, self._sim_ids(group_id),
                                                        submitted_at=now)
        elapsed = now - group.submitted_at
        self.mean_run_seconds += (elapsed - self.mean_run_seconds) / self.n_sims_completed
        group.members_done.add(member)
        out: list = []
        if group.finished and group_id not in self.finished_groups and not group.abandoned:
            self.finished_groups.add(group_id)
            out += [ReportProgress(self.groups_done, self.groups_total, group_id),
                    GroupFinished(group_id)]
            out += self._fill_window(now)
        if self.all_done:
            out.append(EndStudy(StopReason.FINISHED))
        return out

    def _on_tick(self, ev: Tick) -> list:
        out: list = []
        for sim_id, at in list(self._exited_at.items()):
            if ev.now - at > self.limits.completion_grace and sim_id in self._exited_at:
                out += self._failure(sim_id, "exited before sending all its time steps",
                                     ev.now)
        for sim_id, seen in list(self._last_seen.items()):
            if sim_id in self._exited_at or sim_id not in self._last_seen:
                continue
            if ev.now - seen > self.limits.simulation_timeout:
                out.append(KillRuns((sim_id,)))
                out += self._failure(
                    sim_id, f"was silent for more than {self.limits.simulation_timeout:g} s "
                            "(simulation_timeout)", ev.now)
        return out

    def _on_convergence_checked(self, ev: ConvergenceChecked) -> list:
        self.last_width, self.last_where = float(ev.width), ev.where
        if not ev.stop or self.converged is not None:
            return []
        if not self.managed:  # runs are not ours to stop drawing
            log.info("convergence reached (width %.4g at %s) but the server does not draw "
                     "the runs (no launcher): the study goes on", ev.width, ev.where)
            return []
        self.converged = {"groups_at_stop": int(ev.groups), "width": float(ev.width),
                          "where": ev.where}
        log.info("converged after %d groups: no new group is drawn; %d in flight finish",
                 ev.groups, self._in_flight())
        out: list = [ReportProgress(self.groups_done, self.groups_total)]
        if self.all_done:
            out.append(EndStudy(StopReason.FINISHED))
        return out

    _HANDLERS: typing.ClassVar[dict] = {
        Begin: _on_begin, RunSeen: _on_run_seen, JobExited: _on_job_exited,
        RunsReported: _on_runs_reported, Tick: _on_tick,
        ConvergenceChecked: _on_convergence_checked}

    # -- rules --------------------------------------------------------------------------
    def _in_flight(self) -> int:
        return sum(1 for g in self.groups.values()
                   if g.group_id not in self.finished_groups and not g.abandoned)

    def _fill_window(self, now: float) -> list:
        out: list = []
        if not self.managed:
            return out
        in_flight = self._in_flight()
        while (self.converged is None and self.n_submitted_groups < self.limits.n_groups
               and in_flight < self.limits.window):
            gid = self.n_submitted_groups
            group = self.groups[gid] = GroupRecord(gid, self._sim_ids(gid))
            out.append(DrawGroup(gid))
            out += self._submit(group, group.sim_ids, now)
            self.n_submitted_groups += 1
            in_flight += 1
        return out

    def _sim_ids(self, group_id: int) -> list[int]:
        return [self.layout.sim_id(group_id, m) for m in range(self.layout.size)]

    def _submit(self, group: GroupRecord, sim_ids, now: float) -> list:
        group.submitted_at = now
        for s in sim_ids:
            self._forget(s)
            self._active.add(s)
        return [SubmitRuns(group.group_id, tuple(sim_ids))]

    def _forget(self, sim_id: int) -> None:
        self._active.discard(sim_id)
        self._received.discard(sim_id)
        self._last_seen.pop(sim_id, None)
        self._exited_at.pop(sim_id, None)

    def _stop(self, reason: str) -> list:
        log.error("%s", reason)
        self.stopped = EndStudy(StopReason.FAILED, exit_codes.FAILED, reason)
        return [self.stopped]

    def _failure(self, sim_id: int, why: str, now: float) -> list:
        group_id, member = self.layout.split(sim_id)
        group = self.groups.get(group_id)
        if group is None or group.abandoned or sim_id in self.sims_done:
            return []
        self._forget(sim_id)
        group.crashes[member] += 1
        self.consecutive_failures += 1
        lim = self.limits
        if not lim.fault_tolerance:
            return self._stop(f"simulation {sim_id} {why} and fault tolerance is off")
        if self.consecutive_failures >= lim.max_consecutive_failures:
            return self._stop(
                f"{self.consecutive_failures} runs failed in a row with no run completing "
                f"(study_options.max_consecutive_failures = {lim.max_consecutive_failures}); "
                f"the last: simulation {sim_id} {why}. Check the client command and its "
                f"log")
        if group.crashes[member] < lim.crashes_before_redraw:
            log.warning("simulation %d %s; restarting it (%d/%d)", sim_id, why,
                        group.crashes[member], lim.crashes_before_redraw)
            return self._submit(group, [sim_id], now)
        return self._redraw(group, f"simulation {sim_id} failed {group.crashes[member]} "
                                   f"times (crashes_before_redraw); last: {why}", now)

    def _redraw(self, group: GroupRecord, why: str, now: float) -> list:
        group.abandoned = True
        self.redrawn_groups += 1
        alive = tuple(s for s in group.sim_ids if s not in self.sims_done)
        for s in group.sim_ids:
            self._forget(s)
        out: list = [KillRuns(alive)] if alive else []
        if self.redrawn_groups > self.limits.max_redrawn_groups:
            return out + self._stop(
                f"{self.redrawn_groups} groups were redrawn, more than "
                f"study_options.max_redrawn_groups = {self.limits.max_redrawn_groups}; "
                f"the last because {why}")
        new_id = self.next_group_id
        self.next_group_id += 1
        new = self.groups[new_id] = GroupRecord(new_id, self._sim_ids(new_id),
                                                redraws=group.redraws + 1,
                                                replaces=group.group_id)
        log.warning("%s; group %d abandoned, its parameters redrawn as group %d "
                    "(time steps it completed stay folded in)", why, group.group_id, new_id)
        out += [Redraw(group.group_id), DrawGroup(new_id, replaces=group.group_id)]
        return out + self._submit(new, new.sim_ids, now)

    # -- checkpoint ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able state (the ``completion`` of a checkpoint, without parameters)."""
        return {
            "finished_groups": sorted(self.finished_groups),
            "nb_submitted_groups": self.n_submitted_groups,
            "next_group_id": self.next_group_id,
            "sims_done": sorted(self.sims_done),
            "n_sims_completed": self.n_sims_completed,
            "consecutive_failures": self.consecutive_failures,
            "redrawn_groups": self.redrawn_groups,
            "mean_run_seconds": self.mean_run_seconds,
            "groups": [g.to_dict() for g in self.groups.values()],
            "convergence": {"stopped": self.converged is not None,
                            **(self.converged or {}),
                            "last_width": self.last_width, "last_where": self.last_where,
                            "rule": self.convergence_rule},
        }

    def load_dict(self, state: dict) -> str | None:
        """Restore :meth:`to_dict`'s output (older checkpoints lack the newer keys).

        The saved stop is kept only under the same convergence rule: when the
        rule this state was built with differs from the saved one, the stop
        and the last check are cleared and the message to log is returned
        (else None).
        """
        self.finished_groups = set(state["finished_groups"])
        self.n_submitted_groups = int(state["nb_submitted_groups"])
        self.next_group_id = int(state["next_group_id"])
        self.sims_done = set(state["sims_done"])
        self.n_sims_completed = int(state["n_sims_completed"])
        self.consecutive_failures = int(state.get("consecutive_failures", 0))
        self.redrawn_groups = int(state.get("redrawn_groups",
                                            sum(bool(g["abandoned"]) for g in state["groups"])))
        self.mean_run_seconds = float(state.get("mean_run_seconds", 0.0))
        conv = state.get("convergence") or {}
        self.converged = ({"groups_at_stop": int(conv["groups_at_stop"]),
                           "width": float(conv["width"]), "where": str(conv.get("where", ""))}
                          if conv.get("stopped") else None)
        width = conv.get("last_width")
        self.last_width = None if width is None else float(width)
        self.last_where = str(conv.get("last_where", ""))
        self.groups = {}
        for saved in state["groups"]:
            group = GroupRecord.from_dict(saved)
            group.members_done = {self.layout.member_of(s) for s in group.sim_ids
                                  if s in self.sims_done}
            self.groups[group.group_id] = group
        return self._keep_the_stop_under(conv.get("rule"))

    def _keep_the_stop_under(self, saved: dict | None) -> str | None:
        rule = self.convergence_rule
        if saved == rule:
            return None
        was = self.converged is not None
        self.converged = None
        self.last_width, self.last_where = None, ""
        return (f"sa_config.convergence changed since the checkpoint ({saved} -> {rule})"
                + ("; the saved stop is cleared: the study draws groups again" if was else ""))
