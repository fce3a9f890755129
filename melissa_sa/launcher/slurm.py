"""Slurm schedulers: clients (and the server) as Slurm jobs or job steps.

``"slurm"`` (:class:`SlurmScheduler`)
    Each client run is one batch job (``sbatch --parsable``, options from
    ``launcher_config.scheduler_arg_client``); the server is one batch job
    whose ``server_processes`` tasks start with ``srun --mpi=pmi2``
    (:meth:`SlurmScheduler.submit_server`, options from
    ``scheduler_arg_server``). One ``squeue`` call per poll watches every job
    of the study; a job that left ``squeue`` is looked up with ``scontrol show
    job``, then ``sacct`` (which fails on clusters without accounting: that is
    fine). Jobs are stopped with ``scancel``.
``"slurm-allocation"`` (:class:`SlurmAllocationScheduler`)
    The launcher runs inside one allocation (``salloc`` or an sbatch script);
    every client is a job step ``srun --exclusive -N1 -n k`` (``--exclusive``:
    dedicated CPUs, which implies ``--exact`` since Slurm 21.08, so steps run
    side by side instead of each taking the whole allocation), the server a
    step ``srun --exclusive -n P --mpi=pmi2`` (:meth:`server_command`). The
    ``srun`` processes are children of the launcher; a SIGTERM to ``srun``
    cancels its step.

A job that ends FAILED, TIMEOUT, NODE_FAIL, PREEMPTED, OUT_OF_MEMORY,
CANCELLED (by anyone but us), BOOT_FAIL or DEADLINE is reported ``"failed"``
(a crash for fault tolerance) with a return code: the job's exit code, or
``-signal`` (TIMEOUT and CANCELLED: SIGTERM; NODE_FAIL and OUT_OF_MEMORY:
SIGKILL when Slurm records none), and one log line naming the Slurm state.

A refused submission (``sbatch`` exits non-zero: MaxSubmitJobs, a partition
not accepting jobs, a controller that does not answer) loses nothing: the job
stays queued inside the scheduler (it counts in :attr:`running`, so
``job_limit`` still bounds what is queued or running), a log line quotes
sbatch's error, and the submission is retried after a back-off that doubles
from ``backoff[0]`` to ``backoff[1]`` seconds; jobs are submitted in order.

The interface is the one of :mod:`melissa_sa.launcher.schedulers`; the
constructor also takes the sbatch / srun options (:meth:`from_config` reads
them from a study config).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable, Mapping, Sequence

from melissa_sa.launcher.schedulers import JobHandle, Scheduler, SchedulerError, register_scheduler

__all__ = ["SlurmScheduler", "SlurmAllocationScheduler", "SlurmServerJob", "CRASH_STATES",
           "study_job_prefix", "find_study_jobs", "cancel_study_jobs"]

_LOG = logging.getLogger("melissa_sa.slurm")

#: final Slurm states that are crashes for fault tolerance, with the signal
#: reported when Slurm records no exit code
CRASH_STATES: dict[str, int] = {
    "FAILED": 0, "TIMEOUT": signal.SIGTERM, "NODE_FAIL": signal.SIGKILL,
    "PREEMPTED": signal.SIGTERM, "OUT_OF_MEMORY": signal.SIGKILL,
    "CANCELLED": signal.SIGTERM, "BOOT_FAIL": signal.SIGKILL, "DEADLINE": signal.SIGTERM,
    "REVOKED": signal.SIGTERM,
}
FINAL_STATES = frozenset({"COMPLETED", *CRASH_STATES})


def study_job_prefix(output_dir: str | os.PathLike) -> str:
    """``melissa-<8 hex>``: the name prefix of every Slurm job of the study
    in ``output_dir`` (so that its jobs, and only they, can be found again)."""
    digest = hashlib.sha256(str(Path(output_dir).resolve()).encode()).hexdigest()[:8]
    return f"melissa-{digest}"


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _split_options(options: Iterable[str]) -> list[str]:
    """``["-p debug", "--time=10"]`` -> ``["-p", "debug", "--time=10"]``."""
    out: list[str] = []
    for opt in options:
        out.extend(shlex.split(opt))
    return out


class _Slurm:
    """Runs the Slurm commands with the scheduler's environment and a timeout."""

    def __init__(self, env: Mapping[str, str], timeout: float) -> None:
        self.env = dict(env)
        self.timeout = timeout

    def run(self, args: Sequence[str], env: Mapping[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        """Run one command; a command that cannot run or hangs gives rc 127/124."""
        try:
            return subprocess.run(list(args), env=dict(env or self.env), capture_output=True,
                                  text=True, stdin=subprocess.DEVNULL, timeout=self.timeout)
        except FileNotFoundError:
            return subprocess.CompletedProcess(args, 127, "", f"{args[0]}: command not found")
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 124, "",
                                               f"{args[0]} did not answer in {self.timeout:g} s")

    def queue(self, ids: Sequence[str]) -> dict[str, str] | None:
        """``{job id: state}`` from one ``squeue`` call (jobs Slurm forgot are
        absent); None if squeue itself failed."""
        if not ids:
            return {}
        res = self.run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}",
                        "--format=%i|%T"])
        if res.returncode != 0:
            if "Invalid job id" in res.stderr:  # every job asked for is forgotten
                return {}
            return None
        states = {}
        for line in res.stdout.splitlines():
            job, _, state = line.strip().partition("|")
            if job:
                states[job] = state.strip()
        return states

    def final(self, job: str) -> tuple[str, int | None] | None:
        """``(state, return code or None)`` of a finished job from ``scontrol``,
        else ``sacct``; None if neither knows it."""
        res = self.run(["scontrol", "--oneliner", "show", "job", job])
        if res.returncode == 0:
            fields = dict(f.split("=", 1) for f in res.stdout.split() if "=" in f)
            state = fields.get("JobState", "")
            return state, _exit_code(fields.get("ExitCode", ""))
        res = self.run(["sacct", "--noheader", "--parsable2", "--allocations",
                        f"--jobs={job}", "--format=State,ExitCode"])
        if res.returncode == 0 and res.stdout.strip():
            state, _, code = res.stdout.splitlines()[0].partition("|")
            return state.split()[0] if state else "", _exit_code(code)
        return None


