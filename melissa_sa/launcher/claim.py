"""One launcher per study: ``OUT/launcher.lock``, ``OUT/launcher.json`` and the
orphans of a launcher that was killed.

:meth:`StudyClaim.acquire` locks ``OUT/launcher.lock`` (``flock``, released by
the kernel when the launcher dies), refuses to run if ``OUT/launcher.json``
names a launcher that is still alive, and terminates the processes (server,
clients) left behind by one that was killed. From then on the launcher keeps
``OUT/launcher.json`` up to date (:meth:`StudyClaim.write`, built by
:func:`launcher_state`), refreshes its ``heartbeat`` every
:data:`HEARTBEAT_PERIOD` seconds from a thread of its own (so that a long
step, compiling the kernels or waiting for ``scancel``, never looks like a
death) and marks it finished on the way out (:meth:`StudyClaim.release`).

A launcher on another host cannot check the recorded pid: it goes by the
heartbeat (:mod:`~melissa_sa.launcher.claim_rule`). One too old means the
launcher is gone (killed, or its node died): the new one takes the study over,
if it is the one that creates the take-over token, and checks one heartbeat
period after writing its claim that nobody else wrote one
(:meth:`StudyClaim.confirm`). ``docs/internals.md`` describes the files and
the rule.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from melissa_sa.launcher.claim_rule import (
    HEARTBEAT_PERIOD,
    STATE_FORMAT,
    TakeoverTakenError,
    claim_identity,
    create_takeover_token,
    judge_previous,
    read_launcher_state,
)
from melissa_sa.launcher.processes import ProcessTree, process_start_time, terminate_trees

try:
    import fcntl
except ImportError:  # not POSIX: no lock, OUT/launcher.json only
    fcntl = None

__all__ = ["StudyClaim", "ClaimError", "launcher_state"]

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

    ``console`` receives log lines (:class:`~melissa_sa.launcher.progress.Console`);
    ``on_taken_over`` is called once (from any thread) if a launcher on
    another host takes the study over while this one runs (its heartbeat
    went stale: a partition, a frozen node); this one then stops writing.
    """

    def __init__(self, output_dir: str | os.PathLike, console,
                 on_taken_over: Callable[[], None] | None = None) -> None:
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
        #: who took the study over while this launcher ran (its heartbeat
        #: went stale: a partition, a frozen node), or None
        self.taken_over_by: str | None = None
        self._on_taken_over = on_taken_over
        #: ``OUT/launcher.takeover.*`` this launcher created (it took the
        #: study over), removed when it ends
        self.takeover_token: Path | None = None
        self._notes: list[tuple[str, str]] = []  # the heartbeat thread's (key, warning)
        self._noted: set[str] = set()
        self._write_lock = threading.Lock()  # the heartbeat thread writes too
        self._beat_stop = threading.Event()
        self._beat_thread: threading.Thread | None = None

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
                    verdict = judge_previous(previous, self.host, time.time())
                    if verdict.action == "take_over":  # stale, but its node holds the lock
                        raise ClaimError(verdict.lock_held_reason(
                            self.state_path, self.lock_path)) from None
                    if verdict.action == "refuse":  # held from another host
                        raise ClaimError(verdict.reason(self.state_path)) from None
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
        self._beat_stop.clear()
        self._beat_thread = threading.Thread(target=self._beat, name="launcher-heartbeat",
                                             daemon=True)
        self._beat_thread.start()

    def _refusal(self, pid) -> str:
        who = f"another launcher (pid {pid})" if pid else "another launcher"
        return f"{who} is running this study; stop it first (see {self.state_path})"

    def _check_previous(self, prev: dict, stop_grace: float, kill_grace: float) -> None:
        """``OUT/launcher.json`` of an earlier launcher: refuse if that
        launcher lives, terminate what it left running if it is dead."""
        launcher = prev.get("launcher") if isinstance(prev.get("launcher"), dict) else {}
        pid, start = launcher.get("pid"), launcher.get("start_time")
        verdict = judge_previous(prev, self.host, time.time())
        if verdict.action == "refuse":
            raise ClaimError(verdict.reason(self.state_path))
        if verdict.action == "take_over":
            me = {"host": self.host, "pid": os.getpid(), "start_time": self.pid_start}
            try:
                self.takeover_token = create_takeover_token(self.output_dir, prev, me)
            except TakeoverTakenError as exc:
                raise ClaimError(f"{exc}: not taking it over from this launcher") from None
            except OSError as exc:
                raise ClaimError(f"cannot create the take-over token in {self.output_dir} "
                                 f"({exc.strerror or exc}): not taking the study over") from None
            now = read_launcher_state(self.state_path) or {}
            if (claim_identity(now), now.get("heartbeat")) != (claim_identity(prev),
                                                               prev.get("heartbeat")):
                self._drop_token()  # taken over, or alive again, between our reads
                raise ClaimError(f"{self.state_path} changed while this launcher was taking "
                                 f"the study over: run this again to see who runs it")
            self.console.log(verdict.reason(self.state_path))
            left = [what for what, _ in recorded_trees(prev)]
            if left:  # the local scheduler's processes, on a host out of reach
                self.console.log(
                    f"its processes on {verdict.host} ({', '.join(left)}) cannot be stopped "
                    f"from {self.host}; while a server of it lives it holds "
                    f"{self.lock_path.parent}/server.lock and a new one exits (75)")
            return
        if verdict.action == "none":
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
        with self._write_lock:
            if self._store(state):
                self._written = state

    def _beat(self) -> None:
        """The heartbeat thread: the last state written, with a fresh
        ``heartbeat``, every :data:`HEARTBEAT_PERIOD` s until released."""
        while not self._beat_stop.wait(HEARTBEAT_PERIOD):
            with self._write_lock:
                if self.claimed and self._written is not None:
                    self._store(self._written)

    def _store(self, state: dict) -> bool:
        """Write ``state`` with the time and the heartbeat (under the write
        lock); False if it could not be written, or if another launcher has
        taken the study over (its claim is never overwritten)."""
        if self.taken_over_by is not None or self._claimed_by_another():
            return False
        text = json.dumps({**state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "heartbeat": round(time.time(), 3),
                           "heartbeat_period": HEARTBEAT_PERIOD}, indent=1)
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
            os.replace(tmp, self.state_path)
        except OSError as exc:
            self._warn("state", f"cannot write {self.state_path} "
                                            f"({exc.strerror or exc}); another launcher could "
                                            f"not find the processes of this one if it is "
                                            f"killed")
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False
        return True

    def _claimed_by_another(self) -> bool:
        """True (and :attr:`taken_over_by` set) if ``OUT/launcher.json`` now
        names another launcher, in any state: one on another host took the
        study over while this one's heartbeat was stale."""
        if self._written is None:
            return False  # the first write is this launcher's claim
        current = read_launcher_state(self.state_path)
        if not current:
            return False
        host, pid, _ = claim_identity(current)
        if claim_identity(current) == (self.host, os.getpid(), self.pid_start):
            return False
        # another launcher's claim, running or already finished: never overwritten
        self.taken_over_by = f"host {host} pid {pid}"
        if self._on_taken_over is not None:
            self._on_taken_over()
        return True

    def confirm(self, wait: float | None = None) -> None:
        """After a take-over, ``wait`` s (a heartbeat period) after the first
        write: raise :class:`ClaimError` if ``OUT/launcher.json`` names
        another launcher by then (one that judged the same stale claim and
        wrote after this one). Nothing to wait for otherwise."""
        if self.takeover_token is None:
            return
        time.sleep(HEARTBEAT_PERIOD if wait is None else wait)
        with self._write_lock:
            mine = self.taken_over_by is None and not self._claimed_by_another()
        if not mine:
            raise ClaimError(f"this study was taken over by {self.taken_over_by} right after "
                             f"this launcher claimed it ({self.state_path}); this launcher "
                             f"stops")

    def notes(self) -> list[tuple[str, str]]:
        """The heartbeat thread's warnings since the last call, as ``(key,
        text)`` for ``Console.warn_once`` (the main loop prints them, so that
        they never cut through the progress bar, once per key whichever
        thread met the failure)."""
        with self._write_lock:
            said, self._notes = self._notes, []
        return said

    def _warn(self, key: str, text: str) -> None:
        if threading.current_thread() is self._beat_thread:
            if key not in self._noted:
                self._noted.add(key)
                self._notes.append((key, text))
        else:
            self.console.warn_once(key, text)

    def _drop_token(self) -> None:
        if self.takeover_token is not None:
            try:
                os.unlink(self.takeover_token)
            except OSError:
                pass
            self.takeover_token = None

    def release(self, final_state: dict | None) -> None:
        """The launcher ends: write ``final_state`` (if claimed), unlock."""
        self._beat_stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join()
            self._beat_thread = None
        try:
            if self.claimed and final_state is not None:
                self.write(final_state, force=True)
        finally:
            self.claimed = False
            self._drop_token()
            if self._key is not None:
                _ACTIVE_OUTPUT_DIRS.discard(self._key)
                self._key = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None
