"""Attempt tokens: which run of a (simulation, field) may send data now (pure).

A run that is restarted (its client timed out, its node died or was cut
off) sends its fields again from the start, while messages of the run it
replaces may still arrive (a healed partition retransmits them). Rank 0's
coordinator gives every hello it accepts a fresh token (:class:`AttemptCounter`),
sends it in the welcome and, before, to every rank worker
(:class:`~melissa_sa.server.ranks.AttemptStarted`); each data header carries
it. A rank accepts a data message only when its token is the current one of
its (simulation, field) (:class:`AttemptBook`); any other is dropped as
``old_attempt``.

Tokens follow each other from a first value drawn with :mod:`secrets` when
rank 0 starts (``first + 1, first + 2, ...`` modulo 2^32): unique within a
server's life, and an earlier server's client that reaches a restarted
server at the same endpoint holds a token the new one has not issued (or
one of its tokens by chance: the new server's number of hellos in 2^32).
The tokens are not checkpointed: after a restart every run says hello again
and gets a token of the new counter.

A rank reads rank 0's messages between data messages, so a data message
may carry a token rank 0 issued but this rank has not read yet: a token
within :data:`IN_FLIGHT_WINDOW` after the last one it read
(:meth:`AttemptBook.may_be_in_flight`). The rank then reads its pending
control messages before it decides; a token behind the last one read, or
far ahead, cannot come any more and is dropped at once.

Tokens are issued in the order hellos arrive, so a hello of a run that was
resubmitted may reach rank 0 after its rerun's (a hello sent into a network
partition is retransmitted after the heal; a job slow to die). Each client
script exports the run's submission number (``MELISSA_RUN_SUBMISSION``: its
crash count when submitted, which only grows), each hello carries it, and
:class:`SubmissionRecord` keeps the highest accepted per simulation: a hello
below it is refused, one equal gets a fresh token as any hello, one above it
also retires the simulation's other fields: rank 0 announces for each a
token given to nobody, so the old run's data of fields its rerun has not
said hello for yet are dropped too (and their incomplete rows forgotten).
The record is not checkpointed either: after a restart the first hello of
each simulation sets it.
"""

from __future__ import annotations

import secrets

from melissa_sa.protocol import ProtocolError

__all__ = ["IN_FLIGHT_WINDOW", "TOKENS", "AttemptBook", "AttemptCounter", "SubmissionRecord"]

#: the number of distinct tokens (they are u32 on the wire)
TOKENS = 1 << 32
#: how many tokens after the last one a rank read may be in flight to it: far
#: more than rank 0 can issue between two reads of a rank (one per hello)
IN_FLIGHT_WINDOW = 1 << 16


class AttemptCounter:
    """Rank 0's tokens: ``first + 1``, ``first + 2``, ... modulo :data:`TOKENS`;
    ``first`` drawn at random unless given."""

    def __init__(self, first: int | None = None):
        self.first = secrets.randbits(32) if first is None else first % TOKENS
        self._last = self.first

    def issue(self) -> int:
        """The next token."""
        self._last = (self._last + 1) % TOKENS
        return self._last


class AttemptBook:
    """One rank's current token of every (simulation, field) rank 0 announced,
    and the last token it read (``None`` until rank 0's counter is known)."""

    def __init__(self):
        self.latest: int | None = None
        self._current: dict[tuple[int, int], int] = {}

    def begin(self, first: int) -> None:
        """Rank 0's counter starts after ``first``: nothing issued yet."""
        self.latest = first % TOKENS

    def start(self, sim_id: int, field_id: int, attempt: int) -> None:
        """``attempt`` is now the only token of ``(sim_id, field_id)`` accepted."""
        self._current[(sim_id, field_id)] = attempt
        self.latest = attempt

    def is_current(self, sim_id: int, field_id: int, attempt: int) -> bool:
        return self._current.get((sim_id, field_id)) == attempt

    def may_be_in_flight(self, attempt: int) -> bool:
        """True if rank 0 may have issued ``attempt`` and this rank not read it
        yet: within :data:`IN_FLIGHT_WINDOW` after the last token read, or
        any token while the counter's start is unknown."""
        if self.latest is None:
            return True
        return 0 < (attempt - self.latest) % TOKENS <= IN_FLIGHT_WINDOW


class SubmissionRecord:
    """Rank 0's highest submission number accepted per simulation."""

    def __init__(self):
        self._highest: dict[int, int] = {}

    def check(self, sim_id: int, submission: int) -> bool:
        """True if ``submission`` is above the highest accepted for ``sim_id``
        (a rerun: its old run's tokens retire), False if equal or the first;
        :class:`~melissa_sa.protocol.ProtocolError` naming both numbers if below."""
        highest = self._highest.get(sim_id)
        if highest is not None and submission < highest:
            raise ProtocolError(
                f"simulation {sim_id}: this run is submission {submission} "
                f"(MELISSA_RUN_SUBMISSION), the server already accepted submission "
                f"{highest}: a resubmitted run's late hello, refused")
        return highest is not None and submission > highest

    def accept(self, sim_id: int, submission: int) -> None:
        """``submission`` of ``sim_id`` said hello and was welcome."""
        self._highest[sim_id] = max(submission, self._highest.get(sim_id, submission))
