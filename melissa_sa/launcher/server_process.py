"""The server process: its command, its environment, starting it, watching
its process tree, and terminating all of it.

``<venv>/bin/mpiexec -n P [mpiexec_args] <python> -m melissa_sa.server.main
<config>`` runs in a session of its own, in the config file's directory, with
``MELISSA_LAUNCHER_ADDRESS``, ``MELISSA_RESTART``, ``MELISSA_FAULT_TOLERANCE``,
one Numba/OpenMP thread per rank and the venv's ``bin/`` first on ``PATH``;
its output is appended to ``OUT/logs/server.log`` after a header line.
``mpiexec``'s ranks leave its process group, so their pids are recorded by
scanning ``/proc`` while ``mpiexec`` lives (:meth:`ServerProcess.watch`).

Under ``"slurm"`` the server is a batch job instead
(:meth:`~melissa_sa.launcher.slurm.SlurmScheduler.submit_server`, script
``OUT/server.sh``, ranks started by the venv's ``mpiexec`` inside the job): :attr:`popen` is
then a :class:`~melissa_sa.launcher.slurm.SlurmServerJob` (``poll`` /
``terminate``, no local pid). Under ``"slurm-allocation"`` it is the job step
``srun ... -n P --mpi=pmi2 python -m melissa_sa.server.main`` run like
``mpiexec`` (SIGTERM to srun cancels the step).
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from melissa_sa.auth import SECRET_FILE, SECRET_FILE_ENV
from melissa_sa.launcher.processes import (
    ProcessTree,
    start_in_session,
    tail_lines,
    terminate_trees,
)

__all__ = ["ServerProcess", "LauncherError", "find_mpiexec", "path_with_venv"]


class LauncherError(RuntimeError):
    """The launcher cannot start the study (e.g. no mpiexec)."""


def find_mpiexec() -> str:
    """``mpiexec`` next to ``sys.executable`` (the ``mpich`` wheel puts it there).

    Falls back to the first ``mpiexec`` on ``PATH``; raises
    :class:`LauncherError` if there is none.
    """
    candidate = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("mpiexec")
    if found:
        return found
    raise LauncherError(f"mpiexec not found next to {sys.executable} nor on PATH; "
                        f"install the MPI runtime into this environment: "
                        f"pip install mpich")


def path_with_venv(env: dict[str, str]) -> str:
    """``env``'s PATH with this interpreter's ``bin/`` first (once)."""
    venv_bin = os.path.dirname(sys.executable)
    parts = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != venv_bin]
    return os.pathsep.join([venv_bin, *parts])


class ServerProcess:
    """The server of one study: one process (tree) at a time.

    ``cfg`` is the study's config, ``config_path`` its file (given to the
    server), ``command`` replaces the server command (tests use a stand-in
    server; the environment is the same).
    """

    #: seconds between two /proc scans for the server's processes;
    #: ``scan_early`` during the first ``scan_early_for`` seconds, while
    #: mpiexec starts the ranks
    scan_interval = 2.0
    scan_early = 0.25
    scan_early_for = 5.0

    def __init__(self, cfg, config_path: str, command: list[str] | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self._command = list(command) if command is not None else None
        self.log_path = Path(cfg.output_dir) / "logs" / "server.log"
        self.popen = None  # subprocess.Popen, or a SlurmServerJob under "slurm"
        self.tree: ProcessTree | None = None
        #: the launcher's scheduler (set before :meth:`start`): Slurm ones start the server
        self.scheduler = None
        self.started_at = 0.0
        self._last_scan = -math.inf

    @property
    def custom(self) -> bool:
        """True if a stand-in command replaces the real server."""
        return self._command is not None

    def server_argv(self) -> list[str]:
        """The server's own command, without the MPI launcher."""
        return [sys.executable, "-m", "melissa_sa.server.main", self.config_path]

    @property
    def batch(self) -> bool:
        """True if the server is a Slurm batch job (no local process)."""
        return not self.custom and hasattr(self.scheduler, "submit_server")

    def command(self) -> list[str]:
        if self._command is not None:
            return list(self._command)
        lc = self.cfg.launcher_config
        n = self.cfg.server_config.server_processes
        if hasattr(self.scheduler, "server_command"):  # slurm-allocation: a job step
            return self.scheduler.server_command(self.server_argv(), ntasks=n)
        if self.batch:  # what OUT/server.sh runs inside the job
            return [find_mpiexec(), *lc.mpiexec_args, "-n", str(n), *self.server_argv()]
        return [find_mpiexec(), "-n", str(n), *lc.mpiexec_args, *self.server_argv()]

    def env(self, address: str | None, restart: bool) -> dict[str, str]:
        """The server's environment (see docs/internals.md, Environment)."""
        env = dict(os.environ)
        secret_file = Path(self.cfg.output_dir) / SECRET_FILE
        if secret_file.exists():
            env[SECRET_FILE_ENV] = str(secret_file)
        env.update({
            "MELISSA_LAUNCHER_ADDRESS": address or "",
            "MELISSA_RESTART": "1" if restart else "0",
            "MELISSA_FAULT_TOLERANCE": "ON" if self.cfg.launcher_config.fault_tolerance else "OFF",
            "NUMBA_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "PATH": path_with_venv(env),
        })
        return env

    def start(self, address: str | None, restart: bool) -> list[str]:
        """Start the server; return its command. Raises :class:`LauncherError`."""
        cmd = self.command()
        env = self.env(address, restart)
        if self.batch:
            script = Path(self.cfg.output_dir) / "server.sh"
            # the venv's mpiexec (hydra) inside the job: it starts the ranks on
            # the job's nodes through Slurm; srun --mpi=pmi2 failed here in
            # MPI_Init now and then (mpich wheel + UCX, docs/cluster.md)
            self.popen = self.scheduler.submit_server(
                self.server_argv(), script, self.log_path,
                ntasks=self.cfg.server_config.server_processes, env=env,
                mpi=[find_mpiexec(), *self.cfg.launcher_config.mpiexec_args])
            self.tree = None
            self.started_at = time.monotonic()
            return ["sbatch", str(script)]
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        header = (f"melissa-sa launcher: server started {stamp} "
                  f"(MELISSA_RESTART={env['MELISSA_RESTART']}): {shlex.join(cmd)}")
        try:
            self.popen = start_in_session(cmd, self.log_path, header, cwd=self.cfg.base_dir,
                                          env=env)
        except OSError as exc:
            raise LauncherError(f"cannot start the server ({cmd[0]}): "
                                f"{exc.strerror or exc}") from None
        self.tree = ProcessTree(self.popen.pid)
        self.started_at = time.monotonic()
        self._last_scan = -math.inf
        return cmd

    def compile_kernels(self, console) -> None:
        """Compile the statistics kernels once, before the first server after
        an install (about 20 s), so that no server makes clients wait."""
        from melissa_sa.warmup import cache_is_stale

        if self.custom or not cache_is_stale():
            return
        console.log("compiling the statistics kernels (first study after an install; "
                    "about 20 s, once)")
        done = subprocess.run([sys.executable, "-m", "melissa_sa.warmup"],
                              env=self.env(None, False), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise LauncherError("compiling the statistics kernels failed:\n"
                                + done.stderr[-2000:])

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def slurm_job_id(self) -> str | None:
        """The server's Slurm job id (``"slurm"`` only)."""
        return getattr(self.popen, "job_id", None)

    def describe(self) -> str:
        """``pid N`` or ``Slurm job N``, for messages."""
        if self.batch:
            return f"Slurm job {self.slurm_job_id or '(not accepted yet)'}"
        return f"pid {self.pid}"

    def poll(self) -> int | None:
        """The exit code, or None while it runs (or was never started)."""
        return self.popen.poll() if self.popen is not None else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def watch(self) -> None:
        """Record the ranks while mpiexec lives (a /proc scan now and then)."""
        now = time.monotonic()
        interval = (self.scan_early if now - self.started_at < self.scan_early_for
                    else self.scan_interval)
        if self.tree is not None and now - self._last_scan >= interval:
            self.tree.refresh()
            self._last_scan = now

    def kill(self, grace: float) -> list[int]:
        """Terminate the whole tree (SIGTERM, SIGKILL after ``grace``) and wait
        until all of it is gone; return the pids that survive (only a process
        stuck in the kernel does)."""
        if self.batch and self.popen is not None:
            return self._cancel_job(grace)
        if self.popen is None or self.tree is None:
            return []
        left = terminate_trees([(self.tree, self.popen)], grace=grace)
        try:
            self.popen.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            left = sorted({*left, self.popen.pid})
        return left

    def _cancel_job(self, grace: float) -> list[int]:
        """scancel the server's job and wait until Slurm says it ended."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=grace + 60.0)
            except subprocess.TimeoutExpired:
                return [int(self.slurm_job_id)] if self.slurm_job_id else []
        return []

    def leftovers(self) -> bool:
        """True if the server or a process of its tree still runs."""
        return self.running or (self.tree is not None and bool(self.tree.alive()))

    def record(self) -> dict | None:
        """The server's processes as ``OUT/launcher.json`` records them."""
        if self.batch and self.popen is not None:
            return {"slurm_job_id": self.slurm_job_id, "pid": None, "processes": {}}
        if self.popen is None or self.tree is None:
            return None
        return {"pid": self.popen.pid, "start_time": self.tree.members.get(self.popen.pid),
                "processes": dict(self.tree.members)}

    def log_tail(self, n: int = 15) -> str:
        """The last lines of ``server.log``, indented, or ""."""
        lines = tail_lines(self.log_path, n)
        if not lines:
            return ""
        body = "\n".join(f"    {line}" for line in lines)
        return f"\n  last lines of {self.log_path}:\n{body}"
