"""The client jobs of a launcher's run: start them, reap them, stop them.

:class:`ClientJobsMixin` is the part of :class:`~melissa_sa.launcher.Launcher`
that moves the jobs the server submitted through the scheduler: it starts
queued jobs within ``launcher_config.job_limit`` (:meth:`_start_jobs`), reaps
the ended ones (:meth:`_reap_jobs`), sends the server the job table's reports
(``JobState``), stops every client at the end (:meth:`_stop_clients`) and
tells the last failure (:meth:`_client_failure_tail`). The decisions are the
job table's (:mod:`~melissa_sa.launcher.jobs`, a pure state object); this
mixin carries them out with the launcher's ``cfg``, ``jobs``, ``scheduler``,
``link``, ``kill_grace`` and ``client_tail_lines``.
"""

from __future__ import annotations

from melissa_sa import messages as msgs
from melissa_sa.launcher.processes import describe_exit, tail_lines
from melissa_sa.launcher.schedulers import SchedulerError

__all__ = ["ClientJobsMixin"]


class ClientJobsMixin:
    """The client jobs of :class:`~melissa_sa.launcher.Launcher` (see the module docstring)."""

    def _send_reports(self, reports: list[msgs.JobState]) -> None:
        for report in reports:
            self.link.send(report)

    def _start_jobs(self) -> None:
        limit = self.cfg.launcher_config.job_limit
        for start in self.jobs.next_starts(limit - self.scheduler.running, limit):
            job = start.job
            try:
                handle = self.scheduler.submit(job.key, job.script, job.log_path)
            except SchedulerError as exc:
                self.error(f"sim {job.sim_id} (group {job.group_id}): {exc}")
                self._send_reports(self.jobs.start_failed(job.key))
                continue
            self._send_reports(self.jobs.started(job.key))
            self.debug(f"sim {job.sim_id} (group {job.group_id}) running, pid {handle.pid}")
        self.max_running = max(self.max_running, self.scheduler.running)

    def _reap_jobs(self) -> None:
        for key, state, rc in self.scheduler.poll():
            job = self.jobs.job(key)
            reports = self.jobs.ended(key, state, rc)
            if job is None:
                continue
            if not reports:
                self.debug(f"sim {job.sim_id} (group {job.group_id}) ended after being "
                           f"stopped ({'code ' + str(rc) if rc is not None else 'no code'})")
                continue
            self._send_reports(reports)
            if state == "failed":
                self.log(f"sim {job.sim_id} (group {job.group_id}) {describe_exit(rc)}; "
                         f"see {job.log_path}")
            else:
                self.debug(f"sim {job.sim_id} (group {job.group_id}) finished")

    def _stop_clients(self) -> list[int]:
        """Drop the queue and terminate every running client (bounded wait)."""
        self.jobs.stop_all()
        if self.scheduler is None:
            return []
        pids = self.scheduler.cancel_all(self.kill_grace)
        self.jobs.clear()
        return pids

    def _client_failure_tail(self) -> str:
        """The last failed client and its log's last lines, or ""."""
        if self.jobs.last_failure is None:
            return ""
        job, rc = self.jobs.last_failure
        lines = [line for line in tail_lines(job.log_path, self.client_tail_lines + 5)
                 if not line.startswith("=== melissa-sa: job ")][-self.client_tail_lines:]
        body = "".join(f"\n    {line}" for line in lines) or "\n    (empty)"
        how = describe_exit(rc) if rc is not None else "failed"
        return (f"\n  the last client that failed: sim {job.sim_id} (group {job.group_id}) "
                f"{how}; last lines of {job.log_path}:{body}")
