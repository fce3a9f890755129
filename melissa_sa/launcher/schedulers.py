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
subprocesses of the launcher. ``"openmpi"`` and ``"slurm"`` are planned
plug-ins: naming them raises :class:`NotImplementedError`.

Processes are always stopped by process id / process group, never by name.
Each job runs in its own session (``start_new_session=True``), so
``os.killpg`` reaches the script and everything it started in its group;
processes that left the group (``mpiexec`` puts every rank in a session of its
own) are found by walking ``/proc`` from the job's pid and are signalled by
pid, after checking that the pid still names the same process (its start
time), so a recycled pid is never hit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping

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
# process-tree helpers (Linux /proc; elsewhere only the process group is used)


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time, state) of ``pid`` from /proc, or None if unknown/gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses
    rest = data[data.rfind(")") + 2:].split()
    try:
        return int(rest[1]), int(rest[19]), rest[0]
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks after boot, field 22 of
    ``/proc/<pid>/stat``), or None if it is gone or a zombie.

    With the pid it names one process for the life of the machine: a recycled
    pid has another start time.
    """
    st = _stat(pid)
    if st is None or st[2] == "Z":
        return None
    return st[1]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return children
    for name in names:
        if not name.isdigit():
            continue
        st = _stat(int(name))
        if st is not None:
            children.setdefault(st[0], []).append(int(name))
    return children


def _group_has_live_member(pgid: int) -> bool:
    """True if a non-zombie process is in process group ``pgid`` (/proc scan).

    ``killpg(pgid, 0)`` also succeeds for a group of zombies (orphans whose
    new parent does not reap them, as PID 1 of some containers)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return True
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read().decode("ascii", "replace")
        except OSError:
            continue
        rest = data[data.rfind(")") + 2:].split()
        try:
            if int(rest[2]) == pgid and rest[0] != "Z":
                return True
        except (IndexError, ValueError):
            continue
    return False


def _alive(pid: int, start: int | None) -> bool:
    """True if ``pid`` is a live (non-zombie) process started at ``start``."""
    st = _stat(pid)
    if st is None:
        if os.path.isdir("/proc"):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return st[2] != "Z" and (start is None or st[1] == start)


class ProcessTree:
    """A process, its process group and all its descendants, by pid.

    :meth:`refresh` records descendants while the root is alive (once the
    root dies they are re-parented and can no longer be found from it);
    :meth:`signal` signals the root's group and every recorded pid that still
    names the same process.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        st = _stat(pid)
        self.members: dict[int, int | None] = {pid: st[1] if st else None}

    @classmethod
    def from_record(cls, pid: int, start: int,
                    members: Mapping[int, int] | None = None) -> "ProcessTree":
        """A tree recorded earlier (e.g. by a launcher that was killed): the
        root ``pid`` started at ``start`` and the other ``members`` (pid: start
        time). Only processes that still match their start time are signalled."""
        tree = cls.__new__(cls)
        tree.pid = int(pid)
        tree.members = {int(pid): int(start)}
        for member, member_start in (members or {}).items():
            tree.members.setdefault(int(member), int(member_start))
        return tree

    def refresh(self, children: dict[int, list[int]] | None = None) -> None:
        """Record the root's current descendants (``children``: a shared
        :func:`_children_map` snapshot, to scan /proc once for many trees)."""
        if not _alive(self.pid, self.members[self.pid]):
            return
        if children is None:
            children = _children_map()
        todo = [self.pid]
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in self.members:
                    st = _stat(child)
                    self.members[child] = st[1] if st else None
                    todo.append(child)

    def alive(self) -> list[int]:
        """The recorded pids still alive (zombies count as gone)."""
        return [pid for pid, start in self.members.items() if _alive(pid, start)]

    def _group_is_ours(self) -> bool:
        """True unless the root's pid now names another process.

        While any member of group ``pid`` lives, the kernel does not hand the
        number ``pid`` to a new process; so if a process with that pid exists
        and started at another time, the group is no longer ours.
        """
        st = _stat(self.pid)
        if st is None:
            return True
        start = self.members[self.pid]
        return start is None or st[1] == start

    def group_alive(self) -> bool:
        if not self._group_is_ours():
            return False
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return _group_has_live_member(self.pid) if os.path.isdir("/proc") else True

    def signal(self, sig: int) -> None:
        self.refresh()
        if self._group_is_ours():
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid, start in list(self.members.items()):
            if _alive(pid, start):
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass


def terminate_trees(trees: Iterable[tuple[ProcessTree, subprocess.Popen | None]],
                    grace: float = 3.0, poll_interval: float = 0.05,
                    kill_wait: float = 5.0) -> list[int]:
    """SIGTERM every tree, wait up to ``grace`` s, then SIGKILL what is left.

    Waits until every recorded process is gone and reaps the roots; gives up
    ``kill_wait`` s after the SIGKILL (a process stuck in the kernel) and
    returns the pids still alive then (``[]``: all gone).
    """
    trees = list(trees)
    for tree, _ in trees:
        tree.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    killed = False
    while True:
        for _, popen in trees:
            if popen is not None:
                popen.poll()
        left = [t for t, _ in trees if t.alive() or t.group_alive()]
        if not left:
            return []
        now = time.monotonic()
        if now >= deadline:
            if killed:
                if now >= deadline + kill_wait:
                    # unkillable (D state); give up rather than hang
                    return sorted({pid for t in left for pid in t.alive()}
                                  | {t.pid for t in left if t.group_alive()})
            else:
                for tree in left:
                    tree.signal(signal.SIGKILL)
                killed = True
        time.sleep(poll_interval)


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
        try:
            log = open(log_path, "ab")
        except OSError as exc:
            raise SchedulerError(f"cannot open log {log_path}: {exc.strerror or exc}") from None
        try:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== melissa-sa: job {job_id} started {stamp}: "
                      f"{self.shell} {script_path} ===\n".encode())
            log.flush()
            popen = subprocess.Popen(
                [self.shell, os.fspath(script_path)], cwd=self.cwd, env=full_env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True)
        except OSError as exc:
            raise SchedulerError(f"cannot start {script_path}: {exc.strerror or exc}") from None
        finally:
            log.close()
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
            children = _children_map()
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
    "slurm": "clients submitted as Slurm jobs with sbatch and watched with squeue/sacct",
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
