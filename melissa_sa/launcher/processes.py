"""Processes by pid: start one in a session of its own, find its tree, stop it.

The one home of how the launcher handles operating-system processes (the
server under ``mpiexec``, the local scheduler's client jobs, the orphans of a
launcher that was killed). Processes are always stopped by process id /
process group, never by name. Each process is started in its own session
(:func:`start_in_session`), so ``os.killpg`` reaches it and everything it
started in its group; processes that left the group (``mpiexec`` puts every
rank in a session of its own) are found by walking ``/proc`` from the root's
pid (:class:`ProcessTree`) and are signalled by pid, after checking that the
pid still names the same process (its start time), so a recycled pid is never
hit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from typing import NamedTuple

__all__ = ["ProcessTree", "terminate_trees", "process_start_time", "children_map",
           "start_in_session", "describe_exit", "tail_lines"]


class _ProcStat(NamedTuple):
    """What ``/proc/<pid>/stat`` says of a process."""

    ppid: int
    pgid: int
    start: int   # clock ticks after boot (field 22)
    state: str   # "Z": zombie


def _stat(pid: int) -> _ProcStat | None:
    """``pid``'s :class:`_ProcStat` from /proc, or None if unknown/gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses
    rest = data[data.rfind(")") + 2:].split()
    try:
        return _ProcStat(int(rest[1]), int(rest[2]), int(rest[19]), rest[0])
    except (IndexError, ValueError):
        return None


def _proc_pids() -> list[int] | None:
    """The pids listed in /proc, or None if /proc cannot be read."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    return [int(name) for name in names if name.isdigit()]


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks after boot, field 22 of
    ``/proc/<pid>/stat``), or None if it is gone or a zombie.

    With the pid it names one process for the life of the machine: a recycled
    pid has another start time.
    """
    st = _stat(pid)
    if st is None or st.state == "Z":
        return None
    return st.start


def children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid in _proc_pids() or ():
        st = _stat(pid)
        if st is not None:
            children.setdefault(st.ppid, []).append(pid)
    return children


def _group_has_live_member(pgid: int) -> bool:
    """True if a non-zombie process is in process group ``pgid`` (/proc scan;
    True if /proc cannot be read).

    ``killpg(pgid, 0)`` also succeeds for a group of zombies (orphans whose
    new parent does not reap them, as PID 1 of some containers)."""
    pids = _proc_pids()
    if pids is None:
        return True
    for pid in pids:
        st = _stat(pid)
        if st is not None and st.pgid == pgid and st.state != "Z":
            return True
    return False


def _alive(pid: int, start: int | None) -> bool:
    """True if ``pid`` is a live (non-zombie) process started at ``start``."""
    st = _stat(pid)
    if st is None:
        if os.path.isdir("/proc"):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return st.state != "Z" and (start is None or st.start == start)


class ProcessTree:
    """A process, its process group and all its descendants, by pid.

    :meth:`refresh` records descendants while the root is alive (once the
    root dies they are re-parented and can no longer be found from it);
    :meth:`signal` signals the root's group and every recorded pid that still
    names the same process.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        st = _stat(pid)
        self.members: dict[int, int | None] = {pid: st.start if st else None}

    @classmethod
    def from_record(cls, pid: int, start: int,
                    members: Mapping[int, int] | None = None) -> ProcessTree:
        """A tree recorded earlier (e.g. by a launcher that was killed): the
        root ``pid`` started at ``start`` and the other ``members`` (pid: start
        time). Only processes that still match their start time are signalled."""
        tree = cls.__new__(cls)
        tree.pid = int(pid)
        tree.members = {int(pid): int(start)}
        for member, member_start in (members or {}).items():
            tree.members.setdefault(int(member), int(member_start))
        return tree

    def refresh(self, children: dict[int, list[int]] | None = None) -> None:
        """Record the root's current descendants (``children``: a shared
        :func:`children_map` snapshot, to scan /proc once for many trees)."""
        if not _alive(self.pid, self.members[self.pid]):
            return
        if children is None:
            children = children_map()
        todo = [self.pid]
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in self.members:
                    st = _stat(child)
                    self.members[child] = st.start if st else None
                    todo.append(child)

    def alive(self) -> list[int]:
        """The recorded pids still alive (zombies count as gone)."""
        return [pid for pid, start in self.members.items() if _alive(pid, start)]

    def _group_is_ours(self) -> bool:
        """True unless the root's pid now names another process.

        While any member of group ``pid`` lives, the kernel does not hand the
        number ``pid`` to a new process; so if a process with that pid exists
        and started at another time, the group is no longer ours.
        """
        st = _stat(self.pid)
        if st is None:
            return True
        start = self.members[self.pid]
        return start is None or st.start == start

    def group_alive(self) -> bool:
        if not self._group_is_ours():
            return False
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return _group_has_live_member(self.pid) if os.path.isdir("/proc") else True

    def signal(self, sig: int) -> None:
        self.refresh()
        if self._group_is_ours():
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid, start in list(self.members.items()):
            if _alive(pid, start):
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass


def terminate_trees(trees: Iterable[tuple[ProcessTree, subprocess.Popen | None]],
                    grace: float = 3.0, poll_interval: float = 0.05,
                    kill_wait: float = 5.0) -> list[int]:
    """SIGTERM every tree, wait up to ``grace`` s, then SIGKILL what is left.

    Waits until every recorded process is gone and reaps the roots; gives up
    ``kill_wait`` s after the SIGKILL (a process stuck in the kernel) and
    returns the pids still alive then (``[]``: all gone).
    """
    trees = list(trees)
    for tree, _ in trees:
        tree.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    killed = False
    while True:
        for _, popen in trees:
            if popen is not None:
                popen.poll()
        left = [t for t, _ in trees if t.alive() or t.group_alive()]
        if not left:
            return []
        now = time.monotonic()
        if now >= deadline:
            if killed:
                if now >= deadline + kill_wait:
                    # unkillable (D state); give up rather than hang
                    return sorted({pid for t in left for pid in t.alive()}
                                  | {t.pid for t in left if t.group_alive()})
            else:
                for tree in left:
                    tree.signal(signal.SIGKILL)
                killed = True
        time.sleep(poll_interval)


def start_in_session(cmd: list[str], log_path: str | os.PathLike, header: str, *,
                     cwd: str | os.PathLike | None, env: Mapping[str, str]) -> subprocess.Popen:
    """Start ``cmd`` in a new session, stdin from /dev/null, stdout and stderr
    appended to ``log_path`` after the line ``=== <header> ===``.

    Raises OSError if the log cannot be opened or the command cannot start.
    """
    with open(log_path, "ab") as log:
        log.write(f"=== {header} ===\n".encode())
        log.flush()
        return subprocess.Popen(cmd, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)


def describe_exit(rc: int) -> str:
    """``exited with code 3`` or ``was killed by SIGKILL`` (``rc`` < 0)."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"was killed by {name}"
    return f"exited with code {rc}"


def tail_lines(path: str | os.PathLike, n: int = 15, max_bytes: int = 16384) -> list[str]:
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
