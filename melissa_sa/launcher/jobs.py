"""The launcher's job table: a pure state object fed events, answering with
instructions. No sockets, no processes, no clock: tested on its own.

Events (methods) and what they answer:

* :meth:`JobTable.submit` (the server's ``submit``): queue the runs; a run
  submitted again supersedes its queued or running predecessor, whose job is
  to be cancelled (:class:`CancelJob`) and is never reported.
* :meth:`JobTable.kill` (the server's ``kill``): drop the queued runs, cancel
  the running ones; none of them is reported.
* :meth:`JobTable.next_starts` (a free slot): the jobs to start now
  (each a :class:`Job`), a group's queued members together (below).
* :meth:`JobTable.started` / :meth:`JobTable.start_failed` (the scheduler's
  answer) and :meth:`JobTable.ended` (the scheduler's ``poll``): the
  :class:`~melissa_sa.messages.JobState` reports to send to the server.
* :meth:`JobTable.stop_all` (the server failed, the study ends): forget the
  queue; every job still running is to be cancelled and never reported.

Groups start together. When ``job_limit`` allows it, the queued members of a
group are started in the same turn, never some of them with the rest queued
behind another group's members: the server buffers a group's early members'
rows until the last member sends the same step, so members that run together
keep that buffer a few steps deep. Precisely, groups are taken in the order
they were submitted; the head group's queued members start together when
they fit in the free slots; when they do not fit yet, they wait (slots may
stay idle) and only later groups that fit whole may use the free slots; a
group with more queued members than ``job_limit`` can never start whole, so
its members start as slots free, before any later group's (and so do the
rest of its members once it started in part).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Hashable
from dataclasses import dataclass

from melissa_sa.messages import JobState

__all__ = ["Job", "CancelJob", "JobTable", "JOB_STATES"]

#: the states of :class:`~melissa_sa.messages.JobState` the launcher sends
JOB_STATES = ("running", "finished", "failed")
#: the return code reported for a job that could not be started (as a shell's)
START_FAILED_CODE = 127


@dataclass(frozen=True, slots=True)
class Job:
    """One attempt to run simulation ``sim_id``; ``key`` is the scheduler's job id."""

    key: int
    sim_id: int
    group_id: int | None
    script: str
    log_path: str


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Instruction: cancel the scheduler's job ``key`` (simulation ``sim_id``)."""

    key: int
    sim_id: int


@dataclass(frozen=True, slots=True)
class _Queued:
    sim_id: int
    group_id: int | None
    script: str


