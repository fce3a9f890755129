"""The launcher: starts the server under ``mpiexec``, runs the clients it asks
for, watches both, and stops everything cleanly.

    >>> from melissa_sa.config import load_config
    >>> from melissa_sa.launcher import Launcher
    >>> Launcher(load_config("study.json"), "study.json").run()   # exit code
    0

What it does (``docs/running.md`` is the user's version, ``docs/internals.md``
the contract with the server):

1. creates ``OUT/``, ``OUT/client_scripts/`` and ``OUT/logs/``;
   claims the study: locks ``OUT/launcher.lock``, refuses to run if
   ``OUT/launcher.json`` names a launcher that is still alive, terminates the
   processes (server, clients) left behind by one that was killed, and from
   then on keeps ``OUT/launcher.json`` up to date (see :meth:`Launcher.state`);
2. binds a ZeroMQ ROUTER on ``tcp://127.0.0.1:<free port>``;
3. starts ``<venv>/bin/mpiexec -n P [mpiexec_args] <python> -m
   melissa_sa.server.main <config>`` in a new session, with
   ``MELISSA_LAUNCHER_ADDRESS``, ``MELISSA_RESTART``,
   ``MELISSA_FAULT_TOLERANCE``, one Numba/OpenMP thread per rank and the
   venv's ``bin/`` first on ``PATH``; its output goes to
   ``OUT/logs/server.log``;
4. loops on a ZeroMQ poller (``poll_interval`` s timeout, never a busy loop):
   runs the client scripts the server submits, at most ``job_limit`` at a time,
   reports each job's state, kills groups or simulations on request, pings
   the server every ``timer_delay`` s, shows progress, and watches the
   server (exit, silence longer than ``server_timeout``); with
   ``fault_tolerance`` a failed server is killed (whole process tree), the
   clients are cancelled and the server is started again, with
   ``MELISSA_RESTART=1`` if a checkpoint manifest exists, at most
   ``max_server_restarts`` times;
5. on the server's ``stop`` waits for it to exit and returns its status; on
   Ctrl-C / SIGTERM asks the server to checkpoint and stop, then terminates
   every process it started, by pid / process group.
"""

from __future__ import annotations

import collections
import errno
import itertools
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import zmq

from melissa_sa.launcher.schedulers import (
    ProcessTree,
    Scheduler,
    SchedulerError,
    get_scheduler,
    process_start_time,
    terminate_trees,
)

try:
    import fcntl
except ImportError:  # not POSIX: no lock, OUT/launcher.json only
    fcntl = None

__all__ = ["Launcher", "LauncherError", "Progress", "EXIT_OK", "EXIT_FAILED", "EXIT_CONFIG",
           "EXIT_INTERRUPTED", "EXIT_SERVER_LOCKED", "STATE_FORMAT", "find_mpiexec",
           "format_duration", "read_launcher_state"]

PREFIX = "[melissa-sa]"

#: exit codes of ``melissa-sa run``
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM gives 143
#: the server's exit code when another server holds ``OUT/server.lock``
#: (EX_TEMPFAIL); never restarted
EXIT_SERVER_LOCKED = 75

#: ``format`` of ``OUT/launcher.json``
STATE_FORMAT = "melissa-sa-launcher/1"

# output directories (resolved) of the launchers running in this process
_ACTIVE_OUTPUT_DIRS: set[str] = set()

JOB_STATES = ("running", "finished", "failed")


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
    import shutil

    found = shutil.which("mpiexec")
    if found:
        return found
    raise LauncherError(f"mpiexec not found next to {sys.executable} nor on PATH; "
                        f"install the MPI runtime into this environment: "
                        f"pip install mpich")


def format_duration(seconds: float) -> str:
    """``25 s``, ``3 min 20 s``, ``2 h 05 min``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _format_rate(rate: float) -> str:
    if rate <= 0 or not math.isfinite(rate):
        return "? groups/s"
    if rate >= 0.1:
        return f"{rate:.2g} groups/s" if rate < 10 else f"{rate:.0f} groups/s"
    return f"{rate * 60:.2g} groups/min"


def _tail(path: str | os.PathLike, n: int = 15, max_bytes: int = 16384) -> list[str]:
    """The last ``n`` lines of a text file ([] if unreadable)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # probably cut in the middle
    return lines[-n:]


def _boot_id() -> str | None:
    """This boot's id (start times in /proc count from the boot)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def read_launcher_state(path: str | os.PathLike) -> dict | None:
    """``OUT/launcher.json`` as a dict, or None if absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _recorded_trees(state: dict) -> list[tuple[str, ProcessTree]]:
    """The process trees ``OUT/launcher.json`` records: ``("server", tree)``
    and ``("sim N", tree)``; entries without a usable pid and start time are
    skipped (they could not be told from a recycled pid)."""
    trees = []

    def tree_of(entry) -> ProcessTree | None:
        try:
            pid, start = int(entry["pid"]), int(entry["start_time"])
            members = {int(p): int(t) for p, t in entry.get("processes", [])}
        except (KeyError, TypeError, ValueError):
            return None
        return ProcessTree.from_record(pid, start, members) if pid > 0 else None

    server = state.get("server")
    if isinstance(server, dict):
        tree = tree_of(server)
        if tree is not None:
            trees.append(("server", tree))
    for client in state.get("clients") or []:
        if isinstance(client, dict):
            tree = tree_of(client)
            if tree is not None:
                trees.append((f"sim {client.get('sim_id')}", tree))
    return trees


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"was killed by {name}"
    return f"exited with code {rc}"


# ---------------------------------------------------------------------------
# progress display


