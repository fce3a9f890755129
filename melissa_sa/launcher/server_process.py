"""The server process: its command, its environment, starting it through
the scheduler, watching it and terminating all of it.

With the local scheduler, ``<venv>/bin/mpiexec -n P [mpiexec_args] <python>
-m melissa_sa.server.main <config>`` runs in a session of its own, in the
config file's directory, with ``MELISSA_LAUNCHER_ADDRESS``,
``MELISSA_RESTART``, ``MELISSA_FAULT_TOLERANCE``, one Numba/OpenMP thread per
rank and the venv's ``bin/`` first on ``PATH``; its output is appended to
``OUT/logs/server.log`` after a header line. The scheduler decides the
command (:meth:`~melissa_sa.launcher.schedulers.Scheduler.server_command`)
and how it starts (:meth:`~melissa_sa.launcher.schedulers.Scheduler.start_server`):
under ``"slurm"`` the server is a batch job (script ``OUT/server.sh``, ranks
started by the venv's ``mpiexec`` inside the job), under ``"slurm-allocation"``
the job step ``srun ... -n P --mpi=pmi2 python -m melissa_sa.server.main``
run like ``mpiexec`` (SIGTERM to srun cancels the step). What it answers is a
server job (:mod:`~melissa_sa.launcher.server_jobs`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from melissa_sa.auth import SECRET_FILE, SECRET_FILE_ENV
from melissa_sa.launcher.processes import describe_exit, tail_lines
from melissa_sa.launcher.server_jobs import LocalServerJob

__all__ = ["ServerProcess", "LauncherError", "find_mpiexec", "mpiexec_command",
           "path_with_venv", "without_library_dumps"]


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


def mpiexec_command(argv: Sequence[str], ntasks: int,
                    mpiexec_args: Sequence[str] = ()) -> list[str]:
    """``mpiexec -n ntasks [mpiexec_args] argv`` with the venv's ``mpiexec``."""
    return [find_mpiexec(), "-n", str(ntasks), *mpiexec_args, *argv]


def path_with_venv(env: dict[str, str]) -> str:
    """``env``'s PATH with this interpreter's ``bin/`` first (once)."""
    venv_bin = os.path.dirname(sys.executable)
    parts = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != venv_bin]
    return os.pathsep.join([venv_bin, *parts])


