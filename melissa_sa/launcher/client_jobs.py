"""The client jobs of a launcher's run carried out: start them, reap them, stop them.

:class:`ClientJobs` moves the jobs the server submitted through the scheduler:
it queues the server's ``submit`` and ``kill`` (:meth:`~ClientJobs.submit`,
:meth:`~ClientJobs.kill`), starts queued jobs within
``launcher_config.job_limit`` (:meth:`~ClientJobs.start_queued`), reaps the
ended ones (:meth:`~ClientJobs.reap`), sends the server the job table's
reports (``JobState``), stops every client at the end
(:meth:`~ClientJobs.stop_all`) and tells the last failure
(:meth:`~ClientJobs.failure_tail`). The decisions are the job table's
(:mod:`~melissa_sa.launcher.jobs`, a pure state object).
"""

from __future__ import annotations

import errno
import os
import time

from melissa_sa import messages as msgs
from melissa_sa.launcher.jobs import JobTable
from melissa_sa.launcher.processes import describe_exit, tail_lines
from melissa_sa.launcher.schedulers import Scheduler
from melissa_sa.launcher.server_process import path_with_venv
from melissa_sa.scheduler_registry import SchedulerError

__all__ = ["ClientJobs", "client_env"]


def client_env() -> dict[str, str]:
    """The clients' environment: the launcher's, with the venv first on PATH.

    ``MELISSA_SERVER_ADDRESS`` and ``MELISSA_SIMULATION_ID`` are set by the
    client script itself (docs/internals.md).
    """
    env = dict(os.environ)
    for key in ("MELISSA_LAUNCHER_ADDRESS", "MELISSA_RESTART"):
        env.pop(key, None)
    env["PATH"] = path_with_venv(env)
    return env


