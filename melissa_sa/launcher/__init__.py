"""The launcher and its schedulers (``melissa-sa run``).

:class:`Launcher` starts the server under ``mpiexec``, runs the client jobs
the server submits through a :class:`~melissa_sa.launcher.schedulers.Scheduler`
and watches both; see ``docs/running.md`` and ``docs/internals.md``.
"""

from melissa_sa.launcher.launcher import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SERVER_LOCKED,
    Launcher,
    LauncherError,
    Progress,
    find_mpiexec,
    read_launcher_state,
)
from melissa_sa.launcher.schedulers import (
    PLANNED_SCHEDULERS,
    LocalScheduler,
    Scheduler,
    SchedulerError,
    get_scheduler,
    register_scheduler,
    scheduler_names,
)

__all__ = [
    "Launcher",
    "LauncherError",
    "Progress",
    "find_mpiexec",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_CONFIG",
    "EXIT_INTERRUPTED",
    "EXIT_SERVER_LOCKED",
    "read_launcher_state",
    "Scheduler",
    "LocalScheduler",
    "SchedulerError",
    "get_scheduler",
    "register_scheduler",
    "scheduler_names",
    "PLANNED_SCHEDULERS",
]
