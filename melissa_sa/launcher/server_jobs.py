"""The server's job: what a scheduler's ``start_server`` answers.

Every server job offers ``poll()`` (None while it runs, then its return
code), ``describe()`` (``pid N`` or ``Slurm job N``, for messages),
``watch()`` (note its processes now and then), ``kill(grace)`` (terminate
all of it, wait, return the pids that survive), ``leftovers()`` (whether
any of it still runs), ``wait()``, ``record()`` (what ``OUT/launcher.json``
says of it), ``launched`` (the command that started it, for messages) and
``tree`` (its :class:`~melissa_sa.launcher.processes.ProcessTree`, or None
without local processes).

:class:`LocalServerJob` is the server as a process tree on this machine
(``mpiexec`` and its ranks, or ``srun`` for a job step); the Slurm batch job
is :class:`~melissa_sa.launcher.slurm.SlurmServerJob`.
"""

from __future__ import annotations

import math
import os
import subprocess
import time

from melissa_sa.launcher.processes import ProcessTree, start_in_session, terminate_trees

__all__ = ["LocalServerJob"]


class LocalServerJob:
    """The server as a process tree on this machine, started in a session of
    its own; ``mpiexec``'s ranks leave its process group, so their pids are
    recorded by scanning ``/proc`` while ``mpiexec`` lives (:meth:`watch`)."""

    #: seconds between two /proc scans for the server's processes;
    #: ``scan_early`` during the first ``scan_early_for`` seconds, while
    #: mpiexec starts the ranks
    scan_interval = 2.0
    scan_early = 0.25
    scan_early_for = 5.0

    def __init__(self, popen: subprocess.Popen, launched: list[str]) -> None:
        self.popen = popen
        self.launched = launched
        self.tree = ProcessTree(popen.pid)
        self.started_at = time.monotonic()
        self._last_scan = -math.inf

    @classmethod
    def start(cls, command: list[str], log_path: str | os.PathLike, header: str, *,
              cwd: str | None, env: dict[str, str]) -> LocalServerJob:
        """Start ``command``, its output appended to ``log_path`` after
        ``header``; raises OSError if it cannot start."""
        popen = start_in_session(command, log_path, header, cwd=cwd, env=env)
        return cls(popen, list(command))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def describe(self) -> str:
        return f"pid {self.pid}"

    def poll(self) -> int | None:
        return self.popen.poll()

    def watch(self) -> None:
        """Record the ranks while mpiexec lives (a /proc scan now and then)."""
        now = time.monotonic()
        interval = (self.scan_early if now - self.started_at < self.scan_early_for
                    else self.scan_interval)
        if now - self._last_scan >= interval:
            self.tree.refresh()
            self._last_scan = now

    def kill(self, grace: float) -> list[int]:
        """Terminate the whole tree (SIGTERM, SIGKILL after ``grace``) and wait
        until all of it is gone; return the pids that survive (only a process
        stuck in the kernel does)."""
        left = terminate_trees([(self.tree, self.popen)], grace=grace)
        try:
            self.popen.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            left = sorted({*left, self.popen.pid})
        return left

    def leftovers(self) -> bool:
        return self.popen.poll() is None or bool(self.tree.alive())

    def wait(self) -> int:
        return self.popen.wait()

    def record(self) -> dict:
        return {"pid": self.popen.pid, "start_time": self.tree.members.get(self.popen.pid),
                "processes": dict(self.tree.members)}
