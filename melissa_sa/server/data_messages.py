"""A rank's data messages: one ZeroMQ message in, a :class:`SimulationData` out,
or the message counted and dropped.

:meth:`DataIntake.receive` decodes the header and payload
(:mod:`melissa_sa.protocol`), checks the header against what the rank knows
(:func:`~melissa_sa.server.intake.check_header`: the field, its cells on this
rank, the simulation id, the time step), and drops a malformed message under
the counter its :class:`~melissa_sa.protocol.ProtocolError` names
(``bad_messages``, written as ``dropped_messages``, see ``docs/results.md``).
A message naming a field rank 0 declared but this rank has not read yet
waits for the declaration, up to :data:`FIELD_WAIT_S` seconds; so does a
message whose attempt token rank 0 may have announced and this rank not
read yet. A message whose token is not the current one of its simulation
and field (:mod:`~melissa_sa.server.attempts`) comes from a run that was
restarted: it is dropped as ``old_attempt`` and logged at debug level.
:class:`ServerStatus` says what :meth:`BaseServer.poll_sockets` saw when it
returned no data. :class:`RankCounters` are the rank's message counters
(saved in its checkpoint, summed in ``results.h5``).
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from melissa_sa.design import GroupLayout
from melissa_sa.mpi_wait import MPIWaitTimeout
from melissa_sa.protocol import DataHeader, ProtocolError, decode_header, decode_payload
from melissa_sa.server.attempts import AttemptBook
from melissa_sa.server.intake import FieldCatalog, check_header
from melissa_sa.server.rank_progress import RankProgress
from melissa_sa.server.ranks import RankLink

__all__ = ["DataIntake", "FIELD_WAIT_S", "RankCounters", "ServerStatus", "SimulationData"]

log = logging.getLogger("melissa_sa.server")

#: seconds a rank waits for rank 0's declaration of a field (or of an
#: attempt token) a message names
FIELD_WAIT_S = 10.0
#: drops that are expected (a restarted run's late messages): logged at debug level
EXPECTED_DROPS = ("old_attempt",)


class ServerStatus(enum.Enum):
    """What :meth:`BaseServer.poll_sockets` saw when it returned no data."""

    TIMEOUT = 0        # nothing arrived within the timeout
    CONTROL = 1        # a handshake, launcher or MPI message was handled
    BAD_MESSAGE = 2    # a malformed data message was counted and dropped
    STOP = 3           # the study is over (or was asked to stop)


@dataclass(slots=True)
class SimulationData:
    """One validated data message: a slice of one field at one time step.

    ``values`` is a read-only view on the received ZeroMQ frame (no copy).
    """

    header: DataHeader
    values: np.ndarray
    group_id: int


@dataclass
class RankCounters:
    """One rank's message counters: dropped messages by kind (``bad_messages``,
    written as ``dropped_messages``), payload bytes of valid data messages,
    duplicates dropped."""

    bad_messages: Counter = field(default_factory=Counter)
    bytes_received: int = 0
    duplicates: int = 0


class DataIntake:
    """Validation of the data messages one rank receives (see the module docstring).

    ``fields``: the study's fields as declared; ``progress``: the rank's
    progress (which simulation ids it accepts); ``ranks``: the link to rank 0,
    read when a message names what rank 0 may have announced but this rank not
    read yet; ``counters``: where dropped messages and bytes are counted;
    ``attempts``: the current attempt token of each run's fields.
    """

    def __init__(self, *, fields: FieldCatalog, layout: GroupLayout, n_time_steps: int,
                 rank: int, progress: RankProgress, ranks: RankLink, counters: RankCounters,
                 attempts: AttemptBook):
        self.fields = fields
        self.attempts = attempts
        self.layout = layout
        self.n_time_steps = n_time_steps
        self.rank = rank
        self.progress = progress
        self.ranks = ranks
        self.counters = counters

    def receive(self, frames):
        """Validate one data message; count and drop it if malformed."""
        try:
            if len(frames) != 2:
                raise ProtocolError(f"{len(frames)} frames, expected 2", "bad_frames")
            header = decode_header(frames[0].buffer)
            self._validate_header(header)
            values = decode_payload(header, frames[1].buffer)
        except ProtocolError as exc:
            self.counters.bad_messages[exc.kind] += 1
            sender = ""
            if len(frames) >= 1 and len(frames[0].buffer) >= 12:
                sim = int.from_bytes(bytes(frames[0].buffer[8:12]), "little")
                sender = f" from simulation {sim}"
            log.log(logging.DEBUG if exc.kind in EXPECTED_DROPS else logging.WARNING,
                    "dropped data message%s: %s", sender, exc.reason)
            return ServerStatus.BAD_MESSAGE
        self.counters.bytes_received += values.nbytes
        return SimulationData(header, values, self.layout.group_of(header.sim_id))

    def _validate_header(self, h: DataHeader) -> None:
        """Check a header against what this rank knows; raise ProtocolError."""
        if h.field_id >= len(self.fields.names):
            raise ProtocolError(f"unknown field id {h.field_id}", "unknown_field")
        name = self.fields.names[h.field_id]
        if not self.fields.is_declared(name):
            self._wait_for_field(name)
        if not 0 <= h.sim_id < self.progress.sim_id_limit and not self.ranks.is_root:
            self.ranks.drain()  # a redraw announced by rank 0 may be in flight
        check_header(h, field=name, cells=self.fields.partitions[name][self.rank],
                     rank=self.rank, layout=self.layout,
                     sim_id_limit=self.progress.sim_id_limit, n_time_steps=self.n_time_steps)
        if not self.attempts.is_current(h.sim_id, h.field_id, h.attempt):
            self._check_attempt(h)

    def _check_attempt(self, h: DataHeader) -> None:
        """A token that is not the current one of the message's run and field:
        on another rank than 0, read rank 0's pending messages (the token may be
        one it issued and this rank not read yet, the only case worth a wait);
        rank 0 issued every token itself, so its book is current and nothing is
        read there (its waiting messages are the other ranks' reports, handled
        by its loop, not in the middle of a message). Then drop the message if
        the token is still not current."""
        book, sim, fid = self.attempts, h.sim_id, h.field_id
        if not self.ranks.is_root:
            self.ranks.drain()
            if not book.is_current(sim, fid, h.attempt) and book.may_be_in_flight(h.attempt):
                try:
                    self.ranks.wait_for(lambda: book.is_current(sim, fid, h.attempt)
                                        or not book.may_be_in_flight(h.attempt),
                                        f"rank 0's attempt {h.attempt} of simulation {sim}",
                                        FIELD_WAIT_S)
                except MPIWaitTimeout as exc:
                    log.warning("%s", exc)
        if not book.is_current(sim, fid, h.attempt):
            raise ProtocolError(f"attempt {h.attempt} of simulation {sim}, field {fid}, "
                                f"step {h.time_step} is not its current one (a restarted "
                                f"run's late message)", "old_attempt")

    def _wait_for_field(self, name: str) -> None:
        """A data message names a field whose size rank 0 may have sent but this
        rank not read yet: read control messages until it is known (rank 0
        declares a field before it answers the hello: nothing is in flight to it)."""
        undeclared = ProtocolError(f"field {name!r} has not been declared by a client",
                                   "unknown_field")
        if self.ranks.is_root:
            raise undeclared
        try:
            self.ranks.wait_for(lambda: self.fields.is_declared(name),
                                f"rank 0's declaration of field {name!r}", FIELD_WAIT_S)
        except MPIWaitTimeout as exc:
            log.warning("%s", exc)
            raise undeclared from exc
