"""Process bookkeeping for the end-to-end benchmark (``benchmarks/e2e.py``).

Everything the benchmark starts goes through :func:`spawn` and is stopped by
pid and process group (:func:`stop_all`); CPU accounting from ``/proc``;
a line reader that timestamps a child's output as it arrives.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

QUIET_WAIT = [60.0]   # seconds to wait for an idle machine before each measurement

_started: list[subprocess.Popen] = []


def descendants(pids: set[int]) -> set[int]:
    """All descendants of ``pids`` (from /proc)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parent[int(entry)] = ppid
    found, frontier = set(), set(pids)
    while frontier:
        new = {p for p, pp in parent.items() if pp in frontier and p not in found}
        found |= new
        frontier = new
    return found


def spawn(cmd, **kw) -> subprocess.Popen:
    kw.setdefault("start_new_session", True)
    proc = subprocess.Popen([str(c) for c in cmd], **kw)
    _started.append(proc)
    return proc


def stop_all() -> None:
    """Terminate whatever this benchmark started and is still alive."""
    alive = [p for p in _started if p.poll() is None]
    if not alive:
        return
    pids = {p.pid for p in alive} | descendants({p.pid for p in alive})
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(p.poll() is None for p in alive):
            time.sleep(0.05)
    for p in alive:
        try:
            p.wait(1)
        except subprocess.TimeoutExpired:
            pass


def cpu_busy(interval: float = 0.5) -> float:
    """Fraction of the machine's CPU time busy over ``interval`` seconds."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]          # total, idle + iowait
    t0, i0 = sample()
    time.sleep(interval)
    t1, i1 = sample()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (at most ``max_wait`` s) until the machine is nearly idle: others may
    share it. Returns the busy fraction last seen (kept with each result)."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        time.sleep(1.0)
        busy = cpu_busy()
    return busy


def stat_cpu_seconds(raw: str) -> float:
    """utime + stime, in seconds, of the text of a /proc ``stat`` file."""
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_thread_times(pid: int) -> dict[int, tuple[str, float, float]]:
    """``{thread id: (name, user s, system s)}`` of each thread of ``pid``
    (the name ``main`` for the process's own thread, ``ZMQbg/IO/0``, ...)."""
    out: dict[int, tuple[str, float, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = "main" if int(tid) == pid else raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[int(tid)] = (name, int(fields[11]) / tick, int(fields[12]) / tick)
    return out


def proc_thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid``, summed by thread name
    (``main``, ``ZMQbg/IO/0``, ...)."""
    out: dict[str, float] = {}
    for name, user, system in proc_thread_times(pid).values():
        out[name] = out.get(name, 0.0) + user + system
    return out


def self_cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def children_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for children (and theirs)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def find_rank_pid(mpiexec_pid: int, marker: str, timeout: float = 30) -> int | None:
    """The pid of the (single) MPI rank started by ``mpiexec_pid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in descendants({mpiexec_pid}):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if any(marker.encode() in c for c in cmd) and b"mpiexec" not in cmd[0]:
                return pid
        time.sleep(0.05)
    return None


class TreeCpu:
    """CPU seconds of the processes under ``root`` by role, from /proc.

    A thread samples the tree every ``period`` s and keeps each process's last
    utime + stime and role (the first of ``roles``, name -> regex over the
    command line, that matches; ``other`` else). A process's CPU after its
    last sample is missed: :meth:`stop` takes the whole tree's exact total
    (``getrusage(RUSAGE_CHILDREN)`` delta, so the tree must be the only child
    to end meanwhile) and puts what the samples missed in ``remainder_role``
    (the short-lived clients). Long-lived roles (launcher, server) are exact
    to one period.
    """

    def __init__(self, root: int, roles: dict[str, str], remainder_role: str,
                 period: float = 0.25):
        self.root, self.period, self.remainder_role = root, period, remainder_role
        self.roles = [(name, re.compile(rx)) for name, rx in roles.items()]
        self.seen: dict[int, tuple[str, float]] = {}
        self._cpu0 = children_cpu_seconds()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _role(self, pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return "other"
        return next((name for name, rx in self.roles if rx.search(cmd)), "other")

    def _sample(self) -> None:
        for pid in {self.root} | descendants({self.root}):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    cpu = stat_cpu_seconds(f.read())
            except OSError:
                continue
            role = self.seen[pid][0] if pid in self.seen else self._role(pid)
            self.seen[pid] = (role, cpu)

    def _run(self) -> None:
        while not self._done.wait(self.period):
            self._sample()

    def stop(self) -> dict[str, float]:
        """Call after the root has been waited for: CPU seconds by role, and
        ``total``."""
        self._done.set()
        self._thread.join()
        total = children_cpu_seconds() - self._cpu0
        out: dict[str, float] = {}
        for role, cpu in self.seen.values():
            out[role] = out.get(role, 0.0) + cpu
        sampled = sum(out.values())
        out[self.remainder_role] = out.get(self.remainder_role, 0.0) + max(0.0, total - sampled)
        out["total"] = total
        out["processes"] = len(self.seen)
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LineReader:
    """Reads a stream in a thread; every line is kept with its arrival time."""

    def __init__(self, stream, echo=None):
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self._echo = echo
        self.cpu_pid: int | None = None          # sample this process's CPU time ...
        self.cpu_at: dict[int, float] = {}       # ... at each line: line index -> cpu s
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream):
        for raw in iter(stream.readline, b""):
            t = time.time()
            if self.cpu_pid is not None:
                self.cpu_at[len(self.lines)] = proc_thread_cpu(self.cpu_pid)
            line = raw.decode(errors="replace").rstrip("\n")
            with self.cond:
                self.lines.append((t, line))
                self.cond.notify_all()
            if self._echo is not None:
                print(line, file=self._echo, flush=True)
        with self.cond:
            self.lines.append((time.time(), None))  # EOF
            self.cond.notify_all()

    def cpu_of_line(self, pattern: str) -> dict | None:
        rx = re.compile(pattern)
        for i, (_, line) in enumerate(self.lines):
            if line is not None and rx.search(line):
                return self.cpu_at.get(i)
        return None

    def wait_for(self, pattern: str, timeout: float) -> tuple[float, re.Match]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = 0
        with self.cond:
            while True:
                while i < len(self.lines):
                    t, line = self.lines[i]
                    i += 1
                    if line is None:
                        raise RuntimeError(f"stream ended before {pattern!r}:\n" + self.text())
                    m = rx.search(line)
                    if m:
                        return t, m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {pattern!r} within {timeout} s:\n" + self.text())
                self.cond.wait(left)

    def text(self, last: int = 30) -> str:
        return "\n".join(line for _, line in self.lines[-last:] if line is not None)


def read_ready(proc: subprocess.Popen, what: str, timeout: float = 60) -> str:
    """Read one line from a child's stdout (with a timeout)."""
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not out or not out[0]:
        raise RuntimeError(f"{what}: no ready line (exit code {proc.poll()})")
    return out[0].decode().strip()


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""



def rm(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