def _exit_code(text: str) -> int | None:
    """Slurm's ``ExitCode=code:signal`` -> code, or -signal, or None."""
    code, _, sig = text.partition(":")
    try:
        code_i, sig_i = int(code), int(sig or 0)
    except ValueError:
        return None
    return -sig_i if sig_i else code_i


@dataclass
class _BatchJob:
    """One job of :class:`SlurmScheduler` (client or server)."""

    key: Hashable
    name: str
    argv: list[str]                       # the sbatch command, without the script
    script: str
    env: dict[str, str]
    handle: JobHandle | None = None
    slurm_id: str | None = None           # None: not accepted by sbatch yet
    state: str = "SUBMITTING"
    result: tuple[str, int] | None = None  # ("finished"/"failed"/"cancelled", rc)
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.monotonic)


class SlurmServerJob:
    """The server's batch job, shaped like the :class:`subprocess.Popen` the
    launcher watches: :meth:`poll` is None while the job is queued or running,
    then its return code (a crash state gives the job's code, or ``-signal``)."""

    def __init__(self, scheduler: "SlurmScheduler", job: _BatchJob) -> None:
        self._scheduler = scheduler
        self._job = job
        self.pid = None
        self.returncode: int | None = None

    @property
    def job_id(self) -> str | None:
        """The Slurm job id (None while sbatch refuses it)."""
        return self._job.slurm_id

    @property
    def state(self) -> str:
        return self._job.state

    def poll(self) -> int | None:
        if self.returncode is None:
            self._scheduler._refresh()
            if self._job.result is not None:
                self.returncode = self._job.result[1]
        return self.returncode

    def terminate(self) -> None:
        self._scheduler._cancel_job(self._job)

    kill = terminate

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"slurm job {self.job_id}", timeout)
            time.sleep(0.5)
        return self.returncode


