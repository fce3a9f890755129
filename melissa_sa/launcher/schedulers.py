"""Schedulers: how the launcher starts, watches and stops client jobs and the server.

A scheduler runs one *job* per simulation: a client script written by the
server (``OUT/client_scripts/client.<sim_id>.sh``). The launcher talks to a
scheduler through the :class:`Scheduler` interface only:

``from_config(cfg, cwd, env, grace, log)``
    the scheduler for a study config, with the constructor's options
    ``config_options(cfg, log)`` reads there (a Slurm scheduler's sbatch /
    srun options; the base takes none).
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
``server_command(argv, ntasks, mpiexec_args)`` and ``start_server(command, ...)``
    the command that runs the server's ranks and how it starts; the base
    runs ``mpiexec`` on this machine and answers a
    :class:`~melissa_sa.launcher.server_jobs.LocalServerJob`.
``cancel_orphans(log) -> int``
    before the first server: stop the jobs a killed launcher of the study
    left behind that the recorded pids cannot reach (Slurm jobs); the base
    has none.
``record(sim_id_of) -> dict``
    what the scheduler adds to ``OUT/launcher.json`` (the base: nothing).

Schedulers are known by name (:mod:`melissa_sa.scheduler_registry`):
``"local"`` (:class:`LocalScheduler`) runs jobs as subprocesses of the
launcher; ``"slurm"`` and ``"slurm-allocation"`` are in
:mod:`melissa_sa.launcher.slurm` and :mod:`melissa_sa.launcher.slurm_allocation`.
A new scheduler (OAR, PBS, ...) is one small subclass of :class:`Scheduler`
registered with :func:`~melissa_sa.scheduler_registry.register_scheduler`;
``launcher_config.scheduler`` then accepts its name.

The local scheduler stops processes by process id / process group, never by
name (:mod:`melissa_sa.launcher.processes`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from melissa_sa.launcher.processes import (
    ProcessTree,
    children_map,
    start_in_session,
    terminate_trees,
)
from melissa_sa.launcher.server_jobs import LocalServerJob
from melissa_sa.launcher.server_process import mpiexec_command
from melissa_sa.scheduler_registry import SchedulerError

__all__ = ["Scheduler", "LocalScheduler", "JobHandle", "RunningJobs"]


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

    def begin_cancel(self, grace: float) -> bool:
        """Mark the job cancelled, to be killed ``grace`` s from now if it is
        still running then; False if it was cancelled already."""
        if self.cancelled:
            return False
        self.cancelled = True
        self.kill_at = time.monotonic() + grace
        return True


#: what a scheduler keeps for one job (a JobHandle, a Slurm batch job)
Handle = TypeVar("Handle")


class RunningJobs(Generic[Handle]):
    """The jobs a scheduler started and has not seen end, by job id, in the
    order they were submitted: the table each scheduler owns (its
    ``running`` is the table's length)."""

    def __init__(self) -> None:
        self._by_id: dict[Hashable, Handle] = {}

    def check_free(self, job_id: Hashable) -> None:
        """Refuse a job id whose job still runs (before anything is started for it)."""
        if job_id in self._by_id:
            raise SchedulerError(f"job {job_id!r} is already running")

    def add(self, job_id: Hashable, job: Handle) -> Handle:
        """Note ``job`` as running under ``job_id`` (refused if that id runs)."""
        self.check_free(job_id)
        self._by_id[job_id] = job
        return job

    def get(self, job_id: Hashable) -> Handle | None:
        return self._by_id.get(job_id)

    def remove(self, job_id: Hashable) -> None:
        """The job ended (reported by ``poll``)."""
        del self._by_id[job_id]

    def items(self) -> list[tuple[Hashable, Handle]]:
        """``(job_id, job)`` pairs, a copy: jobs may be removed while it is walked."""
        return list(self._by_id.items())

    def values(self) -> list[Handle]:
        return list(self._by_id.values())

    def clear(self) -> None:
        self._by_id.clear()

    def __len__(self) -> int:
        return len(self._by_id)


class Scheduler(ABC):
    """Starts and stops client jobs. See the module docstring for the contract."""

    #: the name the scheduler is registered under
    name: str = ""

    def __init__(self, cwd: str | None = None, env: Mapping[str, str] | None = None,
                 grace: float = 3.0) -> None:
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        self.grace = grace

    @classmethod
    def from_config(cls, cfg, cwd: str | None = None, env: Mapping[str, str] | None = None,
                    grace: float = 3.0, log: Callable[[str], None] | None = None) -> Scheduler:
        """The scheduler for a :class:`~melissa_sa.config.StudyConfig`: the
        constructor's ``cwd``, ``env`` and ``grace`` and the keyword arguments
        :meth:`config_options` reads from the config; ``log`` receives the
        scheduler's own lines."""
        return cls(cwd, env, grace, **cls.config_options(cfg, log))

    @staticmethod
    def config_options(cfg, log: Callable[[str], None] | None) -> dict:
        """The constructor's keyword arguments read from ``cfg`` (with ``log``
        for a scheduler that has lines of its own): the base reads nothing
        of the config and says nothing."""
        return {}

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

    # -- the server --------------------------------------------------------------------
    def server_command(self, argv: Sequence[str], ntasks: int,
                       mpiexec_args: Sequence[str] = ()) -> list[str]:
        """The command that runs the server ``argv`` as ``ntasks`` MPI ranks:
        here ``mpiexec -n ntasks [mpiexec_args] argv`` (the venv's)."""
        return mpiexec_command(argv, ntasks, mpiexec_args)

    def start_server(self, command: list[str], *, ntasks: int, log_path: str | os.PathLike,
                     header: str, cwd: str | None, env: dict[str, str],
                     script_path: str | os.PathLike) -> LocalServerJob:
        """Start the server's ``command`` (from :meth:`server_command`) and
        answer its job (:mod:`~melissa_sa.launcher.server_jobs`): here a
        process tree on this machine, its output appended to ``log_path``
        after ``header``. ``script_path`` is where a batch scheduler writes
        the server's job script. Raises OSError if it cannot start."""
        return LocalServerJob.start(command, log_path, header, cwd=cwd, env=env)

    # -- the launcher's state file --------------------------------------------------------
    def cancel_orphans(self, log: Callable[[str], None]) -> int:
        """Stop the jobs a killed launcher of this study left behind that its
        recorded pids cannot reach; return how many (the base: none, the
        recorded processes are all there is)."""
        return 0

    def record(self, sim_id_of: Callable[[Hashable], int | None]) -> dict:
        """What the scheduler adds to ``OUT/launcher.json`` (``sim_id_of``
        names the simulation of a job id); the base adds nothing."""
        return {}


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
        self._jobs: RunningJobs[JobHandle] = RunningJobs()
        self._last_scan = -float("inf")

    def submit(self, job_id, script_path, log_path, env=None) -> JobHandle:
        self._jobs.check_free(job_id)
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
            error = SchedulerError(f"cannot start {script_path} (log {log_path}): "
                                   f"{exc.strerror or exc}")
            error.errno = exc.errno  # ENOSPC, EDQUOT: the job waits for room
            raise error from None
        return self._jobs.add(job_id, JobHandle(job_id, os.fspath(script_path),
                                                os.fspath(log_path), pid=popen.pid,
                                                popen=popen, tree=ProcessTree(popen.pid)))

    def poll(self) -> list[tuple[Hashable, str, int | None]]:
        done = []
        now = time.monotonic()
        children = None
        if self._jobs and now - self._last_scan >= self.scan_interval:
            # remember descendants while the roots live (one /proc scan for all)
            children = children_map()
            self._last_scan = now
        for job_id, job in self._jobs.items():
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
            self._jobs.remove(job_id)
            if job.cancelled:
                done.append((job_id, "cancelled", rc))
            else:
                done.append((job_id, "finished" if rc == 0 else "failed", rc))
        return done

    def cancel(self, job_id) -> None:
        job = self._jobs.get(job_id)
        if job is not None and job.begin_cancel(self.grace):
            job.tree.signal(signal.SIGTERM)

    def cancel_all(self, timeout: float | None = None) -> list[int]:
        jobs = self._jobs.values()
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