class JobTable:
    """The queue and the running jobs of one launcher (see the module docstring).

    ``log_path_of(sim_id)`` names each job's log file. ``stats`` (a
    Counter, shared with the launcher if given) counts ``submitted``,
    ``started``, ``finished``, ``failed``, ``killed`` and ``superseded``.
    """

    def __init__(self, log_path_of=lambda sim_id: f"client.{sim_id}.log",
                 stats: collections.Counter | None = None) -> None:
        self._log_path_of = log_path_of
        self.stats = stats if stats is not None else collections.Counter()
        # group key -> queued runs, in submission order of the groups
        self._queue: dict[Hashable, list[_Queued]] = {}
        self._jobs: dict[int, Job] = {}     # every job started and not ended yet
        self._reported: dict[int, int] = {}  # sim_id -> key of its live, reported job
        self._keys = itertools.count()
        self._partial: Hashable | None = None  # the group started in part, if any
        #: the last job that failed, with its return code (for the user's error)
        self.last_failure: tuple[Job, int | None] | None = None

    # -- what is there ---------------------------------------------------------------
    @property
    def queued(self) -> int:
        return sum(len(runs) for runs in self._queue.values())

    @property
    def running(self) -> int:
        """Jobs started and not ended yet (cancelled ones included)."""
        return len(self._jobs)

    def job(self, key) -> Job | None:
        return self._jobs.get(key)

    def queued_sims(self) -> list[int]:
        return [run.sim_id for runs in self._queue.values() for run in runs]

    # -- events from the server ---------------------------------------------------
    def submit(self, group_id: int | None, sim_ids: list[int],
               scripts: list[str]) -> list[CancelJob]:
        """Queue ``sim_ids`` of ``group_id``; cancel what they supersede."""
        if len(sim_ids) != len(scripts):
            raise ValueError(f"{len(sim_ids)} sim_ids but {len(scripts)} scripts")
        cancels = []
        for sim_id, script in zip(sim_ids, scripts):
            dropped = self._drop_queued({sim_id})
            cancel = self._silence(sim_id)
            if cancel is not None:
                cancels.append(cancel)
            if dropped or cancel is not None:
                self.stats["superseded"] += 1
            group = group_id if group_id is not None else ("sim", sim_id)
            self._queue.setdefault(group, []).append(_Queued(sim_id, group_id, script))
        self.stats["submitted"] += len(sim_ids)
        return cancels

    def kill(self, sim_ids) -> tuple[list[CancelJob], list[int]]:
        """Drop the queued runs of ``sim_ids`` and cancel the running ones:
        ``(cancels, sim ids dropped from the queue)``; none is reported."""
        sims = set(sim_ids)
        dropped = self._drop_queued(sims)
        cancels = [c for c in map(self._silence, sorted(sims)) if c is not None]
        self.stats["killed"] += len(cancels)
        return cancels, dropped

    # -- events from the launcher and the scheduler ------------------------------
    def next_starts(self, free: int, limit: int) -> list[Job]:
        """The jobs to start with the scheduler now, with ``free`` slots of
        ``limit`` (``job_limit``)."""
        starts: list[Job] = []
        blocked = False  # an earlier group waits for slots
        for group, runs in list(self._queue.items()):
            if free <= 0:
                break
            if len(runs) <= free:
                take = len(runs)
            elif (len(runs) > limit or group == self._partial) and not blocked:
                take = free  # it cannot start whole: member by member, first
            else:
                blocked = True
                continue
            starts += [self._new_job(run) for run in runs[:take]]
            free -= take
            del runs[:take]
            if runs:
                self._partial = group
                break  # a big group started in part: no group overtakes it
            del self._queue[group]
            self._partial = None
        return starts

    def started(self, key: int) -> list[JobState]:
        """The scheduler started job ``key``: report it running."""
        job = self._jobs[key]
        self.stats["started"] += 1
        return [JobState(sim_id=job.sim_id, group_id=job.group_id, state="running")]

    def start_failed(self, key: int) -> list[JobState]:
        """The scheduler could not start job ``key``: report it failed (127)."""
        job = self._jobs.pop(key)
        if self._reported.get(job.sim_id) == key:
            del self._reported[job.sim_id]
        self.stats["failed"] += 1
        self.last_failure = (job, START_FAILED_CODE)
        return [JobState(sim_id=job.sim_id, group_id=job.group_id, state="failed",
                         returncode=START_FAILED_CODE)]

    def ended(self, key, state: str, returncode: int | None) -> list[JobState]:
        """The scheduler says job ``key`` ended in ``state`` (``finished``,
        ``failed`` or ``cancelled``): the report, unless nobody wants it (a
        cancelled, killed, superseded or unknown job)."""
        job = self._jobs.pop(key, None)
        if job is None:
            return []
        wanted = self._reported.get(job.sim_id) == key
        if wanted:
            del self._reported[job.sim_id]
        if not wanted or state == "cancelled":
            return []
        if state not in ("finished", "failed"):
            raise ValueError(f"unknown job state {state!r} (finished, failed, cancelled)")
        self.stats[state] += 1
        if state == "failed":
            self.last_failure = (job, returncode)
        return [JobState(sim_id=job.sim_id, group_id=job.group_id, state=state,
                         returncode=returncode)]

    def start_later(self, key: int) -> None:
        """The scheduler could not start job ``key`` for now (no room for its
        log): it goes back to the front of its group's queue (before the runs
        submitted after it, so several put back keep their order), unreported."""
        job = self._jobs.pop(key)
        if self._reported.get(job.sim_id) == key:
            del self._reported[job.sim_id]
        group = job.group_id if job.group_id is not None else ("sim", job.sim_id)
        run = _Queued(job.sim_id, job.group_id, job.script)
        if group in self._queue:
            runs = self._queue[group]
            at = next((i for i, r in enumerate(runs) if r.sim_id > run.sim_id), len(runs))
            runs.insert(at, run)
        else:
            self._queue = {group: [run], **self._queue}
        if job.group_id is not None and any(j.group_id == job.group_id
                                            for j in self._jobs.values()):
            self._partial = group  # members of it run: it goes on member by member

    def reported(self, key) -> bool:
        """True if job ``key``'s end will be reported to the server."""
        job = self._jobs.get(key)
        return job is not None and self._reported.get(job.sim_id) == key

    def stop_all(self) -> list[CancelJob]:
        """Forget the queue; every running job is to be cancelled, unreported."""
        self._queue.clear()
        self._partial = None
        self._reported.clear()
        return [CancelJob(key, job.sim_id) for key, job in self._jobs.items()]

    def clear(self) -> None:
        """Every job is gone (the scheduler waited for all of them)."""
        self.stop_all()
        self._jobs.clear()

    # -- internals ---------------------------------------------------------------
    def _new_job(self, run: _Queued) -> Job:
        key = next(self._keys)
        job = Job(key, run.sim_id, run.group_id, run.script, self._log_path_of(run.sim_id))
        self._jobs[key] = job
        self._reported[run.sim_id] = key
        return job

    def _drop_queued(self, sims: set[int]) -> list[int]:
        dropped = []
        for group, runs in list(self._queue.items()):
            keep = [r for r in runs if r.sim_id not in sims]
            dropped += [r.sim_id for r in runs if r.sim_id in sims]
            if not keep:
                del self._queue[group]
                if group == self._partial:
                    self._partial = None
            elif len(keep) != len(runs):
                self._queue[group] = keep
        return dropped

    def _silence(self, sim_id: int) -> CancelJob | None:
        """Stop reporting ``sim_id``'s live job; the instruction to cancel it."""
        key = self._reported.pop(sim_id, None)
        return CancelJob(key, sim_id) if key is not None else None