class ClientJobs:
    """The job table carried out with a scheduler.

    ``link`` sends the job reports to the server (its ``send``), ``console``
    prints; ``job_limit`` bounds the jobs queued in or run by the scheduler;
    ``kill_grace`` is the time between SIGTERM and SIGKILL; ``output_dir``
    anchors the relative script paths of ``submit``; ``tail_lines`` lines of
    the last failed client's log are shown when the study fails.
    """

    def __init__(self, jobs: JobTable, scheduler: Scheduler, link, console, *,
                 job_limit: int, kill_grace: float, output_dir: str | os.PathLike,
                 tail_lines: int = 10) -> None:
        self.jobs = jobs
        self.scheduler = scheduler
        self.link = link
        self.console = console
        self.job_limit = job_limit
        self.kill_grace = kill_grace
        self.output_dir = os.fspath(output_dir)
        self.tail_lines = tail_lines
        #: the most jobs the scheduler ran at once
        self.max_running = 0
        #: no room for a job's log (ENOSPC, EDQUOT): no start before this time
        self._room_at: float | None = None

    # -- the server's requests ---------------------------------------------------------
    def submit(self, msg: msgs.Submit) -> None:
        scripts = [s if os.path.isabs(s) else os.path.join(self.output_dir, s)
                   for s in msg.scripts]
        for cancel in self.jobs.submit(msg.group_id, msg.sim_ids, scripts):
            self.console.debug(f"sim {cancel.sim_id} resubmitted: previous attempt dropped")
            self.scheduler.cancel(cancel.key)
        self.console.debug(f"group {msg.group_id}: {len(msg.sim_ids)} job(s) queued (sims "
                           f"{msg.sim_ids}); {self.jobs.queued} waiting, "
                           f"{self.scheduler.running} running")

    def kill(self, msg: msgs.Kill) -> None:
        """Running jobs of ``sim_ids`` are terminated, queued ones dropped;
        none of them is reported (the server asked)."""
        cancels, dropped = self.jobs.kill(msg.sim_ids)
        for cancel in cancels:
            self.scheduler.cancel(cancel.key)
        say = self.console.log if cancels or dropped else self.console.debug  # nothing ran
        say(f"sim(s) {', '.join(map(str, sorted(set(msg.sim_ids))))} killed at the "
            f"server's request: {len(cancels)} running job(s) terminated, "
            f"{len(dropped)} queued dropped")

    # -- the jobs ------------------------------------------------------------------------
    def _send_reports(self, reports: list[msgs.JobState]) -> None:
        for report in reports:
            self.link.send(report)

    #: seconds between two tries at starting jobs whose logs found no room
    room_retry = 5.0

    def start_queued(self) -> None:
        limit = self.job_limit
        if self._room_at is not None and time.monotonic() < self._room_at:
            return
        starts = self.jobs.next_starts(limit - self.scheduler.running, limit)
        for i, job in enumerate(starts):
            try:
                handle = self.scheduler.submit(job.key, job.script, job.log_path)
            except SchedulerError as exc:
                if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
                    for later in reversed(starts[i:]):  # queued again, in order
                        self.jobs.start_later(later.key)
                    self._no_room(job, exc)
                    break
                self.console.error(f"sim {job.sim_id} (group {job.group_id}): {exc}")
                self._send_reports(self.jobs.start_failed(job.key))
                continue
            if self._room_at is not None:
                self._room_at = None
                self.console.log("there is room for the client logs again: jobs start")
            self._send_reports(self.jobs.started(job.key))
            self.console.debug(f"sim {job.sim_id} (group {job.group_id}) running, "
                               f"pid {handle.pid}")
        self.max_running = max(self.max_running, self.scheduler.running)

    def _no_room(self, job, exc: SchedulerError) -> None:
        """No room for ``job``'s log: it and the jobs after it wait; one line."""
        if self._room_at is None:
            self.console.log(f"warning: sim {job.sim_id} (group {job.group_id}): {exc}; it "
                             f"and the jobs after it stay queued and start once there is "
                             f"room (tried every {self.room_retry:g} s)")
        self._room_at = time.monotonic() + self.room_retry

    def reap(self) -> None:
        for key, state, rc in self.scheduler.poll():
            job = self.jobs.job(key)
            reports = self.jobs.ended(key, state, rc)
            if job is None:
                continue
            if not reports:
                self.console.debug(f"sim {job.sim_id} (group {job.group_id}) ended after "
                                   f"being stopped ("
                                   f"{'code ' + str(rc) if rc is not None else 'no code'})")
                continue
            self._send_reports(reports)
            if state == "failed":
                self.console.log(f"sim {job.sim_id} (group {job.group_id}) "
                                 f"{describe_exit(rc)}; see {job.log_path}")
            else:
                self.console.debug(f"sim {job.sim_id} (group {job.group_id}) finished")

    def finish(self) -> None:
        """The server said stop: reap what ended, stop what is left."""
        self.reap()
        if self.jobs.queued or self.jobs.running:
            self.console.log(f"server stopped with {self.jobs.running} job(s) running and "
                             f"{self.jobs.queued} queued: stopping them")
            self.stop_all()

    def cancel_all_async(self) -> list[int]:
        """Drop the queue and ask every running job to stop (SIGTERM now,
        SIGKILL after ``kill_grace``); return the pids of the running jobs."""
        pids = self.scheduler.pids()
        for cancel in self.jobs.stop_all():
            self.scheduler.cancel(cancel.key)
        return pids

    def end(self, cancelled: tuple[int, ...] = ()) -> None:
        """An interrupted run ends: stop every job, name the ones that were
        cancelled (``cancelled``: their pids)."""
        self.scheduler.cancel_all(self.kill_grace)
        self.jobs.clear()
        if cancelled:
            self.console.log(f"terminated {len(cancelled)} client job(s) "
                             f"(pids {', '.join(map(str, cancelled))})")

    def stop_all(self) -> list[int]:
        """Drop the queue and terminate every running client (bounded wait)."""
        self.jobs.stop_all()
        pids = self.scheduler.cancel_all(self.kill_grace)
        self.jobs.clear()
        return pids

    def records(self) -> list[dict]:
        """The running jobs' processes as ``OUT/launcher.json`` records them."""
        clients = []
        for key, pid, members in self.scheduler.processes():
            job = self.jobs.job(key)
            clients.append({"sim_id": job.sim_id if job else None,
                            "group_id": job.group_id if job else None,
                            "pid": pid, "start_time": members.get(pid), "processes": members})
        return clients

    def failure_tail(self) -> str:
        """The last failed client and its log's last lines, or ""."""
        if self.jobs.last_failure is None:
            return ""
        job, rc = self.jobs.last_failure
        lines = [line for line in tail_lines(job.log_path, self.tail_lines + 5)
                 if not line.startswith("=== melissa-sa: job ")][-self.tail_lines:]
        body = "".join(f"\n    {line}" for line in lines) or "\n    (empty)"
        how = describe_exit(rc) if rc is not None else "failed"
        return (f"\n  the last client that failed: sim {job.sim_id} (group {job.group_id}) "
                f"{how}; last lines of {job.log_path}:{body}")
