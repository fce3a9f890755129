"""Slurm schedulers: clients (and the server) as Slurm jobs or job steps.

``"slurm"`` (:class:`SlurmScheduler`)
    Each client run is one batch job (``sbatch --parsable``, options from
    ``launcher_config.scheduler_arg_client``); the server is one batch job
    whose ``server_processes`` tasks start with the given MPI launcher
    (:meth:`SlurmScheduler.start_server`: the venv's ``mpiexec`` inside the
    job, see docs/cluster.md; options from ``scheduler_arg_server``). One
    ``squeue`` call per poll watches every job of the study; a job that left
    ``squeue`` is looked up with ``scontrol show job``, then ``sacct`` (which
    fails on clusters without accounting: that is fine). Jobs are stopped with ``scancel``.
``"slurm-allocation"`` (:class:`~melissa_sa.launcher.slurm_allocation.SlurmAllocationScheduler`,
in :mod:`melissa_sa.launcher.slurm_allocation`)
    Clients and the server as job steps inside the allocation the launcher
    runs in.

Every job is submitted ``--no-requeue``: when its node dies Slurm ends it
NODE_FAIL instead of requeueing it (a requeued job would run again later,
beside the rerun the launcher starts, and a requeued server with the
environment of its first submission, not from its checkpoint).

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
constructor also takes the sbatch / srun options (:func:`scheduler_options`,
the ``config_options`` of both Slurm schedulers, reads them from a study
config).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from melissa_sa.launcher.schedulers import JobHandle, RunningJobs, Scheduler
from melissa_sa.launcher.server_process import find_mpiexec
from melissa_sa.launcher.slurm_commands import (
    CRASH_STATES,
    FINAL_STATES,
    SlurmCommands,
    cancel_study_jobs,
    find_study_jobs,
    pattern_safe,
    scheduler_options,
    short,
    split_options,
)
from melissa_sa.scheduler_registry import SchedulerError

__all__ = ["SlurmScheduler", "SlurmServerJob"]

_LOG = logging.getLogger("melissa_sa.slurm")


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
    """The server's batch job, a server job like
    :class:`~melissa_sa.launcher.server_jobs.LocalServerJob` without local
    processes: :meth:`poll` is None while the job is queued or running, then
    its return code (a crash state gives the job's code, or ``-signal``)."""

    #: no local process tree
    tree = None

    def __init__(self, scheduler: SlurmScheduler, job: _BatchJob) -> None:
        self._scheduler = scheduler
        self._job = job
        self.pid = None
        self.returncode: int | None = None
        self.launched = ["sbatch", job.script]

    @property
    def job_id(self) -> str | None:
        """The Slurm job id (None while sbatch refuses it)."""
        return self._job.slurm_id

    @property
    def state(self) -> str:
        return self._job.state

    def poll(self) -> int | None:
        if self.returncode is None:
            self._scheduler._submit_waiting()  # a refused submission is retried here too
            self._scheduler._refresh()
            if self._job.result is not None:
                self.returncode = self._job.result[1]
        return self.returncode

    def terminate(self) -> None:
        self._scheduler._cancel_job(self._job)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"slurm job {self.job_id}", timeout)
            time.sleep(0.5)
        return self.returncode

    def describe(self) -> str:
        return f"Slurm job {self.job_id or '(not accepted yet)'}"

    def watch(self) -> None:
        """Nothing to note: Slurm knows the job's processes."""

    def kill(self, grace: float) -> list[int]:
        """scancel the job and wait until Slurm says it ended; return the job
        id if it did not within ``grace`` + 60 s."""
        if self.poll() is None:
            self.terminate()
            try:
                self.wait(timeout=grace + 60.0)
            except subprocess.TimeoutExpired:
                return [int(self.job_id)] if self.job_id else []
        return []

    def leftovers(self) -> bool:
        return self.poll() is None

    def record(self) -> dict:
        return {"slurm_job_id": self.job_id, "pid": None, "processes": {}}


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
        self.client_args = split_options(client_args)
        self.server_args = split_options(server_args)
        self.client_processes = int(client_processes)
        self.prefix = prefix
        self.backoff = backoff
        self.log = log or _LOG.warning
        self.slurm = SlurmCommands(self.env, command_timeout)
        self._jobs: RunningJobs[_BatchJob] = RunningJobs()  # clients, in submission order
        self._server: _BatchJob | None = None
        self._retry_at = 0.0
        self._delay = 0.0
        self._refused = 0
        self._last_query = -float("inf")
        self._squeue_failing = False
        self.stats = {"submitted": 0, "refused": 0, "squeue_calls": 0}

    #: reads the sbatch options, tasks per client and job name prefix
    config_options = staticmethod(scheduler_options)

    # -- the Scheduler interface ---------------------------------------------------
    def submit(self, job_id, script_path, log_path, env=None) -> JobHandle:
        self._jobs.check_free(job_id)
        if not os.path.isfile(script_path):
            raise SchedulerError(f"cannot submit {script_path}: no such file")
        full_env = {**self.env, **(env or {})}
        name = f"{self.prefix}-{job_id}"
        argv = ["sbatch", *self.client_args, "--parsable", "--no-requeue", f"--job-name={name}",
                f"--ntasks={self.client_processes}", f"--output={pattern_safe(log_path)}",
                "--open-mode=append", *([f"--chdir={self.cwd}"] if self.cwd else [])]
        job = _BatchJob(job_id, name, argv, os.fspath(script_path), full_env)
        job.handle = JobHandle(job_id, os.fspath(script_path), os.fspath(log_path))
        self._jobs.add(job_id, job)
        self._submit_waiting()
        return job.handle

    def poll(self) -> list[tuple[Hashable, str, int | None]]:
        self._submit_waiting()
        self._refresh()
        done = []
        for key, job in self._jobs.items():
            if job.result is not None:
                self._jobs.remove(key)
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
        jobs = self._jobs.values()
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

    def cancel_orphans(self, log: Callable[[str], None]) -> int:
        """scancel every job named after this study (those of a killed
        launcher: its server and clients) and wait, up to 60 s, until Slurm
        lists none; return how many there were."""
        found = find_study_jobs(self.prefix, self.env)
        if found:
            ids = ", ".join(job for job, _, _ in found)
            log(f"Slurm jobs of this study left by a previous launcher ({ids}): "
                f"cancelling them")
            cancel_study_jobs(self.prefix, self.env)
            deadline = time.monotonic() + 60.0
            while find_study_jobs(self.prefix, self.env) and time.monotonic() < deadline:
                time.sleep(0.5)
        return len(found)

    def record(self, sim_id_of: Callable[[Hashable], int | None]) -> dict:
        """The study's job name prefix and the Slurm job ids of the server
        and of the clients (a later launcher cancels them by name)."""
        server = self._server.slurm_id if self._server is not None else None
        return {"slurm": {
            "job_prefix": self.prefix, "server_job_id": server,
            "client_job_ids": [{"sim_id": sim_id_of(key), "job_id": jid}
                               for key, jid in self.slurm_job_ids().items()]}}

    # -- the server ---------------------------------------------------------------
    def server_command(self, argv: Sequence[str], ntasks: int,
                       mpiexec_args: Sequence[str] = ()) -> list[str]:
        """What ``OUT/server.sh`` runs inside the job: the venv's ``mpiexec``
        (hydra starts the ranks on the job's nodes through Slurm; ``srun
        --mpi=pmi2`` failed in MPI_Init now and then with the mpich wheel and
        UCX, docs/cluster.md)."""
        return [find_mpiexec(), *mpiexec_args, "-n", str(ntasks), *argv]

    def start_server(self, command: list[str], *, ntasks: int, log_path: str | os.PathLike,
                     header: str, cwd: str | None, env: dict[str, str],
                     script_path: str | os.PathLike) -> SlurmServerJob:
        """Submit the server as a batch job of ``ntasks`` tasks whose script
        (``script_path``) runs ``command``; its output is appended to
        ``log_path`` (no header: sbatch writes the file)."""
        return self._submit_server_script(command, script_path, log_path, ntasks, env)

    def submit_server(self, argv: Sequence[str], script_path: str | os.PathLike,
                      log_path: str | os.PathLike, ntasks: int,
                      env: Mapping[str, str] | None = None,
                      mpi: Sequence[str] = ("srun", "--mpi=pmi2", "--kill-on-bad-exit=1"),
                      ) -> SlurmServerJob:
        """Submit the server: a batch script (written to ``script_path``) that
        runs ``argv`` (``python -m melissa_sa.server.main study.json``) as
        ``ntasks`` MPI tasks with ``mpi`` (``srun --mpi=pmi2``: one
        communicator across nodes; the mpich wheel's ``mpiexec`` also works
        inside a job; ``--kill-on-bad-exit=1``: a rank that fails ends the
        job at once, so that it is relaunched instead of waiting for
        ``server_timeout``). Refusals are retried like a client's."""
        launch = [*mpi, "-n", str(ntasks)] if mpi else []
        return self._submit_server_script([*launch, *argv], script_path, log_path, ntasks, env)

    def _submit_server_script(self, command: Sequence[str], script_path: str | os.PathLike,
                              log_path: str | os.PathLike, ntasks: int,
                              env: Mapping[str, str] | None) -> SlurmServerJob:
        if self._server is not None and self._server.result is None:
            raise SchedulerError(f"the server job {self._server.slurm_id} is still active")
        text = ("#!/bin/sh\n# melissa-sa server as a Slurm job (melissa_sa.launcher.slurm)\n"
                f"exec {shlex.join(command)}\n")
        path = Path(script_path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        name = f"{self.prefix}-server"
        sbatch = ["sbatch", *self.server_args, "--parsable", "--no-requeue", f"--job-name={name}",
                  f"--ntasks={ntasks}", f"--output={pattern_safe(log_path)}", "--open-mode=append",
                  *([f"--chdir={self.cwd}"] if self.cwd else [])]
        job = _BatchJob("server", name, sbatch, str(path), {**self.env, **(env or {})})
        self._server = job
        self._submit(job)
        return SlurmServerJob(self, job)

    # -- internals -------------------------------------------------------------------
    def _submit_waiting(self) -> None:
        """Submit, in order, the jobs sbatch has not accepted yet (unless backing off)."""
        waiting = [j for j in ([self._server] if self._server else []) + self._jobs.values()
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
        why = short(res.stderr or res.stdout or f"exit code {res.returncode}")
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
                self.log(f"slurm: scancel {' '.join(ids)}: {short(res.stderr)}")
        return ids

    def _refresh(self, force: bool = False) -> None:
        """One squeue call for every active job (at most every poll_interval s)."""
        now = time.monotonic()
        if not force and now - self._last_query < self.poll_interval:
            return
        jobs = [j for j in ([self._server] if self._server else []) + self._jobs.values()
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

