"""The one way melissa-sa waits for MPI: polling with sleeps, never spinning.

A blocking MPI call (``Wait``, ``recv``, ``barrier``, a blocking collective)
busy-spins in both MPICH and Open MPI: on a small machine the waiting rank
takes the core its clients need. Every wait in melissa-sa therefore goes
through :func:`wait_until`, which tests a condition with sleeps that grow
from 0.2 ms up to ``poll_interval``, and on ``timeout`` raises
:class:`MPIWaitTimeout` naming what it waited for: it never gives up
silently. On top of it: :func:`wait_request(s) <wait_requests>`,
:func:`recv_when_ready` (``Iprobe`` then ``recv``), and the small
non-blocking collectives :func:`gather_json`, :func:`bcast_json` and
:func:`dup_comm` (``Igather``/``Ibcast``/``Idup`` completed by polling).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np

__all__ = [
    "MPIWaitTimeout",
    "bcast_json",
    "dup_comm",
    "gather_json",
    "recv_when_ready",
    "wait_requests",
    "wait_until",
]

FIRST_SLEEP = 0.0002


class MPIWaitTimeout(TimeoutError):  # noqa: N818 - named like its base
    """An MPI wait ran out of time; the message says for what and how long."""


def wait_until(done: Callable[[], bool], what: str, *, timeout: float | None = None,
               poll_interval: float = 0.01) -> None:
    """Return once ``done()`` is true; sleep between tests (no busy-spin).

    ``what`` names the awaited event in the :class:`MPIWaitTimeout` raised
    after ``timeout`` seconds (None: wait forever).
    """
    start = time.monotonic()
    sleep = FIRST_SLEEP
    while not done():
        if timeout is not None and time.monotonic() - start > timeout:
            raise MPIWaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(sleep)
        sleep = min(poll_interval, sleep * 2)


def wait_requests(requests, what: str, *, timeout: float | None = None,
                  poll_interval: float = 0.01) -> None:
    """Complete every MPI request of ``requests`` (a list, or one request)."""
    pending = list(requests) if isinstance(requests, (list, tuple)) else [requests]

    def done() -> bool:
        pending[:] = [r for r in pending if not r.Test()]
        return not pending

    wait_until(done, what, timeout=timeout, poll_interval=poll_interval)


def recv_when_ready(comm, source: int, tag: int, what: str, *,
                    timeout: float | None = None, poll_interval: float = 0.01):
    """Receive one (pickled, rank-to-rank) message once ``Iprobe`` sees it."""
    wait_until(lambda: comm.Iprobe(source=source, tag=tag),
               f"{what} from rank {source} (on rank {comm.Get_rank()})",
               timeout=timeout, poll_interval=poll_interval)
    return comm.recv(source=source, tag=tag)


def gather_json(comm, obj, what: str, *, root: int = 0, timeout: float | None = None,
                poll_interval: float = 0.01) -> list | None:
    """Every rank's JSON-able ``obj``, as a list on ``root`` (None elsewhere)."""
    if comm is None or comm.Get_size() == 1:
        return [obj]
    from mpi4py import MPI

    rank, size = comm.Get_rank(), comm.Get_size()
    data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
    n = np.array([data.size], dtype=np.int64)
    counts = np.zeros(size, dtype=np.int64) if rank == root else None
    wait_requests(comm.Igather([n, MPI.INT64_T],
                               [counts, MPI.INT64_T] if rank == root else None, root=root),
                  what, timeout=timeout, poll_interval=poll_interval)
    if rank == root:
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        recv = np.empty(int(counts.sum()), dtype=np.uint8)
        rbuf = [recv, counts.astype(int).tolist(), displs, MPI.BYTE]
    else:
        rbuf = None
    wait_requests(comm.Igatherv([data, MPI.BYTE], rbuf, root=root), what,
                  timeout=timeout, poll_interval=poll_interval)
    if rank != root:
        return None
    return [json.loads(recv[d:d + c].tobytes()) for d, c in zip(displs, counts.tolist())]


def bcast_json(comm, obj, what: str, *, root: int = 0, timeout: float | None = None,
               poll_interval: float = 0.01):
    """``root``'s JSON-able ``obj`` on every rank."""
    if comm is None or comm.Get_size() == 1:
        return obj
    from mpi4py import MPI

    rank = comm.Get_rank()
    data = (np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8).copy()
            if rank == root else None)
    n = np.array([data.size if rank == root else 0], dtype=np.int64)
    wait_requests(comm.Ibcast([n, MPI.INT64_T], root=root), what, timeout=timeout,
                  poll_interval=poll_interval)
    if rank != root:
        data = np.empty(int(n[0]), dtype=np.uint8)
    wait_requests(comm.Ibcast([data, MPI.BYTE], root=root), what, timeout=timeout,
                  poll_interval=poll_interval)
    return json.loads(data.tobytes())


def dup_comm(comm, what: str = "a private communicator", *, timeout: float | None = None,
             poll_interval: float = 0.01):
    """A private duplicate of ``comm`` (non-blocking ``Idup``); ``comm`` if it has
    one rank or is None. The caller frees it."""
    if comm is None or comm.Get_size() == 1:
        return comm
    dup, req = comm.Idup()
    wait_requests(req, what, timeout=timeout, poll_interval=poll_interval)
    return dup
