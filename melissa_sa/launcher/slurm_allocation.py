"""``"slurm-allocation"``: clients and the server as job steps of one allocation.

The launcher runs inside one allocation (``salloc`` or an sbatch script);
every client is a job step ``srun --exclusive --nodes=1 --ntasks=k
--mpi=pmi2`` (``--exclusive``: CPUs of its own, which implies ``--exact``
since Slurm 21.08, so steps run side by side instead of each taking every CPU
of its nodes), the server a step ``srun --exclusive --ntasks=P --mpi=pmi2``
(:meth:`SlurmAllocationScheduler.server_command`). The ``srun`` processes are
children of the launcher: their exit status is the step's (128 + signal for a
task killed by a signal, 253 out of memory) and a SIGTERM to ``srun`` cancels
its step. The reference framework calls this mode slurm-global.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Hashable, Mapping, Sequence

from melissa_sa.launcher.processes import process_start_time
from melissa_sa.launcher.schedulers import JobHandle, RunningJobs, Scheduler
from melissa_sa.launcher.slurm_commands import scheduler_options, split_options
from melissa_sa.scheduler_registry import SchedulerError

__all__ = ["SlurmAllocationScheduler"]

_LOG = logging.getLogger("melissa_sa.slurm")


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
        self.client_args = split_options(client_args)
        self.server_args = split_options(server_args)
        self.client_processes = int(client_processes)
        self.prefix = prefix
        self.log = log or _LOG.warning
        self._steps: RunningJobs[JobHandle] = RunningJobs()

    #: reads the srun options, tasks per client and job name prefix
    config_options = staticmethod(scheduler_options)

    def _srun(self, name: str, ntasks: int, extra: Sequence[str],
              mpi: Sequence[str] = ()) -> list[str]:
        mem = [] if any(a.startswith("--mem") for a in extra) else ["--mem=0"]
        return ["srun", f"--jobid={self.allocation}", *extra, "--exclusive", *mem,
                f"--job-name={name}", f"--ntasks={ntasks}", *mpi, "--kill-on-bad-exit=1"]

    def server_command(self, argv: Sequence[str], ntasks: int,
                       mpiexec_args: Sequence[str] = (),
                       mpi: Sequence[str] = ("--mpi=pmi2",)) -> list[str]:
        """The command that starts the server as a step: ``srun ... -n P
        --mpi=pmi2 <argv>`` (``mpiexec_args`` do not apply), started like
        ``mpiexec`` by :meth:`~melissa_sa.launcher.schedulers.Scheduler.start_server`
        (the launcher's SIGTERM to srun cancels the step)."""
        return [*self._srun(f"{self.prefix}-server", ntasks, self.server_args, mpi), *argv]

    def submit(self, job_id, script_path, log_path, env=None) -> JobHandle:
        self._steps.check_free(job_id)
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
        return self._steps.add(job_id, JobHandle(job_id, os.fspath(script_path),
                                                 os.fspath(log_path), pid=popen.pid, popen=popen))

    def poll(self) -> list[tuple[Hashable, str, int | None]]:
        done, now = [], time.monotonic()
        for key, job in self._steps.items():
            rc = job.popen.poll()
            if rc is None:
                if job.cancelled and job.kill_at is not None and now >= job.kill_at:
                    job.popen.kill()
                    job.kill_at = None
                continue
            self._steps.remove(key)
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
        job = self._steps.get(job_id)
        if job is not None and job.begin_cancel(self.grace):
            job.popen.terminate()  # srun cancels its step

    def cancel_all(self, timeout: float | None = None) -> list[int]:
        jobs = self._steps.values()
        for job in jobs:
            self.cancel(job.job_id)
        deadline = time.monotonic() + (self.grace if timeout is None else timeout)
        for job in jobs:
            try:
                job.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.popen.kill()
                job.popen.wait(10)
        self._steps.clear()
        return [job.pid for job in jobs]

    @property
    def running(self) -> int:
        return len(self._steps)

    def pids(self) -> list[int]:
        return [job.pid for job in self._steps.values()]

    def processes(self) -> list[tuple[Hashable, int, dict[int, int]]]:
        """The ``srun`` of each step (recorded in ``OUT/launcher.json``: a
        later launcher terminates a killed one's, which cancels the steps)."""
        found = []
        for key, job in self._steps.items():
            start = process_start_time(job.pid)
            if start is not None:
                found.append((key, job.pid, {job.pid: start}))
        return found

