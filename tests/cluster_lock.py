"""One user of the namespace cluster at a time (tests/namespace_cluster.py).

Its names, subnets and ``/etc/hosts`` lines are the machine's: a test
session, ``up`` and ``down`` hold an exclusive ``flock`` on the cluster's
lock file while they use it; another process is told who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from slurm_cluster import UnavailableError

__all__ = ["ClusterBusyError", "cluster_lock"]


class ClusterBusyError(UnavailableError):
    """Another process (a test session, ``up`` or ``down``) uses the cluster."""


#: the lock this process holds: path -> [fd, holders]
_HELD: dict[str, list[int]] = {}


@contextlib.contextmanager
def cluster_lock(path: Path):
    """Hold the exclusive lock on ``path`` (``flock``; the kernel drops it if
    this process dies) while the block runs; reentrant within a process.
    Raises :class:`ClusterBusyError`, naming the holder's pid, if another
    process holds it."""
    key = str(path)
    if key in _HELD:
        _HELD[key][1] += 1
    else:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ClusterBusyError(
                f"the namespace cluster (tests/namespace_cluster.py, {path.parent}) is in use "
                f"by another test session or script (pid {holder} holds {path}); run the "
                f"cluster tests again when it has ended") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            os.close(_HELD.pop(key)[0])  # releases the flock