class ServerProcess:
    """The server of one study: one job (process tree or batch job) at a time.

    ``cfg`` is the study's config, ``config_path`` its file (given to the
    server), ``command`` replaces the server command (tests use a stand-in
    server, always a local process; the environment is the same).
    """

    def __init__(self, cfg, config_path: str, command: list[str] | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self._command = list(command) if command is not None else None
        self.log_path = Path(cfg.output_dir) / "logs" / "server.log"
        #: the running (or last) server job (:mod:`~melissa_sa.launcher.server_jobs`)
        self.job = None
        #: the launcher's scheduler (set before :meth:`start`): it starts the server
        self.scheduler = None

    @property
    def custom(self) -> bool:
        """True if a stand-in command replaces the real server."""
        return self._command is not None

    def server_argv(self) -> list[str]:
        """The server's own command, without the MPI launcher."""
        return [sys.executable, "-m", "melissa_sa.server.main", self.config_path]

    def command(self) -> list[str]:
        """The command that runs the server (``mpiexec`` on this machine
        before a scheduler is chosen)."""
        if self._command is not None:
            return list(self._command)
        n = self.cfg.server_config.server_processes
        args = self.cfg.launcher_config.mpiexec_args
        if self.scheduler is None:
            return mpiexec_command(self.server_argv(), n, args)
        return self.scheduler.server_command(self.server_argv(), n, args)

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
        """Start the server; return the command that started it. Raises
        :class:`LauncherError`."""
        cmd = self.command()
        env = self.env(address, restart)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        header = (f"melissa-sa launcher: server started {stamp} "
                  f"(MELISSA_RESTART={env['MELISSA_RESTART']}): {shlex.join(cmd)}")
        try:
            if self.custom:
                self.job = LocalServerJob.start(cmd, self.log_path, header,
                                                cwd=self.cfg.base_dir, env=env)
            else:
                self.job = self.scheduler.start_server(
                    cmd, ntasks=self.cfg.server_config.server_processes,
                    log_path=self.log_path, header=header, cwd=self.cfg.base_dir, env=env,
                    script_path=Path(self.cfg.output_dir) / "server.sh")
        except OSError as exc:
            raise LauncherError(f"cannot start the server ({cmd[0]}): "
                                f"{exc.strerror or exc}") from None
        return self.job.launched

    def compile_kernels(self, console) -> None:
        """Compile the statistics kernels once, before the first server after
        an install or an update (about 2.5 min), so that no server makes clients wait."""
        from melissa_sa.warmup import cache_is_stale

        if self.custom or not cache_is_stale():
            return
        console.log("compiling the statistics kernels (first study after an install; "
                    "about 2.5 min, once)")
        # run where the server runs, so that both import the same melissa_sa
        done = subprocess.run([sys.executable, "-m", "melissa_sa.warmup"],
                              cwd=self.cfg.base_dir, env=self.env(None, False),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            raise LauncherError("compiling the statistics kernels failed:\n"
                                + done.stderr[-2000:])

    def describe(self) -> str:
        """``pid N`` or ``Slurm job N``, for messages."""
        return self.job.describe() if self.job is not None else "not started"

    def poll(self) -> int | None:
        """The exit code, or None while it runs (or was never started)."""
        return self.job.poll() if self.job is not None else None

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.poll() is None

    def watch(self) -> None:
        """Note the server's processes (a /proc scan now and then)."""
        if self.job is not None:
            self.job.watch()

    def kill(self, grace: float) -> list[int]:
        """Terminate all of the server (SIGTERM, SIGKILL after ``grace``) and
        wait until it is gone; return the pids that survive."""
        return self.job.kill(grace) if self.job is not None else []

    def terminate(self, console, grace: float) -> list[int]:
        """A failed server: say it is terminated if it runs, :meth:`kill` it."""
        if self.running:
            console.log(f"terminating the server ({self.describe()})")
        return self.kill(grace)

    def end(self, console, grace: float) -> None:
        """An interrupted run ends: say how the server ended, terminating it
        if it still runs."""
        rc = self.poll()
        if rc is not None:
            console.log(f"server ({self.describe()}) {describe_exit(rc)}")
            return
        console.log(f"server ({self.describe()}) still running: terminating it")
        self.kill(grace)
        rc = self.poll()
        console.log(f"server {describe_exit(rc) if rc is not None else 'did not die'}")

    def leftovers(self) -> bool:
        """True if the server or a process of its tree still runs."""
        return self.job is not None and self.job.leftovers()

    def wait(self) -> None:
        if self.job is not None:
            self.job.wait()

    def record(self) -> dict | None:
        """The server's processes as ``OUT/launcher.json`` records them."""
        return self.job.record() if self.job is not None else None

    def log_tail(self, n: int = 15) -> str:
        """The last ``n`` lines of ``server.log``, indented, or "": a
        library's error dump (HDF5's diagnostics, an h5py "Exception ignored"
        report) stays in the log, one line says how much was left out."""
        lines, dropped = without_library_dumps(tail_lines(self.log_path, 4 * n))
        lines = lines[-n:]
        if not lines:
            return ""
        if dropped:
            lines.append(f"({dropped} line(s) of h5py / HDF5 messages left out; they are "
                         f"in the log)")
        body = "\n".join(f"    {line}" for line in lines)
        return f"\n  last lines of {self.log_path}:\n{body}"


#: the first line of a library's error dump: HDF5's diagnostics, and the
#: report of an exception raised where Python cannot raise it (h5py's
#: ``ObjectID.__dealloc__`` on a full disk); h5py also prints a bare
#: traceback of its own frames (``File "h5py/...``)
_DUMP_STARTS = ("HDF5-DIAG: ", "Exception ignored in: ")
_TRACEBACK = "Traceback (most recent call last):"


def _continues(line: str) -> bool:
    """A line inside a dump: indented, a traceback header, or the rest of an
    HDF5 message that holds a newline (``, filename = ...``)."""
    return line[:1].isspace() or line == _TRACEBACK or line.startswith(", ")


def without_library_dumps(lines: Sequence[str]) -> tuple[list[str], int]:
    """``lines`` without the libraries' error dumps, and how many lines went.

    A dump is its first line (:data:`_DUMP_STARTS`, or a traceback whose
    first frame is in h5py), the lines that continue it (:func:`_continues`),
    and, unless it is HDF5's diagnostics, the exception's own line that ends
    it (with its continuation)."""
    kept: list[str] = []
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        h5py_traceback = (line == _TRACEBACK and i + 1 < n
                          and lines[i + 1].lstrip().startswith('File "h5py/'))
        if not (line.startswith(_DUMP_STARTS) or h5py_traceback):
            kept.append(line)
            i += 1
            continue
        i += 1
        while i < n and _continues(lines[i]):
            i += 1
        if not line.startswith("HDF5-DIAG") and i < n:  # the exception's line
            i += 1
            while i < n and lines[i].startswith(", "):
                i += 1
    return kept, len(lines) - len(kept)
