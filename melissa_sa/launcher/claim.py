"""One launcher per study: ``OUT/launcher.lock``, ``OUT/launcher.json`` and the
orphans of a launcher that was killed.

:meth:`StudyClaim.acquire` locks ``OUT/launcher.lock`` (``flock``, released by
the kernel when the launcher dies), refuses to run if ``OUT/launcher.json``
names a launcher that is still alive, and terminates the processes (server,
clients) left behind by one that was killed. From then on the launcher keeps
``OUT/launcher.json`` up to date (:meth:`StudyClaim.write`, built by
:func:`launcher_state`) and marks it finished on the way out
(:meth:`StudyClaim.release`). ``docs/internals.md`` describes the file.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from melissa_sa.launcher.processes import ProcessTree, process_start_time, terminate_trees

try:
    import fcntl
except ImportError:  # not POSIX: no lock, OUT/launcher.json only
    fcntl = None

__all__ = ["StudyClaim", "ClaimError", "STATE_FORMAT", "read_launcher_state", "launcher_state"]

#: ``format`` of ``OUT/launcher.json``
STATE_FORMAT = "melissa-sa-launcher/1"

# output directories (resolved) of the launchers running in this process
_ACTIVE_OUTPUT_DIRS: set[str] = set()


class ClaimError(RuntimeError):
    """Another launcher runs the study, or its orphans cannot be stopped."""


def boot_id() -> str | None:
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


def _tree_of(entry) -> ProcessTree | None:
    try:
        pid, start = int(entry["pid"]), int(entry["start_time"])
        members = {int(p): int(t) for p, t in entry.get("processes", [])}
    except (KeyError, TypeError, ValueError):
        return None
    return ProcessTree.from_record(pid, start, members) if pid > 0 else None


def recorded_trees(state: dict) -> list[tuple[str, ProcessTree]]:
    """The process trees ``OUT/launcher.json`` records: ``("server", tree)``
    and ``("sim N", tree)``; entries without a usable pid and start time are
    skipped (they could not be told from a recycled pid)."""
    entries = []
    if isinstance(state.get("server"), dict):
        entries.append(("server", state["server"]))
    entries += [(f"sim {c.get('sim_id')}", c) for c in state.get("clients") or []
                if isinstance(c, dict)]
    trees = [(what, _tree_of(entry)) for what, entry in entries]
    return [(what, tree) for what, tree in trees if tree is not None]


def launcher_state(*, final: bool, exit_code: int | None, config_path: str, host: str,
                   boot: str | None, pid_start: int | None, server: dict | None,
                   server_restarts: int, clients: list[dict]) -> dict:
    """The contents of ``OUT/launcher.json`` (see docs/internals.md).

    ``server`` and each of ``clients`` are ``{"pid", "start_time",
    "processes": {pid: start}, ...}``; start times are clock ticks after boot
    (``/proc/<pid>/stat`` field 22): a pid and its start time name one
    process, never a recycled pid. ``final``: the launcher is ending; only
    processes still alive are listed (normally none).
    """
    def entry(e: dict | None) -> dict | None:
        if e is None or e.get("start_time") is None:
            return None
        members = {p: t for p, t in e["processes"].items() if t is not None}
        if final:
            members = {p: t for p, t in members.items() if process_start_time(p) == t}
            if not members:
                return None
        return {**e, "processes": sorted([p, t] for p, t in members.items())}

    listed = [c for c in map(entry, clients) if c is not None]
    return {
        "format": STATE_FORMAT,
        "state": "finished" if final else "running",
        "exit_code": exit_code,
        "host": host,
        "boot_id": boot,
        "config": config_path,
        "launcher": {"pid": os.getpid(), "start_time": pid_start},
        "server": entry(server),
        "server_restarts": server_restarts,
        "clients": sorted(listed, key=lambda c: (c["sim_id"] is None, c["sim_id"] or 0)),
    }


class StudyClaim:
    """This launcher's claim on ``output_dir`` (see the module docstring).

    ``console`` receives log lines (:class:`~melissa_sa.launcher.progress.Console`).
    """

    def __init__(self, output_dir: str | os.PathLike, console) -> None:
        self.output_dir = Path(output_dir)
        self.state_path = self.output_dir / "launcher.json"
        self.lock_path = self.output_dir / "launcher.lock"
        self.console = console
        self.host = socket.gethostname()
        self.boot = boot_id()
        self.pid_start = process_start_time(os.getpid())
        self.claimed = False
        self.orphans_killed = 0
        self._lock_fd: int | None = None
        self._key: str | None = None
        self._written = None

    def acquire(self, stop_grace: float, kill_grace: float) -> None:
        """Claim the study (raises :class:`ClaimError`); orphans of a killed
        launcher get ``stop_grace`` s (the server) or ``kill_grace`` s
        (clients) between SIGTERM and SIGKILL."""
        key = str(self.output_dir.resolve())
        previous = read_launcher_state(self.state_path)
        if key in _ACTIVE_OUTPUT_DIRS:
            raise ClaimError(self._refusal(os.getpid()))
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
                    raise ClaimError(self._refusal(pid)) from None
                self.console.warn_once("lock", f"cannot lock {self.lock_path} "
                                               f"({exc.strerror or exc}); relying on "
                                               f"{self.state_path} alone")
            else:
                self._lock_fd = fd
        if previous is not None:
            self._check_previous(previous, stop_grace, kill_grace)
        self._key = key
        _ACTIVE_OUTPUT_DIRS.add(key)
        self.claimed = True

    def _refusal(self, pid) -> str:
        who = f"another launcher (pid {pid})" if pid else "another launcher"
        return f"{who} is running this study; stop it first (see {self.state_path})"

    def _check_previous(self, prev: dict, stop_grace: float, kill_grace: float) -> None:
        """``OUT/launcher.json`` of an earlier launcher: refuse if that
        launcher lives, terminate what it left running if it is dead."""
        launcher = prev.get("launcher") if isinstance(prev.get("launcher"), dict) else {}
        pid, start = launcher.get("pid"), launcher.get("start_time")
        host = prev.get("host")
        if host and host != self.host:
            if prev.get("state") == "running":
                raise ClaimError(
                    f"{self.state_path} says a launcher (pid {pid}) on host {host} is running "
                    f"this study; it cannot be checked from {self.host}: stop it "
                    f"first, or delete {self.state_path} if it is gone")
            return
        if prev.get("boot_id") and self.boot and prev["boot_id"] != self.boot:
            self.console.debug(f"{self.state_path} is from before a reboot: nothing of it "
                               f"can be running")
            return
        if prev.get("state") != "finished" and isinstance(pid, int) \
                and isinstance(start, int) and pid != os.getpid() \
                and process_start_time(pid) == start:
            raise ClaimError(self._refusal(pid))
        trees = [(what, tree) for what, tree in recorded_trees(prev)
                 if tree.alive() or tree.group_alive()]
        if not trees:
            return
        for _, tree in trees:
            tree.refresh()  # what a still-living root started since
        pids = sorted({p for _, tree in trees for p in tree.alive()})
        groups = [tree.pid for _, tree in trees if not tree.alive()]  # root gone, group not
        names = ", ".join(dict.fromkeys(kind for kind, _ in trees))
        ids = ", ".join([*map(str, pids), *(f"group {g}" for g in groups)])
        self.console.log(f"the previous launcher (pid {pid}) is gone but left processes "
                         f"running ({names}; pids {ids}): terminating these orphans")
        # the server first, with the time it gets to checkpoint on a stop
        left = terminate_trees([(tree, None) for kind, tree in trees if kind == "server"],
                               grace=stop_grace)
        left += terminate_trees([(tree, None) for kind, tree in trees if kind != "server"],
                                grace=kill_grace)
        if left:
            raise ClaimError(
                f"orphan processes of the previous launcher survive SIGKILL (pids "
                f"{', '.join(map(str, left))}); not starting another server")
        self.console.log(f"terminated {len(pids)} orphan process(es) of the previous "
                         f"launcher (pids {ids})")
        self.orphans_killed += len(pids)

    def write(self, state: dict, force: bool = False) -> None:
        """Rewrite ``OUT/launcher.json`` atomically if ``state`` changed."""
        if not self.claimed or (not force and state == self._written):
            return
        text = json.dumps({**state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1)
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
            os.replace(tmp, self.state_path)
        except OSError as exc:
            self.console.warn_once("state", f"cannot write {self.state_path} "
                                            f"({exc.strerror or exc}); another launcher could "
                                            f"not find the processes of this one if it is "
                                            f"killed")
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        self._written = state

    def release(self, final_state: dict | None) -> None:
        """The launcher ends: write ``final_state`` (if claimed), unlock."""
        try:
            if self.claimed and final_state is not None:
                self.write(final_state, force=True)
        finally:
            self.claimed = False
            if self._key is not None:
                _ACTIVE_OUTPUT_DIRS.discard(self._key)
                self._key = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None
