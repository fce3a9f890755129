"""Schedulers: how the launcher starts, watches and stops client jobs.

A scheduler runs one *job* per simulation: a client script written by the
server (``OUT/client_scripts/client.<sim_id>.sh``). The launcher talks to a
scheduler through the small :class:`Scheduler` interface only:

``submit(job_id, script_path, log_path, env=None) -> JobHandle``
    start the script now (the launcher enforces ``job_limit`` itself).
``poll() -> [(job_id, state, returncode), ...]``
    the jobs that ended since the last call; ``state`` is ``"finished"``
    (return code 0), ``"failed"`` (anything else; negative = killed by that
    signal) or ``"cancelled"`` (ended after :meth:`~Scheduler.cancel`).
``cancel(job_id)``
    ask the job to stop (SIGTERM now, SIGKILL after ``grace`` seconds);
    asynchronous: the job keeps counting as running until ``poll`` reports it.
``cancel_all(timeout)``
    stop every job and wait until all are gone (SIGKILL after ``grace``).
``running``
    how many jobs still have a live process (cancelled ones included).
``processes() -> [(job_id, root_pid, {pid: start_time}), ...]``
    the processes of the running jobs as far as known (the launcher records
    them in ``OUT/launcher.json``; a scheduler without local processes
    returns ``[]``).

Schedulers are registered by name (:func:`register_scheduler`,
:func:`get_scheduler`). ``"local"`` (:class:`LocalScheduler`) runs jobs as
subprocesses of the launcher; ``"slurm"`` and ``"slurm-allocation"`` are in
:mod:`melissa_sa.launcher.slurm` (registered when :mod:`melissa_sa.launcher`
is imported). ``"openmpi"`` is a planned plug-in: naming it raises
:class:`NotImplementedError`.

A new scheduler (OAR, PBS, ...) is one small subclass of :class:`Scheduler`
registered with :func:`register_scheduler`; ``launcher_config.scheduler`` then
accepts its name (the config validation consults this registry).

The local scheduler stops processes by process id / process group, never by
name (:mod:`melissa_sa.launcher.processes`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

# re-exported: the process helpers lived here before (schedulers import them from here)
from melissa_sa.launcher.processes import (
    ProcessTree,
    children_map,
    process_start_time,
    start_in_session,
    terminate_trees,
)

__all__ = [
    "Scheduler",
    "LocalScheduler",
    "JobHandle",
    "SchedulerError",
    "register_scheduler",
    "get_scheduler",
    "scheduler_names",
    "PLANNED_SCHEDULERS",
    "ProcessTree",
    "terminate_trees",
    "process_start_time",
]


class SchedulerError(RuntimeError):
    """A scheduler could not be created or could not start a job."""


# ---------------------------------------------------------------------------
# the scheduler interface


@dataclass
class JobHandle:
    """What a scheduler knows about one job it started."""

    job_id: Hashable
    script_path: str
    log_path: str
    pid: int | None = None
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    kill_at: float | None = None
    popen: subprocess.Popen | None = field(default=None, repr=False)
    tree: ProcessTree | None = field(default=None, repr=False)


class Scheduler(ABC):
    """Starts and stops client jobs. See the module docstring for the contract."""

    #: the name the scheduler is registered under
    name: str = ""

    def __init__(self, cwd: str | None = None, env: Mapping[str, str] | None = None,
                 grace: float = 3.0) -> None:
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        self.grace = grace

    @abstractmethod
    def submit(self, job_id: Hashable, script_path: str, log_path: str,
               env: Mapping[str, str] | None = None) -> JobHandle:
        """Start ``script_path`` now; raise :class:`SchedulerError` if it cannot start."""

    @abstractmethod
    def poll(self) -> list[tuple[Hashable, str, int | None]]:
        """Jobs that ended since the last call: ``(job_id, state, returncode)``."""

    @abstractmethod
    def cancel(self, job_id: Hashable) -> None:
        """Ask one job to stop (asynchronous; ``poll`` reports it as cancelled)."""

    @abstractmethod
    def cancel_all(self, timeout: float | None = None) -> list[int]:
        """Stop every job and wait until they are gone; return the pids signalled."""

    @property
    @abstractmethod
    def running(self) -> int:
        """Number of jobs whose processes are still alive."""

    def pids(self) -> list[int]:
        """Root pids of the jobs still running (for messages and tests)."""
        return []

    def processes(self) -> list[tuple[Hashable, int, dict[int, int]]]:
        """``(job_id, root pid, {pid: start time})`` of each running job, as
        far as known (recorded in ``OUT/launcher.json`` so that a later
        launcher can find the jobs of one that was killed)."""
        return []


class LocalScheduler(Scheduler):
    """Runs each job as ``/bin/sh <script>`` in a new session on this machine.

    The working directory is ``cwd`` (the launcher passes the config file's
    directory); stdout and stderr go to ``log_path`` (appended, after a
    header line naming the job, so a restarted simulation keeps the history).
    """

    name = "local"
    #: seconds between two scans of /proc for the jobs' descendants
    scan_interval = 2.0

    def __init__(self, cwd: str | None = None, env: Mapping[str, str] | None = None,
                 grace: float = 3.0, shell: str = "/bin/sh") -> None:
        super().__init__(cwd, env, grace)
        self.shell = shell
        self._jobs: dict[Hashable, JobHandle] = {}
        self._last_scan = -float("inf")

    def submit(self, job_id, script_path, log_path, env=None) -> JobHandle:
        if job_id in self._jobs:
            raise SchedulerError(f"job {job_id!r} is already running")
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            popen = start_in_session(
                [self.shell, os.fspath(script_path)], log_path,
                f"melissa-sa: job {job_id} started {stamp}: {self.shell} {script_path}",
                cwd=self.cwd, env=full_env)
        except OSError as exc:
            raise SchedulerError(f"cannot start {script_path} (log {log_path}): "
                                 f"{exc.strerror or exc}") from None
        handle = JobHandle(job_id, os.fspath(script_path), os.fspath(log_path),
                           pid=popen.pid, popen=popen, tree=ProcessTree(popen.pid))
        self._jobs[job_id] = handle
        return handle

    def poll(self) -> list[tuple[Hashable, str, int | None]]:
        done = []
        now = time.monotonic()
        children = None
        if self._jobs and now - self._last_scan >= self.scan_interval:
            # remember descendants while the roots live (one /proc scan for all)
            children = children_map()
            self._last_scan = now
        for job_id, job in list(self._jobs.items()):
            rc = job.popen.poll()
            if rc is None:
                if job.cancelled:
                    if job.kill_at is not None and now >= job.kill_at:
                        job.tree.signal(signal.SIGKILL)
                        job.kill_at = None
                elif children is not None:
                    job.tree.refresh(children)
                continue
            # the script ended: nothing it started may outlive it
            if job.tree.alive() or job.tree.group_alive():
                job.tree.signal(signal.SIGKILL)
            del self._jobs[job_id]
            if job.cancelled:
                done.append((job_id, "cancelled", rc))
            else:
                done.append((job_id, "finished" if rc == 0 else "failed", rc))
        return done

    def cancel(self, job_id) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.cancelled:
            return
        job.cancelled = True
        job.kill_at = time.monotonic() + self.grace
        job.tree.signal(signal.SIGTERM)

    def cancel_all(self, timeout: float | None = None) -> list[int]:
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancelled = True
        pids = [job.pid for job in jobs if job.popen.poll() is None]
        terminate_trees([(job.tree, job.popen) for job in jobs],
                        grace=self.grace if timeout is None else timeout)
        for job in jobs:
            try:
                job.popen.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        self._jobs.clear()
        return pids

    @property
    def running(self) -> int:
        return len(self._jobs)

    def pids(self) -> list[int]:
        return [job.pid for job in self._jobs.values()]

    def processes(self) -> list[tuple[Hashable, int, dict[int, int]]]:
        return [(job_id, job.pid, {p: t for p, t in job.tree.members.items() if t is not None})
                for job_id, job in self._jobs.items()]

    def job(self, job_id) -> JobHandle | None:
        return self._jobs.get(job_id)


# ---------------------------------------------------------------------------
# registry

_REGISTRY: dict[str, type[Scheduler]] = {}

#: Schedulers that are planned but not written yet, with what they will do.
PLANNED_SCHEDULERS: dict[str, str] = {
    "openmpi": "clients started with OpenMPI's mpirun on an allocation (direct scheduler)",
}


def register_scheduler(cls: type[Scheduler], name: str | None = None) -> type[Scheduler]:
    """Register a :class:`Scheduler` subclass under ``name`` (default ``cls.name``).

    Usable as a class decorator.
    """
    key = name or cls.name
    if not key:
        raise ValueError("a scheduler needs a name")
    _REGISTRY[key] = cls
    return cls


def scheduler_names() -> list[str]:
    """Names of the registered (usable) schedulers."""
    return sorted(_REGISTRY)


def get_scheduler(name: str) -> type[Scheduler]:
    """The scheduler class registered as ``name``.

    Raises :class:`NotImplementedError` for a planned plug-in and
    :class:`SchedulerError` listing the known names for anything else.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in PLANNED_SCHEDULERS:
        raise NotImplementedError(
            f'scheduler "{name}" is not implemented yet (planned: '
            f'{PLANNED_SCHEDULERS[name]}); available: {", ".join(scheduler_names())}')
    raise SchedulerError(f'unknown scheduler "{name}" (known: {", ".join(scheduler_names())}; '
                         f'planned: {", ".join(PLANNED_SCHEDULERS)})')


register_scheduler(LocalScheduler)
