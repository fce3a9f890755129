"""The launcher and its schedulers (``melissa-sa run``).

:class:`Launcher` starts the server under ``mpiexec``, runs the client jobs
the server submits through a :class:`~melissa_sa.launcher.schedulers.Scheduler`
and watches both; see ``docs/running.md`` and ``docs/internals.md``. Exit
codes are those of :mod:`melissa_sa.exit_codes`.

Modules, by role: ``launcher`` (the loop), ``lifecycle`` and
``lifecycle_events`` (the server's lifecycle, a pure state object: start,
restart, kill, give up, exit codes), ``client_jobs`` (starting, reaping and
stopping the client jobs),
``server_link`` (typed messages with the server), ``server_process`` (the
server under mpiexec), ``jobs`` (the job table, a pure state object),
``claim`` (one launcher per study, ``OUT/launcher.json``), ``claim_rule``
(the rule between two launchers, the take-over token), ``processes``
(process trees by pid), ``output_space`` (``output_dir`` checked before a
study starts: writable, room for a checkpoint set and the results),
``progress`` (what the user sees), ``schedulers``
(the Scheduler interface and the local scheduler), ``server_jobs`` (the
server as a local process tree), ``slurm``, ``slurm_allocation`` and
``slurm_commands`` (the Slurm schedulers). Schedulers are known by name in
:mod:`melissa_sa.scheduler_registry`.
"""

from melissa_sa.launcher.claim import ClaimError
from melissa_sa.launcher.claim_rule import STATE_FORMAT, read_launcher_state
from melissa_sa.launcher.jobs import JobTable
from melissa_sa.launcher.launcher import Launcher
from melissa_sa.launcher.progress import ProgressDisplay, format_duration
from melissa_sa.launcher.schedulers import JobHandle, LocalScheduler, RunningJobs, Scheduler
from melissa_sa.launcher.server_process import LauncherError, find_mpiexec
from melissa_sa.launcher.slurm import SlurmScheduler
from melissa_sa.launcher.slurm_allocation import SlurmAllocationScheduler
from melissa_sa.scheduler_registry import (
    SchedulerError,
    get_scheduler,
    register_scheduler,
    scheduler_names,
)

__all__ = [
    "Launcher",
    "LauncherError",
    "ClaimError",
    "ProgressDisplay",
    "JobTable",
    "find_mpiexec",
    "format_duration",
    "read_launcher_state",
    "STATE_FORMAT",
    "Scheduler",
    "JobHandle",
    "RunningJobs",
    "LocalScheduler",
    "SlurmScheduler",
    "SlurmAllocationScheduler",
    "SchedulerError",
    "get_scheduler",
    "register_scheduler",
    "scheduler_names",
]
