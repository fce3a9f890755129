"""Messages between server ranks: typed, non-blocking, never spinning.

Rank 0's coordinator tells every rank worker, its own included, what the
study decided (:class:`FieldDeclared`, :class:`AttemptsBegin`,
:class:`AttemptStarted`, :class:`Redraw`, :class:`CheckpointNow`,
:class:`StopRanks`, the convergence check's requests); every rank worker
tells the coordinator which runs it received or folded completely
(:class:`RunsReport`) or that it was asked to stop (:class:`SignalReceived`).
Each message is a frozen dataclass sent with ``isend`` (mpi4py pickles it:
the peers are the server's own ranks, never the network) and read with
``Iprobe``, so an idle rank waits in the ZeroMQ poller rather than in a
spinning MPI call.
:class:`RankLink` keeps the pending sends and dispatches what arrives
through the handler tables of its users (:meth:`RankLink.add_handlers`);
on rank 0 a message to itself is handled at once, without MPI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from melissa_sa.exit_codes import StopReason
from melissa_sa.mpi_wait import wait_requests, wait_until

__all__ = [
    "TAG_CONTROL",
    "TAG_REPORT",
    "AttemptStarted",
    "AttemptsBegin",
    "CheckpointNow",
    "FieldDeclared",
    "RankLink",
    "Redraw",
    "RunsReport",
    "SignalReceived",
    "StopRanks",
    "SummaryReport",
    "SummaryRequest",
    "VarianceReport",
    "VarianceRequest",
]

TAG_CONTROL = 11  # rank 0 -> others
TAG_REPORT = 12   # others -> rank 0


@dataclass(frozen=True)
class FieldDeclared:
    """Rank 0 -> all: a client declared field ``name`` with ``n_cells`` cells."""

    name: str
    n_cells: int


@dataclass(frozen=True)
class AttemptsBegin:
    """Rank 0 -> all: this server's attempt tokens follow ``first`` (``first + 1``,
    ``first + 2``, ... modulo 2^32; :mod:`melissa_sa.server.attempts`)."""

    first: int


@dataclass(frozen=True)
class AttemptStarted:
    """Rank 0 -> all, before the welcome: a run of ``sim_id`` said hello for
    ``field_id``; from now on only data carrying ``attempt`` is accepted for them
    (and the incomplete rows an earlier attempt left are forgotten). Also sent,
    with a token given to nobody, for each other field of a simulation whose
    hello carries a higher submission number than before: the old run's data
    of those fields are dropped (:mod:`melissa_sa.server.attempts`)."""

    sim_id: int
    field_id: int
    attempt: int


@dataclass(frozen=True)
class Redraw:
    """Rank 0 -> all: group ``group_id`` was abandoned (and its parameters redrawn
    as a new group: one more group's simulation ids are valid)."""

    group_id: int


@dataclass(frozen=True)
class CheckpointNow:
    """Rank 0 -> all: take part in a checkpoint now."""


@dataclass(frozen=True)
class StopRanks:
    """Rank 0 -> all: leave the loop, for ``reason`` (FINISHED: write the results,
    otherwise take a checkpoint)."""

    reason: StopReason


@dataclass(frozen=True)
class RunsReport:
    """Rank ``rank`` -> 0: the runs that became complete on ``rank``:
    ``received``, every step arrived (folded, or buffered waiting for a
    sibling of the group); ``folded``, every step folded."""

    rank: int
    received: tuple[int, ...] = ()
    folded: tuple[int, ...] = ()


@dataclass(frozen=True)
class SignalReceived:
    """Rank ``rank`` -> 0: this rank received SIGTERM; please stop with a checkpoint."""

    rank: int


@dataclass(frozen=True)
class VarianceRequest:
    """Rank 0 -> all: convergence check ``check_id``, round 1: report your variance totals.
    Answer: :class:`VarianceReport`."""

    check_id: int


@dataclass(frozen=True)
class SummaryRequest:
    """Rank 0 -> all: round 2 of check ``check_id``: the floors per field and time step.
    Answer: :class:`SummaryReport`."""

    check_id: int
    floors: dict  # field name -> tuple of per-step floors


@dataclass(frozen=True)
class VarianceReport:
    """Rank ``rank`` -> 0: its slice's ``VarianceTotals`` (melissa_sa.convergence) per field."""

    rank: int
    check_id: int
    totals: dict


@dataclass(frozen=True)
class SummaryReport:
    """Rank ``rank`` -> 0: its slice's :class:`~melissa_sa.convergence.ConvergenceSummary`."""

    rank: int
    check_id: int
    summary: object


CONTROL = (FieldDeclared, AttemptsBegin, AttemptStarted, Redraw, CheckpointNow, StopRanks,
           VarianceRequest, SummaryRequest)
REPORT = (RunsReport, SignalReceived, VarianceReport, SummaryReport)


class RankLink:
    """Typed messages over ``comm``, dispatched to the handlers of their class."""

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self._handlers: dict[type, Callable] = {}
        self._pending: list = []

    @property
    def is_root(self) -> bool:
        """True on rank 0, where the coordinator lives."""
        return self.rank == 0

    def add_handlers(self, table: dict[type, Callable]) -> None:
        """Handle each message class of ``table`` with its function (a class has one
        handler: a later table's replaces an earlier one's)."""
        self._handlers.update(table)

    def broadcast(self, message) -> None:
        """Rank 0: send a control message to every other rank, then handle it here."""
        assert isinstance(message, CONTROL), message
        for r in range(1, self.size):
            self._pending.append(self.comm.isend(message, dest=r, tag=TAG_CONTROL))
        self._dispatch(message)

    def report(self, message) -> None:
        """Send a report to rank 0 (rank 0 handles its own at once)."""
        assert isinstance(message, REPORT), message
        if self.is_root:
            self._dispatch(message)
        else:
            self._pending.append(self.comm.isend(message, dest=0, tag=TAG_REPORT))

    def drain(self) -> bool:
        """Handle every message waiting for this rank (never blocks); True if any."""
        self._pending = [r for r in self._pending if not r.Test()]
        if self.size == 1:
            return False
        source, tag = (self._any_source(), TAG_REPORT) if self.is_root else (0, TAG_CONTROL)
        handled = False
        while self.comm.Iprobe(source=source, tag=tag):
            self._dispatch(self.comm.recv(source=source, tag=tag))
            handled = True
        return handled

    def wait_for(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        """Handle control messages until ``done()``; MPIWaitTimeout after ``timeout`` s."""
        def check() -> bool:
            self.drain()
            return done()

        wait_until(check, what, timeout=timeout, poll_interval=0.005)

    def flush(self, timeout: float = 30.0) -> None:
        """Complete the pending sends (before closing); MPIWaitTimeout if they cannot."""
        wait_requests(self._pending, f"rank {self.rank}'s last messages to be received",
                      timeout=timeout)
        self._pending = []

    def _dispatch(self, message) -> None:
        handler = self._handlers.get(type(message))
        if handler is None:
            raise TypeError(f"rank {self.rank}: no handler for {type(message).__name__}")
        handler(message)

    @staticmethod
    def _any_source() -> int:
        from mpi4py import MPI
        return MPI.ANY_SOURCE