class Progress:
    """Groups done / total, rate and ETA: a tqdm bar or plain log lines.

    ``mode`` is ``"bar"`` (a terminal), ``"lines"`` (logs, CI: at most one line
    every ``interval`` seconds when the count changes, plus the last one) or
    ``"off"``. :meth:`write` prints a message without breaking the bar.
    """

    def __init__(self, mode: str, total: int | None, stream: TextIO | None = None,
                 interval: float = 5.0, resume: bool = False) -> None:
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.done = 0
        self._resume = resume
        self._t0 = time.monotonic()
        self._done0: int | None = None if resume else 0
        self._last_line = -math.inf
        self._last_printed: int | None = None
        self._bar = None

    @staticmethod
    def auto_mode(stream: TextIO | None = None) -> str:
        """``"bar"`` on a terminal outside CI, else ``"lines"``."""
        stream = stream if stream is not None else sys.stderr
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
        return "bar" if tty and not ci else "lines"

    def rate(self) -> float:
        if self._done0 is None:
            return 0.0
        elapsed = time.monotonic() - self._t0
        return (self.done - self._done0) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return math.inf
        return max(self.total - self.done, 0) / rate

    def line(self) -> str:
        total = "?" if self.total is None else str(self.total)
        text = f"{PREFIX} {self.done}/{total} groups done, {_format_rate(self.rate())}"
        if self.total is not None and self.done < self.total:
            text += f", ETA {format_duration(self.eta())}"
        return text

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None and total > 0:
            self.total = int(total)
        done = int(done)
        if self._done0 is None:  # resuming: the rate counts from the first report
            self._done0, self._t0 = done, time.monotonic()
        self.done = done
        if self.mode == "bar":
            self._update_bar()
        elif self.mode == "lines":
            now = time.monotonic()
            final = self.total is not None and done >= self.total
            if done != self._last_printed and (now - self._last_line >= self.interval or final):
                self._print(self.line())
                self._last_line, self._last_printed = now, done

    def _update_bar(self) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=f"{PREFIX} groups",
                             unit="group", file=self.stream, dynamic_ncols=True,
                             smoothing=0.1, leave=True)
        if self.total is not None and self._bar.total != self.total:
            self._bar.total = self.total
        if self.done != self._bar.n:
            self._bar.n = self.done
            self._bar.refresh()

    def _print(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):
            pass

    def write(self, text: str) -> None:
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        else:
            self._print(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ---------------------------------------------------------------------------
# the launcher


@dataclass
class _Pending:
    sim_id: int
    group_id: int | None
    script: str


@dataclass
class _Job:
    sim_id: int
    group_id: int | None
    script: str
    log_path: str
    report: bool = True  # False once superseded / killed / stopping: the server asked


class Launcher:
    """Run one study: the server under mpiexec and the clients it submits.

    ``cfg`` is a :class:`melissa_sa.config.StudyConfig`, ``config_path`` the
    file it came from (given to the server). ``resume`` (or
    ``launcher_config.load_from_checkpoint``) sets ``MELISSA_RESTART=1``.

    ``server_cmd`` replaces the server command (tests use a stand-in server;
    the environment is the same). ``progress`` is None (auto: a bar on a
    terminal, log lines otherwise), ``False``/``"off"``, ``True``/``"bar"`` or
    ``"lines"``. Messages go to ``stream`` (default ``sys.stderr``).

    :meth:`run` returns the exit code: 0 success, 1 study failed (or another
    launcher runs the study), 130 / 143 interrupted by SIGINT / SIGTERM.
    """

    #: seconds the event loop waits on the poller per iteration
    poll_interval = 0.1
    #: seconds the server gets to checkpoint and exit after the launcher's ``stop``
    stop_grace = 15.0
    #: seconds between SIGTERM and SIGKILL when terminating processes
    kill_grace = 3.0
    #: seconds between two plain progress lines
    progress_interval = 5.0
    #: seconds between two /proc scans for the server's processes (mpiexec's
    #: ranks leave its process group); ``server_scan_early`` during the
    #: server's first ``server_scan_early_for`` seconds, while mpiexec starts them
    server_scan_interval = 2.0
    server_scan_early = 0.25
    server_scan_early_for = 5.0

    def __init__(self, cfg, config_path: str | os.PathLike, resume: bool = False, *,
                 server_cmd: list[str] | None = None, verbose: bool = False,
                 progress: bool | str | None = None, stream: TextIO | None = None) -> None:
        self.cfg = cfg
        self.config_path = os.path.abspath(os.fspath(config_path))
        self.resume = bool(resume or cfg.launcher_config.load_from_checkpoint)
        self.verbose = verbose
        self.stream = stream
        self._server_cmd = list(server_cmd) if server_cmd is not None else None
        self._progress_opt = progress

        self.output_dir = Path(cfg.output_dir)
        self.scripts_dir = self.output_dir / "client_scripts"
        self.logs_dir = self.output_dir / "logs"
        self.server_log = self.logs_dir / "server.log"
        self.state_path = self.output_dir / "launcher.json"
        self.lock_path = self.output_dir / "launcher.lock"
        self.manifest_path = Path(cfg.checkpoint_dir) / "manifest.json"
        self.server_lock_path = self.output_dir / "server.lock"

        self.address: str | None = None
        self.server: subprocess.Popen | None = None
        self.server_pid: int | None = None  # the server's own pid (its hello), if told
        self.scheduler: Scheduler | None = None
        self.exit_message = ""  # why the run ended (for callers)
        self.server_restarts = 0  # servers started again after a failure
        self._restarts_in_a_row = 0  # since the last group finished: the budget

        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._poller: zmq.Poller | None = None
        self._server_tree: ProcessTree | None = None
        self._identity: bytes | None = None
        self._delimiter = False
        self._last_msg = 0.0
        self._last_ping = -math.inf
        self._last_scan = -math.inf
        self._server_t0 = 0.0
        self._stale_identities: set[bytes] = set()  # servers that were replaced
        self._claimed = False  # this launcher owns OUT/launcher.json
        self._lock_fd: int | None = None
        self._state_key: str | None = None
        self._state_written: Any = None
        self._pid_start = process_start_time(os.getpid())
        self._host = socket.gethostname()
        self._boot = _boot_id()
        self._stop_msg: dict | None = None
        self._queue: collections.deque[_Pending] = collections.deque()
        self._jobs: dict[int, _Job] = {}
        self._sim_job: dict[int, int] = {}
        self._keys = itertools.count()
        self._signals: list[int] = []
        self._warned: set[str] = set()
        self._bad_messages = 0
        self._groups_total: int | None = cfg.n_groups
        self._progress: Progress | None = None
        self._client_env: dict[str, str] = {}
        self._t0 = time.monotonic()
        #: counters, for summaries and tests
        self.stats = collections.Counter()
        self.max_running = 0

    # -- commands and environments ---------------------------------------------
    def server_command(self) -> list[str]:
        """The command that starts the server (``server_cmd`` if one was given)."""
        if self._server_cmd is not None:
            return list(self._server_cmd)
        lc = self.cfg.launcher_config
        return [find_mpiexec(), "-n", str(self.cfg.server_config.server_processes),
                *lc.mpiexec_args, sys.executable, "-m", "melissa_sa.server.main",
                self.config_path]

    @staticmethod
    def _path_with_venv(env: dict[str, str]) -> str:
        venv_bin = os.path.dirname(sys.executable)
        parts = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != venv_bin]
        return os.pathsep.join([venv_bin, *parts])

    def server_env(self) -> dict[str, str]:
        """The server's environment (see docs/internals.md, Environment)."""
        env = dict(os.environ)
        env.update({
            "MELISSA_LAUNCHER_ADDRESS": self.address or "",
            "MELISSA_RESTART": "1" if self.resume else "0",
            "MELISSA_FAULT_TOLERANCE": "ON" if self.cfg.launcher_config.fault_tolerance else "OFF",
            "NUMBA_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "PATH": self._path_with_venv(env),
        })
        return env

    def client_env(self) -> dict[str, str]:
        """The clients' environment: the launcher's, with the venv first on PATH.

        ``MELISSA_SERVER_ADDRESS`` and ``MELISSA_SIMULATION_ID`` are set by the
        client script itself (docs/internals.md).
        """
        env = dict(os.environ)
        for key in ("MELISSA_LAUNCHER_ADDRESS", "MELISSA_RESTART"):
            env.pop(key, None)
        env["PATH"] = self._path_with_venv(env)
        return env

    # -- output -------------------------------------------------------------------
    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def _write(self, text: str) -> None:
        if self._progress is not None:
            self._progress.write(text)
        else:
            try:
                print(text, file=self._out(), flush=True)
            except (OSError, ValueError):
                pass

    def log(self, text: str) -> None:
        self._write(f"{PREFIX} {text}")

    def debug(self, text: str) -> None:
        if self.verbose:
            self._write(f"{PREFIX} {text}")

    def error(self, text: str) -> None:
        self._write(f"{PREFIX} error: {text}")

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._write(f"{PREFIX} warning: {text}")

    def _server_log_tail(self, n: int = 15) -> str:
        lines = _tail(self.server_log, n)
        if not lines:
            return ""
        body = "\n".join(f"    {line}" for line in lines)
        return f"\n  last lines of {self.server_log}:\n{body}"

    # -- run ------------------------------------------------------------------------
    def run(self) -> int:
        """Run the study to its end; return the exit code."""
        self._t0 = time.monotonic()
        old_handlers = self._install_signal_handlers()
        code = EXIT_FAILED
        try:
            try:
                self._prepare()
                self._claim_study()
                self._compile_kernels()
                self._start_server()
            except (LauncherError, SchedulerError, NotImplementedError, OSError,
                    zmq.ZMQError) as exc:
                self.exit_message = str(exc)
                self.error(str(exc))
                return EXIT_FAILED
            code = self._loop()
            return code
        except KeyboardInterrupt:  # only without our handlers (not the main thread)
            code = self._interrupt(signal.SIGINT)
            return code
        finally:
            try:
                self._cleanup()
            finally:
                self._release_study(code)
                self._restore_signal_handlers(old_handlers)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, self._on_signal)
        return old

    @staticmethod
    def _restore_signal_handlers(old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum, frame) -> None:
        self._signals.append(signum)

    def _prepare(self) -> None:
        for d in (self.output_dir, self.scripts_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        mode = self._progress_opt
        if mode is None:
            mode = Progress.auto_mode(self._out())
        elif mode is True:
            mode = "bar"
        elif mode is False:
            mode = "off"
        self._progress = Progress(mode, self._groups_total, self._out(),
                                  interval=self.progress_interval, resume=self.resume)
        cls = get_scheduler(self.cfg.launcher_config.scheduler)
        self._client_env = self.client_env()
        self.scheduler = cls(cwd=self.cfg.base_dir, env=self._client_env, grace=self.kill_grace)

        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind("tcp://127.0.0.1:*")
        self._sock = sock
        self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)

    # -- one launcher, one server per study: OUT/launcher.lock, OUT/launcher.json ------
    def _claim_study(self) -> None:
        """Make sure no other launcher runs this study and nothing is left of
        one that was killed; then own ``OUT/launcher.json``.

        Raises :class:`LauncherError` if another launcher is alive (it holds
        ``OUT/launcher.lock``, or ``OUT/launcher.json`` names a live process),
        or if the processes a killed launcher left behind cannot be stopped.
        """
        key = str(self.output_dir.resolve())
        previous = read_launcher_state(self.state_path)
        if key in _ACTIVE_OUTPUT_DIRS:
            raise LauncherError(self._refusal(os.getpid()))
        if fcntl is not None:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                         0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    previous = read_launcher_state(self.state_path)  # fresher
                    pid = ((previous or {}).get("launcher") or {}).get("pid")
                    raise LauncherError(self._refusal(pid)) from None
                self._warn_once("lock", f"cannot lock {self.lock_path} ({exc.strerror or exc}); "
                                        f"relying on {self.state_path} alone")
            else:
                self._lock_fd = fd
        if previous is not None:
            self._check_previous(previous)
        self._state_key = key
        _ACTIVE_OUTPUT_DIRS.add(key)
        self._claimed = True
        self._write_state(force=True)

    def _refusal(self, pid) -> str:
        who = f"another launcher (pid {pid})" if pid else "another launcher"
        return f"{who} is running this study; stop it first (see {self.state_path})"

    def _check_previous(self, prev: dict) -> None:
        """``OUT/launcher.json`` of an earlier launcher: refuse if that
        launcher lives, terminate what it left running if it is dead."""
        launcher = prev.get("launcher") if isinstance(prev.get("launcher"), dict) else {}
        pid, start = launcher.get("pid"), launcher.get("start_time")
        host = prev.get("host")
        if host and host != self._host:
            if prev.get("state") == "running":
                raise LauncherError(
                    f"{self.state_path} says a launcher (pid {pid}) on host {host} is running "
                    f"this study; it cannot be checked from {self._host}: stop it "
                    f"first, or delete {self.state_path} if it is gone")
            return
        if prev.get("boot_id") and self._boot and prev["boot_id"] != self._boot:
            self.debug(f"{self.state_path} is from before a reboot: nothing of it can be running")
            return
        if prev.get("state") != "finished" and isinstance(pid, int) \
                and isinstance(start, int) and pid != os.getpid() \
                and process_start_time(pid) == start:
            raise LauncherError(self._refusal(pid))
        trees = [(what, tree) for what, tree in _recorded_trees(prev)
                 if tree.alive() or tree.group_alive()]
        if not trees:
            return
        for _, tree in trees:
            tree.refresh()  # what a still-living root started since
        pids = sorted({p for _, tree in trees for p in tree.alive()})
        groups = [tree.pid for _, tree in trees if not tree.alive()]  # root gone, group not
        names = ", ".join(dict.fromkeys(kind for kind, _ in trees))
        ids = ", ".join([*map(str, pids), *(f"group {g}" for g in groups)])
        self.log(f"the previous launcher (pid {pid}) is gone but left processes running "
                 f"({names}; pids {ids}): terminating these orphans")
        # the server first, with the time it gets to checkpoint on a stop
        left = terminate_trees([(tree, None) for kind, tree in trees if kind == "server"],
                               grace=self.stop_grace)
        left += terminate_trees([(tree, None) for kind, tree in trees if kind != "server"],
                                grace=self.kill_grace)
        if left:
            raise LauncherError(
                f"orphan processes of the previous launcher survive SIGKILL (pids "
                f"{', '.join(map(str, left))}); not starting another server")
        self.log(f"terminated {len(pids)} orphan process(es) of the previous launcher "
                 f"(pids {ids})")
        self.stats["orphans_killed"] += len(pids)

    def state(self, final: bool = False, exit_code: int | None = None) -> dict:
        """What ``OUT/launcher.json`` says now (see docs/internals.md).

        Start times are clock ticks after boot (``/proc/<pid>/stat`` field
        22): a pid and its start time name one process, never a recycled pid.
        ``final``: the launcher is ending; only processes still alive are
        listed (normally none).
        """
        def alive_only(members: dict) -> dict:
            if not final:
                return members
            return {p: t for p, t in members.items() if process_start_time(p) == t}

        server = None
        if self.server is not None and self._server_tree is not None:
            root_start = self._server_tree.members.get(self.server.pid)
            members = alive_only({p: t for p, t in self._server_tree.members.items()
                                  if t is not None})
            if root_start is not None and (members or not final):
                server = {"pid": self.server.pid, "start_time": root_start,
                          "reported_pid": self.server_pid,
                          "restart": self.resume,
                          "processes": sorted([p, t] for p, t in members.items())}
        clients = []
        if self.scheduler is not None:
            for key, pid, members in self.scheduler.processes():
                job = self._jobs.get(key)
                start = members.get(pid)
                members = alive_only(members)
                if start is None or (final and not members):
                    continue
                clients.append({"sim_id": job.sim_id if job else None,
                                "group_id": job.group_id if job else None,
                                "pid": pid, "start_time": start,
                                "processes": sorted([p, t] for p, t in members.items())})
        return {
            "format": STATE_FORMAT,
            "state": "finished" if final else "running",
            "exit_code": exit_code,
            "host": self._host,
            "boot_id": self._boot,
            "config": self.config_path,
            "launcher": {"pid": os.getpid(), "start_time": self._pid_start},
            "server": server,
            "server_restarts": self.server_restarts,
            "clients": sorted(clients, key=lambda c: (c["sim_id"] is None, c["sim_id"] or 0)),
        }

    def _write_state(self, force: bool = False, final: bool = False,
                     exit_code: int | None = None) -> None:
        """Rewrite ``OUT/launcher.json`` atomically if it changed."""
        if not self._claimed:
            return
        state = self.state(final=final, exit_code=exit_code)
        if not force and state == self._state_written:
            return
        text = json.dumps({**state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1)
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
            os.replace(tmp, self.state_path)
        except OSError as exc:
            self._warn_once("state", f"cannot write {self.state_path} "
                                     f"({exc.strerror or exc}); another launcher could not "
                                     f"find the processes of this one if it is killed")
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        self._state_written = state

    def _release_study(self, code: int) -> None:
        """The launcher ends: mark ``OUT/launcher.json`` finished, unlock."""
        try:
            if self._claimed:
                self._write_state(force=True, final=True, exit_code=code)
        finally:
            self._claimed = False
            if self._state_key is not None:
                _ACTIVE_OUTPUT_DIRS.discard(self._state_key)
                self._state_key = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def _compile_kernels(self) -> None:
        """Compile the statistics kernels once, before the first server after
        an install (about 20 s), so that no server makes clients wait."""
        from melissa_sa.warmup import cache_is_stale

        if self._server_cmd is not None or not cache_is_stale():
            return
        self.log("compiling the statistics kernels (first study after an install; "
                 "about 20 s, once)")
        env = dict(self.server_env(), NUMBA_NUM_THREADS="1")
        done = subprocess.run([sys.executable, "-m", "melissa_sa.warmup"], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            raise LauncherError("compiling the statistics kernels failed:\n"
                                + done.stderr[-2000:])

    def _start_server(self) -> None:
        """Start (or, from a failure hook, restart) the server process."""
        cmd = self.server_command()
        env = self.server_env()
        with open(self.server_log, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== melissa-sa launcher: server started {stamp} "
                      f"(MELISSA_RESTART={env['MELISSA_RESTART']}): "
                      f"{shlex.join(cmd)} ===\n".encode())
            log.flush()
            try:
                self.server = subprocess.Popen(cmd, cwd=self.cfg.base_dir, env=env,
                                               stdin=subprocess.DEVNULL, stdout=log,
                                               stderr=subprocess.STDOUT,
                                               start_new_session=True, close_fds=True)
            except OSError as exc:
                raise LauncherError(f"cannot start the server ({cmd[0]}): "
                                    f"{exc.strerror or exc}") from None
        self._server_tree = ProcessTree(self.server.pid)
        if self._identity is not None:
            self._stale_identities.add(self._identity)
        self._identity = None
        self.server_pid = None
        self._stop_msg = None
        self._last_msg = self._server_t0 = time.monotonic()
        self._last_scan = -math.inf
        self.stats["server_starts"] += 1
        restart = " from the checkpoint" if self.resume else ""
        self.log(f"server started{restart} (pid {self.server.pid}, "
                 f"{self.cfg.server_config.server_processes} process(es)); "
                 f"log: {self.server_log}")
        self.debug(f"server command: {shlex.join(cmd)}; launcher at {self.address}")
        self._write_state()

    # -- the event loop ------------------------------------------------------------
    def _loop(self) -> int:
        while True:
            if self._signals:
                return self._interrupt(self._signals[0])
            self._receive(self.poll_interval)
            if self._stop_msg is not None:
                return self._finish()
            self._reap_jobs()
            self._start_jobs()
            reason = self._check_server()
            if reason is not None:
                code = self._on_server_failure(reason)
                if code is not None:
                    return code
            if self.scheduler is not None and self.scheduler.running > self.max_running:
                self.max_running = self.scheduler.running
            self._write_state()

    def _ping(self) -> None:
        """The launcher's heartbeat: ``ping`` every ``timer_delay`` s once the
        server has spoken (the server gives up, after a checkpoint, when it
        hears nothing for ``server_timeout`` s)."""
        now = time.monotonic()
        if self._identity is not None and self._stop_msg is None and now - self._last_ping >= \
                self.cfg.launcher_config.timer_delay:
            self._last_ping = now
            self.send({"type": "ping"})

    def _receive(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for messages from the server; handle all queued."""
        self._ping()
        events = dict(self._poller.poll(int(timeout * 1000)))
        if self._sock not in events:
            return
        for _ in range(10000):
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._handle(frames)

    def _check_server(self) -> str | None:
        """Why the server is to be considered failed, or None if it is fine."""
        rc = self.server.poll()
        if rc is not None:
            # it may have said stop just before exiting: drain what is in flight
            self._receive(0.2)
            if self._stop_msg is not None:
                return None
            if rc == EXIT_SERVER_LOCKED:
                return (f"another server holds {self.server_lock_path} (the server exited "
                        f"with code {rc}): a server of this study is still running, started "
                        f"by another launcher or by hand; stop it first; see {self.server_log}")
            return (f"server {_describe_exit(rc)} before the end of the study; "
                    f"see {self.server_log}")
        silent = time.monotonic() - self._last_msg
        timeout = self.cfg.launcher_config.server_timeout
        if silent > timeout:
            return (f"server silent for {timeout:g} s (no message, not even a ping; "
                    f"launcher_config.server_timeout); see {self.server_log}")
        now = time.monotonic()
        interval = (self.server_scan_early if now - self._server_t0 < self.server_scan_early_for
                    else self.server_scan_interval)
        if now - self._last_scan >= interval:  # remember the ranks while mpiexec lives
            self._server_tree.refresh()
            self._last_scan = now
        return None

    def _on_server_failure(self, reason: str) -> int | None:
        """The server died or went silent: restart it, or end the study.

        Returns an exit code to end the run, or None to go on. In order:

        1. the server's whole process tree is terminated (SIGTERM, SIGKILL
           after ``kill_grace``) and every one of its pids is waited for, so
           that two servers never run at once;
        2. the running clients are cancelled and the queued ones forgotten
           (the new server submits again what it still needs);
        3. unless ``fault_tolerance`` is off, the server exited with 75
           (another server holds ``OUT/server.lock``) or
           ``max_server_restarts`` restarts were used, the server is started
           again, with ``MELISSA_RESTART=1`` if ``OUT/checkpoint/manifest.json``
           exists, else ``MELISSA_RESTART=0``.
        """
        lc = self.cfg.launcher_config
        self.stats["server_failures"] += 1
        rc = self.server.poll() if self.server is not None else None
        self.exit_message = reason
        self.error(reason + self._server_log_tail())
        if self.server is not None and self.server.poll() is None:
            self.log(f"terminating the server (pid {self.server.pid})")
        left = self._kill_server()
        self._drain_stale()
        stopped = self._stop_clients()
        if stopped:
            self.log(f"terminated {len(stopped)} running client job(s) "
                     f"(pids {', '.join(map(str, stopped))})")
        self._write_state()
        resume_hint = (f"continue with: melissa-sa run {shlex.quote(self.config_path)} "
                       f"--resume")
        if left:
            self.exit_message = (f"server processes survive SIGKILL (pids "
                                 f"{', '.join(map(str, left))}); not starting another server")
            self.error(self.exit_message)
            return EXIT_FAILED
        if rc == EXIT_SERVER_LOCKED:
            return EXIT_FAILED
        if not lc.fault_tolerance:
            self.log(f"launcher_config.fault_tolerance is off: the server is not restarted; "
                     f"{resume_hint}")
            return EXIT_FAILED
        if self._restarts_in_a_row >= lc.max_server_restarts:
            self.exit_message = (f"giving up: the server failed {self.stats['server_failures']} "
                                 f"time(s) and was restarted {self.server_restarts} time(s), "
                                 f"{self._restarts_in_a_row} in a row without finishing a group "
                                 f"(launcher_config.max_server_restarts = "
                                 f"{lc.max_server_restarts}); last failure: {reason}")
            self.error(f"{self.exit_message}; {resume_hint}")
            return EXIT_FAILED
        self.server_restarts += 1
        self._restarts_in_a_row += 1
        self.resume = self.manifest_path.is_file()
        n = f"{self._restarts_in_a_row}/{lc.max_server_restarts}"
        if self.resume:
            try:
                age = format_duration(time.time() - self.manifest_path.stat().st_mtime)
            except OSError:
                age = "?"
            self.log(f"restarting the server ({n}) from the checkpoint {self.manifest_path} "
                     f"(written {age} ago): MELISSA_RESTART=1")
        else:
            self.log(f"restarting the server ({n}) from scratch: no checkpoint "
                     f"({self.manifest_path} does not exist): MELISSA_RESTART=0")
        try:
            self._start_server()
        except LauncherError as exc:
            self.exit_message = str(exc)
            self.error(str(exc))
            return EXIT_FAILED
        self.exit_message = ""
        return None

    def _drain_stale(self) -> None:
        """Drop what the dead server sent but was not read yet (a restarted
        server must not inherit its messages)."""
        if self._sock is None:
            return
        dropped = 0
        while self._sock.poll(50, zmq.POLLIN):
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._stale_identities.add(frames[0])
            dropped += 1
        if dropped:
            self.debug(f"dropped {dropped} message(s) of the failed server")

    # -- messages -------------------------------------------------------------------
    def _handle(self, frames: list[bytes]) -> None:
        if frames and frames[0] in self._stale_identities:
            self.stats["stale_messages"] += 1  # from a server that was replaced
            return
        self._last_msg = time.monotonic()
        if len(frames) < 2:
            self._bad("a message without payload")
            return
        identity, rest = frames[0], frames[1:]
        payload = rest[-1]
        try:
            msg = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._bad(f"a message that is not JSON ({exc})")
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self._bad(f"a message without a type: {payload[:80]!r}")
            return
        self._identity = identity
        self._delimiter = len(rest) > 1 and rest[0] == b""
        kind = msg["type"]
        self.stats[f"recv_{kind}"] += 1
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            self._warn_once(f"type:{kind}", f"ignoring server message of unknown type {kind!r}")
            return
        try:
            handler(msg)
        except (KeyError, TypeError, ValueError) as exc:
            self._bad(f"a malformed {kind!r} message ({exc}): {payload[:200]!r}")

    def _bad(self, what: str) -> None:
        self._bad_messages += 1
        self.stats["bad_messages"] += 1
        if self._bad_messages <= 5 or self.verbose:
            self._write(f"{PREFIX} warning: ignoring {what} from the server")

    def send(self, msg: dict) -> bool:
        """Send one JSON message to the server; False if it cannot be delivered."""
        if self._identity is None or self._sock is None:
            self.debug(f"not sent (the server has not said hello yet): {msg}")
            return False
        frames = [self._identity]
        if self._delimiter:
            frames.append(b"")
        frames.append(json.dumps(msg, separators=(",", ":")).encode())
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.stats["send_failures"] += 1
            if exc.errno == zmq.EHOSTUNREACH:
                # the server closed its socket (it is exiting); its exit is
                # watched separately, so this is no news
                self.debug(f"server unreachable, message dropped: {msg}")
            else:
                self._warn_once(f"send:{exc.errno}", f"cannot send to the server ({exc}); "
                                                     f"message dropped: {msg}")
            return False
        self.stats[f"sent_{msg.get('type')}"] += 1
        return True

    def _on_hello(self, msg: dict) -> None:
        self.server_pid = msg.get("pid")
        total = msg.get("groups_total", msg.get("nb_groups"))
        if isinstance(total, int) and total > 0:
            self._groups_total = total
        done = msg.get("groups_done")
        text = (f"server says hello (pid {self.server_pid}, groups_total {total}"
                f"{f', groups_done {done}' if isinstance(done, int) else ''})")
        if self.server_restarts:
            self.log(f"restarted {text}")
        else:
            self.debug(text)
        if isinstance(done, int):
            self._progress.update(done, self._groups_total)
        self._done_at_hello = done if isinstance(done, int) else None

    def _on_ping(self, msg: dict) -> None:
        pass

    def _on_progress(self, msg: dict) -> None:
        done = int(msg["groups_done"])
        total = msg.get("groups_total")
        if total is not None:
            self._groups_total = int(total)
        self._progress.update(done, self._groups_total)
        start = getattr(self, "_done_at_hello", None)
        if self._restarts_in_a_row and start is not None and done > start:
            # the restarted server finished a group: max_server_restarts
            # bounds failures in a row, not over a study of many days
            self.debug(f"the restarted server makes progress ({done} groups done); "
                       f"{self._restarts_in_a_row} restart(s) in a row forgiven")
            self._restarts_in_a_row = 0

    def _on_submit(self, msg: dict) -> None:
        sim_ids = [int(s) for s in msg["sim_ids"]]
        scripts = [str(s) for s in msg["scripts"]]
        if len(sim_ids) != len(scripts):
            raise ValueError(f"{len(sim_ids)} sim_ids but {len(scripts)} scripts")
        group = msg.get("group_id")
        group = int(group) if group is not None else None
        for sim_id, script in zip(sim_ids, scripts):
            if not os.path.isabs(script):
                script = os.path.join(self.output_dir, script)
            self._supersede(sim_id)
            self._queue.append(_Pending(sim_id, group, script))
        self.stats["submitted"] += len(sim_ids)
        self.debug(f"group {group}: {len(sim_ids)} job(s) queued (sims {sim_ids}); "
                   f"{len(self._queue)} waiting, {self.scheduler.running} running")

    def _supersede(self, sim_id: int) -> None:
        """A sim submitted again replaces its queued or running predecessor."""
        before = len(self._queue)
        self._queue = collections.deque(p for p in self._queue if p.sim_id != sim_id)
        key = self._sim_job.pop(sim_id, None)
        if key is not None:
            self._jobs[key].report = False
            self.scheduler.cancel(key)
        if key is not None or len(self._queue) != before:
            self.debug(f"sim {sim_id} resubmitted: previous attempt dropped")

    def _on_kill(self, msg: dict) -> None:
        """``kill`` with ``sim_ids`` (just those simulations, e.g. silent for
        ``simulation_timeout``) or ``group_id`` (the whole group): running jobs
        are terminated, queued ones dropped; none of them is reported."""
        if msg.get("sim_ids") is not None:
            sims = {int(x) for x in msg["sim_ids"]}
            match = lambda sim_id, group_id: sim_id in sims  # noqa: E731
            what = f"sim(s) {', '.join(map(str, sorted(sims)))}"
        elif msg.get("group_id") is not None:
            group = int(msg["group_id"])
            match = lambda sim_id, group_id: group_id == group  # noqa: E731
            what = f"group {group}"
        else:
            raise ValueError("a kill needs sim_ids or group_id")
        before = len(self._queue)
        self._queue = collections.deque(p for p in self._queue
                                        if not match(p.sim_id, p.group_id))
        dropped = before - len(self._queue)
        killed = []
        for key, job in self._jobs.items():
            if job.report and match(job.sim_id, job.group_id):
                job.report = False
                self._sim_job.pop(job.sim_id, None)
                self.scheduler.cancel(key)
                killed.append(job.sim_id)
        self.stats["killed"] += len(killed)
        self.log(f"{what} killed at the server's request: "
                 f"{len(killed)} running job(s) terminated, {dropped} queued dropped")

    def _on_stop(self, msg: dict) -> None:
        self._stop_msg = msg

    def _on_job(self, msg: dict) -> None:  # a server echo of a state: nothing to do
        pass

    # -- jobs -----------------------------------------------------------------------
    def _report(self, job: _Job, state: str, returncode: int | None) -> None:
        self.send({"type": "job", "sim_id": job.sim_id, "group_id": job.group_id,
                   "state": state, "returncode": returncode})

    def _start_jobs(self) -> None:
        limit = self.cfg.launcher_config.job_limit
        while self._queue and self.scheduler.running < limit:
            pending = self._queue.popleft()
            key = next(self._keys)
            log_path = str(self.logs_dir / f"client.{pending.sim_id}.log")
            job = _Job(pending.sim_id, pending.group_id, pending.script, log_path)
            try:
                handle = self.scheduler.submit(key, pending.script, log_path)
            except SchedulerError as exc:
                self.stats["failed"] += 1
                self.error(f"sim {pending.sim_id} (group {pending.group_id}): {exc}")
                self._report(job, "failed", 127)
                continue
            self._jobs[key] = job
            self._sim_job[pending.sim_id] = key
            self.stats["started"] += 1
            self._report(job, "running", None)
            self.debug(f"sim {job.sim_id} (group {job.group_id}) running, pid {handle.pid}")
        self.max_running = max(self.max_running, self.scheduler.running)

    def _reap_jobs(self) -> None:
        for key, state, rc in self.scheduler.poll():
            job = self._jobs.pop(key, None)
            if job is None:
                continue
            if self._sim_job.get(job.sim_id) == key:
                del self._sim_job[job.sim_id]
            if not job.report or state == "cancelled":
                self.debug(f"sim {job.sim_id} (group {job.group_id}) ended after being "
                           f"stopped ({'code ' + str(rc) if rc is not None else 'no code'})")
                continue
            self.stats[state] += 1
            self._report(job, state, rc)
            if state == "failed":
                self.log(f"sim {job.sim_id} (group {job.group_id}) {_describe_exit(rc)}; "
                         f"see {job.log_path}")
            else:
                self.debug(f"sim {job.sim_id} (group {job.group_id}) finished")

    def _stop_clients(self) -> list[int]:
        """Drop the queue and terminate every running client (bounded wait)."""
        self._queue.clear()
        if self.scheduler is None:
            return []
        for job in self._jobs.values():
            job.report = False
        pids = self.scheduler.cancel_all(self.kill_grace)
        self._jobs.clear()
        self._sim_job.clear()
        return pids

    def _kill_server(self) -> list[int]:
        """Terminate the server's process tree (SIGTERM, SIGKILL after
        kill_grace) and wait until all of it is gone; return the pids that
        survive (only a process stuck in the kernel does)."""
        if self.server is None or self._server_tree is None:
            return []
        left = terminate_trees([(self._server_tree, self.server)], grace=self.kill_grace)
        try:
            self.server.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            left = sorted({*left, self.server.pid})
        return left

    # -- endings ---------------------------------------------------------------------
    def _finish(self) -> int:
        """The server said stop: wait for it to exit and return its verdict."""
        msg = self._stop_msg
        status = msg.get("status", 1)
        message = str(msg.get("message") or "")
        self._reap_jobs()
        if self._queue or self._jobs:
            self.log(f"server stopped with {len(self._jobs)} job(s) running and "
                     f"{len(self._queue)} queued: stopping them")
            self._stop_clients()
        wait = max(30.0, self.cfg.launcher_config.server_timeout)
        deadline = time.monotonic() + wait
        while self.server.poll() is None and time.monotonic() < deadline:
            if self._signals:
                self.log("interrupted while waiting for the server to exit")
                self._kill_server()
                return 128 + self._signals[0]
            self._receive(self.poll_interval)
        rc = self.server.poll()
        if rc is None:
            self.exit_message = (f"the server said stop but did not exit within {wait:g} s; "
                                 f"killed it")
            self.error(self.exit_message + self._server_log_tail())
            self._kill_server()
            return EXIT_FAILED
        elapsed = format_duration(time.monotonic() - self._t0)
        if status == 0 and rc == 0:
            self._progress.close()
            done = self._progress.done
            total = self._groups_total
            self.exit_message = message or "study finished"
            self.log(f"study finished in {elapsed}: {done}/{total} groups; "
                     f"results: {self.cfg.results_path}"
                     + (f" ({message})" if message else ""))
            return EXIT_OK
        why = message or "no message"
        self.exit_message = f"study failed: {why} (server status {status}, {_describe_exit(rc)})"
        self.error(f"{self.exit_message} after {elapsed}; see {self.server_log}"
                   + self._server_log_tail())
        return EXIT_FAILED

    def _interrupt(self, signum: int) -> int:
        """Ctrl-C / SIGTERM: checkpoint-and-stop the server, terminate everything."""
        name = signal.Signals(signum).name
        code = 128 + signum
        self.exit_message = f"interrupted by {name}"
        if self._progress is not None:
            self._progress.close()
        self.log(f"{name} received: asking the server to checkpoint and stop "
                 f"(again to kill at once)")
        n_signals = len(self._signals)
        self._queue.clear()
        client_pids = self.scheduler.pids() if self.scheduler is not None else []
        if self.scheduler is not None:
            for key, job in self._jobs.items():
                job.report = False
                self.scheduler.cancel(key)  # SIGTERM now, SIGKILL after kill_grace
        server_alive = self.server is not None and self.server.poll() is None
        if server_alive:
            sent = self.send({"type": "stop", "reason": name})
            if not sent:
                self.log("the server has not connected yet: terminating it")
            else:
                deadline = time.monotonic() + self.stop_grace
                while self.server.poll() is None and time.monotonic() < deadline:
                    if len(self._signals) > max(n_signals, 1):
                        self.log("second signal: killing everything now")
                        break
                    self._receive(self.poll_interval)  # stop / progress messages
                    if self.scheduler is not None:
                        self.scheduler.poll()
            rc = self.server.poll()
            if rc is not None:
                self.log(f"server (pid {self.server.pid}) {_describe_exit(rc)}")
            else:
                self.log(f"server (pid {self.server.pid}) still running: terminating it")
                self._kill_server()
                rc = self.server.poll()
                self.log(f"server {_describe_exit(rc) if rc is not None else 'did not die'}")
        if self.scheduler is not None:
            self.scheduler.cancel_all(self.kill_grace)
            self._jobs.clear()
            self._sim_job.clear()
        if client_pids:
            self.log(f"terminated {len(client_pids)} client job(s) "
                     f"(pids {', '.join(map(str, client_pids))})")
        self.log(f"checkpoint (if the server wrote one): {self.cfg.checkpoint_dir}; "
                 f"continue with: melissa-sa run {shlex.quote(self.config_path)} --resume")
        return code

    def _cleanup(self) -> None:
        """Whatever happened, leave no process and no socket behind."""
        try:
            if self.scheduler is not None and self.scheduler.running:
                self._stop_clients()
            if self.server is not None:
                if self.server.poll() is None or (
                        self._server_tree is not None and self._server_tree.alive()):
                    self._kill_server()
                else:
                    self.server.wait()
        finally:
            if self._progress is not None:
                self._progress.close()
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None
            if self._ctx is not None:
                self._ctx.term()
                self._ctx = None