class SlurmScheduler(Scheduler):
    """Client runs (and the server) as Slurm batch jobs; see the module docstring.

    ``client_args`` / ``server_args``: sbatch options (each string may hold an
    option and its value, ``"-p debug"``); ours (``--job-name``, ``--output``,
    ``--ntasks``...) come after them and win. ``client_processes``: tasks per
    client job (the client script starts its ranks with ``mpiexec``, which
    runs them on the job's tasks). ``prefix``: the job name prefix
    (:func:`study_job_prefix`). ``log``: where the scheduler's lines go.
    """

    name = "slurm"
    #: seconds between two squeue calls
    poll_interval = 2.0

    def __init__(self, cwd: str | None = None, env: Mapping[str, str] | None = None,
                 grace: float = 3.0, *, client_args: Sequence[str] = (),
                 server_args: Sequence[str] = (), client_processes: int = 1,
                 prefix: str = "melissa", backoff: tuple[float, float] = (5.0, 300.0),
                 command_timeout: float = 60.0,
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__(cwd, env, grace)
        self.client_args = _split_options(client_args)
        self.server_args = _split_options(server_args)
        self.client_processes = int(client_processes)
        self.prefix = prefix
        self.backoff = backoff
        self.log = log or _LOG.warning
        self.slurm = _Slurm(self.env, command_timeout)
        self._jobs: dict[Hashable, _BatchJob] = {}   # clients, in submission order
        self._server: _BatchJob | None = None
        self._retry_at = 0.0
        self._delay = 0.0
        self._refused = 0
        self._last_query = -float("inf")
        self._squeue_failing = False
        self.stats = {"submitted": 0, "refused": 0, "squeue_calls": 0}

    @classmethod
    def from_config(cls, cfg, cwd: str | None = None, env: Mapping[str, str] | None = None,
                    grace: float = 3.0, **kwargs) -> "SlurmScheduler":
        """The scheduler for a :class:`~melissa_sa.config.StudyConfig`."""
        lc = cfg.launcher_config
        kwargs.setdefault("prefix", study_job_prefix(cfg.output_dir))
        return cls(cwd, env, grace, client_args=lc.scheduler_arg_client,
                   server_args=lc.scheduler_arg_server,
                   client_processes=cfg.client_config.client_processes, **kwargs)

    # -- the Scheduler interface ---------------------------------------------------
    def submit(self, job_id, script_path, log_path, env=None) -> JobHandle:
        if job_id in self._jobs:
            raise SchedulerError(f"job {job_id!r} is already running")
        if not os.path.isfile(script_path):
            raise SchedulerError(f"cannot submit {script_path}: no such file")
        full_env = {**self.env, **(env or {})}
        name = f"{self.prefix}-{job_id}"
        argv = ["sbatch", *self.client_args, "--parsable", f"--job-name={name}",
                f"--ntasks={self.client_processes}", f"--output={log_path}",
                "--open-mode=append", *([f"--chdir={self.cwd}"] if self.cwd else [])]
        job = _BatchJob(job_id, name, argv, os.fspath(script_path), full_env)
        job.handle = JobHandle(job_id, os.fspath(script_path), os.fspath(log_path))
        self._jobs[job_id] = job
        self._submit_waiting()
        return job.handle

    def poll(self) -> list[tuple[Hashable, str, int | None]]:
        self._submit_waiting()
        self._refresh()
        done = []
        for key, job in list(self._jobs.items()):
            if job.result is not None:
                del self._jobs[key]
                done.append((key, *job.result))
        return done

    def cancel(self, job_id) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            self._cancel_job(job)

    def cancel_all(self, timeout: float | None = None) -> list[int]:
        """scancel every client job (one call) and wait, up to ``timeout``
        (default: ``grace`` + 30 s), until Slurm lists none as active; return
        their Slurm job ids. The server's job is stopped by its own
        :meth:`SlurmServerJob.terminate`."""
        jobs = list(self._jobs.values())
        ids = self._cancel_jobs(jobs)
        deadline = time.monotonic() + (self.grace + 30.0 if timeout is None else timeout)
        while time.monotonic() < deadline:
            self._refresh(force=True)
            if all(j.result is not None for j in jobs):
                break
            time.sleep(0.5)
        left = [j.slurm_id for j in jobs if j.result is None]
        if left:
            self.log(f"slurm: jobs {', '.join(left)} still listed by squeue after scancel")
        self._jobs.clear()
        return [int(i) for i in ids]

    @property
    def running(self) -> int:
        """Client jobs queued or running in Slurm, or waiting to be accepted."""
        return len(self._jobs)

    def pids(self) -> list[int]:
        """The Slurm job ids of the client jobs (there are no local pids)."""
        return [int(j.slurm_id) for j in self._jobs.values() if j.slurm_id]

    def slurm_job_ids(self) -> dict[Hashable, str]:
        """``{job_id: Slurm job id}`` of the accepted client jobs."""
        return {k: j.slurm_id for k, j in self._jobs.items() if j.slurm_id}

    # -- the server ---------------------------------------------------------------
    def submit_server(self, argv: Sequence[str], script_path: str | os.PathLike,
                      log_path: str | os.PathLike, ntasks: int,
                      env: Mapping[str, str] | None = None,
                      mpi: Sequence[str] = ("srun", "--mpi=pmi2")) -> SlurmServerJob:
        """Submit the server: a batch script (written to ``script_path``) that
        runs ``argv`` (``python -m melissa_sa.server.main study.json``) as
        ``ntasks`` MPI tasks with ``mpi`` (``srun --mpi=pmi2``: one
        communicator across nodes; the mpich wheel's ``mpiexec`` also works
        inside a job). Refusals are retried like a client's."""
        if self._server is not None and self._server.result is None:
            raise SchedulerError(f"the server job {self._server.slurm_id} is still active")
        launch = [*mpi, "-n", str(ntasks)] if mpi else []
        text = ("#!/bin/sh\n# melissa-sa server as a Slurm job (melissa_sa.launcher.slurm)\n"
                f"exec {shlex.join([*launch, *argv])}\n")
        path = Path(script_path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        name = f"{self.prefix}-server"
        sbatch = ["sbatch", *self.server_args, "--parsable", f"--job-name={name}",
                  f"--ntasks={ntasks}", f"--output={log_path}", "--open-mode=append",
                  *([f"--chdir={self.cwd}"] if self.cwd else [])]
        job = _BatchJob("server", name, sbatch, str(path), {**self.env, **(env or {})})
        self._server = job
        self._submit(job)
        return SlurmServerJob(self, job)

    # -- internals -------------------------------------------------------------------
    def _submit_waiting(self) -> None:
        """Submit, in order, the jobs sbatch has not accepted yet (unless backing off)."""
        waiting = [j for j in ([self._server] if self._server else []) + list(self._jobs.values())
                   if j.slurm_id is None and j.result is None and not j.cancelled]
        for job in waiting:
            if time.monotonic() < self._retry_at or not self._submit(job):
                break

    def _submit(self, job: _BatchJob) -> bool:
        if time.monotonic() < self._retry_at:
            return False
        res = self.slurm.run([*job.argv, job.script], env=job.env)
        slurm_id = res.stdout.strip().split(";")[0] if res.returncode == 0 else ""
        if res.returncode == 0 and slurm_id.isdigit():
            job.slurm_id, job.state = slurm_id, "PENDING"
            self.stats["submitted"] += 1
            if self._refused:
                self.log(f"slurm: sbatch accepts jobs again after {self._refused} refusal(s)")
            self._refused, self._delay = 0, 0.0
            return True
        self._refused += 1
        self.stats["refused"] += 1
        self._delay = min(self.backoff[1], max(self.backoff[0], 2 * self._delay))
        self._retry_at = time.monotonic() + self._delay
        why = _short(res.stderr or res.stdout or f"exit code {res.returncode}")
        self.log(f"slurm: sbatch refused {job.name} ({why}); it stays queued, next attempt "
                 f"in {self._delay:g} s")
        return False

    def _cancel_job(self, job: _BatchJob) -> None:
        self._cancel_jobs([job])

    def _cancel_jobs(self, jobs: Iterable[_BatchJob]) -> list[str]:
        ids = []
        for job in jobs:
            if job.result is not None:
                continue
            job.cancelled = True
            if job.slurm_id is None:  # never accepted: nothing to stop
                job.result = ("cancelled", -signal.SIGTERM)
            else:
                ids.append(job.slurm_id)
        if ids:
            res = self.slurm.run(["scancel", *ids])
            if res.returncode != 0:
                self.log(f"slurm: scancel {' '.join(ids)}: {_short(res.stderr)}")
        return ids

    def _refresh(self, force: bool = False) -> None:
        """One squeue call for every active job (at most every poll_interval s)."""
        now = time.monotonic()
        if not force and now - self._last_query < self.poll_interval:
            return
        jobs = [j for j in ([self._server] if self._server else []) + list(self._jobs.values())
                if j.slurm_id is not None and j.result is None]
        if not jobs:
            return
        self._last_query = now
        self.stats["squeue_calls"] += 1
        states = self.slurm.queue([j.slurm_id for j in jobs])
        if states is None:
            if not self._squeue_failing:
                self.log("slurm: squeue fails; jobs keep their last known state until it "
                         "answers again")
            self._squeue_failing = True
            return
        self._squeue_failing = False
        for job in jobs:
            state = states.get(job.slurm_id)
            if state is not None and state not in FINAL_STATES:
                job.state = state
                continue
            self._finish(job, state)

    def _finish(self, job: _BatchJob, state: str | None) -> None:
        """The job left the queue (final ``state``, or None if squeue forgot it)."""
        rc = 0 if state == "COMPLETED" else None
        if state != "COMPLETED":
            final = self.slurm.final(job.slurm_id)
            if final is not None:
                state, rc = final[0] or state, final[1]
        job.state = state or "UNKNOWN"
        if job.cancelled:
            job.result = ("cancelled", rc if rc is not None else -signal.SIGTERM)
        elif state == "COMPLETED" and (rc or 0) == 0:
            job.result = ("finished", 0)
        else:
            if state in CRASH_STATES and not rc:
                rc = -int(CRASH_STATES[state]) if CRASH_STATES[state] else 1
            elif rc is None or rc == 0:
                rc = 1  # unknown end: a crash (the run is redone, never lost)
            job.result = ("failed", rc)
            # a preempted / failed job Slurm may requeue must not run twice
            self.slurm.run(["scancel", job.slurm_id])
            what = "the server" if job is self._server else f"job {job.key}"
            self.log(f"slurm: {what} (Slurm job {job.slurm_id}, {job.name}) ended "
                     f"{job.state}" + ("" if state else ": squeue, scontrol and sacct no "
                                       "longer know it; counted as a crash"))


class SlurmAllocationScheduler(Scheduler):
    """Clients (and the server) as job steps inside the allocation the launcher
    runs in (``SLURM_JOB_ID``, or ``allocation``); see the module docstring.

    ``client_args`` / ``server_args`` are srun options (e.g. ``--mem-per-cpu``).
    Without a memory option a step gets ``--mem=0``: it may use the
    allocation's memory without reserving it, so steps never wait for each
    other's memory.
    """

    name = "slurm-allocation"

    def __init__(self, cwd: str | None = None, env: Mapping[str, str] | None = None,
                 grace: float = 3.0, *, client_args: Sequence[str] = (),
                 server_args: Sequence[str] = (), client_processes: int = 1,
                 allocation: str | None = None, prefix: str = "melissa",
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__(cwd, env, grace)
        self.allocation = allocation or self.env.get("SLURM_JOB_ID")
        if not self.allocation:
            raise SchedulerError(
                'scheduler "slurm-allocation" runs inside an allocation: start the launcher '
                "from salloc or an sbatch script (SLURM_JOB_ID is not set)")
        self.client_args = _split_options(client_args)
        self.server_args = _split_options(server_args)
        self.client_processes = int(client_processes)
        self.prefix = prefix
        self.log = log or _LOG.warning
        self._procs: dict[Hashable, JobHandle] = {}

    from_config = classmethod(SlurmScheduler.from_config.__func__)

    def _srun(self, name: str, ntasks: int, extra: Sequence[str],
              mpi: Sequence[str] = ()) -> list[str]:
        mem = [] if any(a.startswith("--mem") for a in extra) else ["--mem=0"]
        return ["srun", f"--jobid={self.allocation}", *extra, "--exclusive", *mem,
                f"--job-name={name}", f"--ntasks={ntasks}", *mpi, "--kill-on-bad-exit=1"]

    def server_command(self, argv: Sequence[str], ntasks: int,
                       mpi: Sequence[str] = ("--mpi=pmi2",)) -> list[str]:
        """The command that starts the server as a step: ``srun ... -n P
        --mpi=pmi2 <argv>`` (run it like today's ``mpiexec`` command: the
        launcher's SIGTERM to srun cancels the step)."""
        return [*self._srun(f"{self.prefix}-server", ntasks, self.server_args, mpi), *argv]

    def submit(self, job_id, script_path, log_path, env=None) -> JobHandle:
        if job_id in self._procs:
            raise SchedulerError(f"job {job_id!r} is already running")
        cmd = [*self._srun(f"{self.prefix}-{job_id}", self.client_processes,
                           self.client_args, ("--nodes=1", "--mpi=pmi2")),
               "/bin/sh", os.fspath(script_path)]
        try:
            log = open(log_path, "ab")
        except OSError as exc:
            raise SchedulerError(f"cannot open log {log_path}: {exc.strerror or exc}") from None
        try:
            log.write(f"=== melissa-sa: job {job_id} started {time.strftime('%Y-%m-%d %H:%M:%S')}"
                      f": {shlex.join(cmd)} ===\n".encode())
            log.flush()
            popen = subprocess.Popen(cmd, cwd=self.cwd, env={**self.env, **(env or {})},
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise SchedulerError(f"cannot start srun for {script_path}: "
                                 f"{exc.strerror or exc}") from None
        finally:
            log.close()
        handle = JobHandle(job_id, os.fspath(script_path), os.fspath(log_path),
                           pid=popen.pid, popen=popen)
        self._procs[job_id] = handle
        return handle

    def poll(self) -> list[tuple[Hashable, str, int | None]]:
        done, now = [], time.monotonic()
        for key, job in list(self._procs.items()):
            rc = job.popen.poll()
            if rc is None:
                if job.cancelled and job.kill_at is not None and now >= job.kill_at:
                    job.popen.kill()
                    job.kill_at = None
                continue
            del self._procs[key]
            if rc > 128 and rc != 253:  # srun: 128 + the signal that killed a task
                rc = -(rc - 128)
            if job.cancelled:
                done.append((key, "cancelled", rc))
            elif rc == 0:
                done.append((key, "finished", 0))
            else:
                what = "OUT_OF_MEMORY" if rc == 253 else f"exit {rc}"
                self.log(f"slurm: step of job {key} ({self.prefix}-{key}) ended: {what}")
                done.append((key, "failed", rc))
        return done

    def cancel(self, job_id) -> None:
        job = self._procs.get(job_id)
        if job is None or job.cancelled:
            return
        job.cancelled = True
        job.kill_at = time.monotonic() + self.grace
        job.popen.terminate()  # srun cancels its step

    def cancel_all(self, timeout: float | None = None) -> list[int]:
        jobs = list(self._procs.values())
        for key in list(self._procs):
            self.cancel(key)
        deadline = time.monotonic() + (self.grace if timeout is None else timeout)
        for job in jobs:
            try:
                job.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.popen.kill()
                job.popen.wait(10)
        self._procs.clear()
        return [job.pid for job in jobs]

    @property
    def running(self) -> int:
        return len(self._procs)

    def pids(self) -> list[int]:
        return [job.pid for job in self._procs.values()]


def find_study_jobs(prefix: str, env: Mapping[str, str] | None = None,
                    timeout: float = 60.0) -> list[tuple[str, str, str]]:
    """``(job id, name, state)`` of the user's queued or running jobs whose
    name starts with ``prefix`` (a killed launcher's jobs, before a resume)."""
    env = dict(os.environ if env is None else env)
    res = _Slurm(env, timeout).run(["squeue", "--noheader", "--me", "--format=%i|%j|%T"])
    if res.returncode != 0:
        raise SchedulerError(f"squeue failed: {_short(res.stderr)}")
    jobs = []
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and (parts[1] == prefix or parts[1].startswith(prefix + "-")):
            jobs.append((parts[0], parts[1], parts[2]))
    return jobs


def cancel_study_jobs(prefix: str, env: Mapping[str, str] | None = None,
                      timeout: float = 60.0) -> list[str]:
    """scancel the user's jobs named ``prefix`` or ``prefix-*`` (what a killed
    launcher of the study left in the queue) and return their ids. Jobs of
    other studies and other users are never touched."""
    ids = [job for job, _, _ in find_study_jobs(prefix, env, timeout)]
    if ids:
        res = _Slurm(dict(os.environ if env is None else env), timeout).run(["scancel", *ids])
        if res.returncode != 0:
            raise SchedulerError(f"scancel {' '.join(ids)} failed: {_short(res.stderr)}")
    return ids


register_scheduler(SlurmScheduler)
register_scheduler(SlurmAllocationScheduler)
