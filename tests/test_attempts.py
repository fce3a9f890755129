"""Attempt tokens: a restarted run's late data is dropped as ``old_attempt``, never
folded, on a rank worker driven by hand (rank 1 of 2, rank 0's messages queued
on a stand-in link, read only when the worker reads its control messages)."""

import logging

import numpy as np
import pytest
from conftest import write_study

from melissa_sa.config import load_config
from melissa_sa.protocol import encode_header
from melissa_sa.server import ranks
from melissa_sa.server.attempts import IN_FLIGHT_WINDOW, TOKENS, AttemptBook, AttemptCounter
from melissa_sa.server.data_messages import ServerStatus
from melissa_sa.server.rank_worker import RankWorker

N_CELLS = 10  # rank 1 of 2 owns cells [5, 10)
LO, HI = 5, 10


class QueuedLink:
    """Rank 1's link to rank 0: ``queued`` holds rank 0's messages, dispatched
    only when the worker drains (as ``Iprobe`` would find them)."""

    rank, size, is_root = 1, 2, False

    def __init__(self):
        self.handlers = {}
        self.queued = []
        self.reports = []

    def add_handlers(self, table):
        self.handlers.update(table)

    def report(self, message):
        self.reports.append(message)

    def drain(self):
        handled = bool(self.queued)
        while self.queued:
            message = self.queued.pop(0)
            self.handlers[type(message)](message)
        return handled

    def wait_for(self, done, what, timeout):
        self.drain()
        if not done():
            from melissa_sa.mpi_wait import MPIWaitTimeout
            raise MPIWaitTimeout(f"timed out waiting for {what}")

    def flush(self, timeout=30.0):
        pass


class Frame:
    def __init__(self, raw: bytes):
        self.buffer = memoryview(raw)


def frames(sim_id, step, offset, values, attempt):
    return [Frame(encode_header(sim_id, 0, 0, step, 0, offset, values.size, values.dtype,
                                attempt)), Frame(values.tobytes())]


@pytest.fixture
def worker(tmp_path):
    study = write_study(tmp_path, study_options={"nb_time_steps": 3},
                        server_config={"server_processes": 2})
    link = QueuedLink()
    w = RankWorker(load_config(study), comm=None, link=link, completion=lambda: None,
                   checkpoint_meta=lambda: None)
    link.queued += [ranks.AttemptsBegin(1000), ranks.FieldDeclared("f", N_CELLS)]
    link.drain()
    return w, link


def deliver(w, message, read_control_first=True) -> bool:
    """One data message through the worker, after the control messages as the
    server's loop reads them (``BaseServer.poll_sockets``); True if it was folded
    or buffered, False if it was dropped (counted by reason)."""
    if read_control_first:
        w.ranks.drain()
    dropped = w.counters.bad_messages.total()
    data = w.receive(message)
    if data is not ServerStatus.BAD_MESSAGE:
        w.fold(data)
    return w.counters.bad_messages.total() == dropped


def values(step, scale=1.0):
    return scale * (np.arange(LO, HI, dtype=np.float64) + 100 * step)


def test_the_counter_follows_its_first_token_and_wraps():
    c = AttemptCounter(TOKENS - 2)
    assert [c.issue() for _ in range(3)] == [TOKENS - 1, 0, 1]
    drawn = {AttemptCounter().first for _ in range(8)}
    assert len(drawn) > 1 and all(0 <= t < TOKENS for t in drawn)


def test_the_book_waits_only_for_tokens_rank_0_may_have_issued():
    book = AttemptBook()
    assert book.may_be_in_flight(12345)              # rank 0's counter not known yet
    book.begin(TOKENS - 1)
    assert book.may_be_in_flight(0) and book.may_be_in_flight(IN_FLIGHT_WINDOW - 1)
    assert not book.may_be_in_flight(TOKENS - 1)    # the counter's start: never issued
    assert not book.may_be_in_flight(IN_FLIGHT_WINDOW + 5)
    book.start(3, 0, 7)
    assert book.is_current(3, 0, 7) and not book.is_current(3, 1, 7)
    assert not book.may_be_in_flight(7) and not book.may_be_in_flight(6)
    book.start(3, 0, 8)
    assert not book.is_current(3, 0, 7) and book.is_current(3, 0, 8)


def test_data_of_an_old_attempt_is_dropped_never_folded(worker, caplog):
    w, link = worker
    link.queued.append(ranks.AttemptStarted(0, 0, 1001))
    assert deliver(w, frames(0, 0, LO, values(0), 1001))      # read its token, accepted
    link.queued.append(ranks.AttemptStarted(0, 0, 1002))      # the run is restarted
    with caplog.at_level(logging.DEBUG, "melissa_sa.server"):
        # the old run's late steps, 1 of which the rerun has not sent yet
        assert not deliver(w, frames(0, 1, LO, values(1, scale=-7.0), 1001))
        assert not deliver(w, frames(0, 0, LO, values(0, scale=-7.0), 1001))
    assert w.counters.bad_messages == {"old_attempt": 2}
    assert "not its current one" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not w.progress.is_folded(0, 0, 1)
    assert deliver(w, frames(0, 1, LO, values(1), 1002))      # the rerun's step 1
    assert not deliver(w, frames(0, 0, LO, values(0), 1002))  # folded: a duplicate
    assert w.counters.bad_messages == {"old_attempt": 2, "duplicate": 1}
    for step in (0, 1):
        np.testing.assert_array_equal(w.slices["f"].steps[step].moments.mean, values(step))
    # a token of an earlier server (never issued here) is dropped at once too
    assert not deliver(w, frames(0, 2, LO, values(2), 1000 + 3 * IN_FLIGHT_WINDOW))
    assert w.counters.bad_messages["old_attempt"] == 3


def test_data_before_its_attempt_is_read_is_accepted_after_the_control_messages(worker):
    w, link = worker
    link.queued.append(ranks.AttemptStarted(1, 0, 1001))      # not read yet
    assert deliver(w, frames(1, 0, LO, values(0), 1001), read_control_first=False)
    assert not link.queued and w.progress.is_folded(1, 0, 0)
    # a token ahead of the last one read, never announced: waited for, then dropped
    assert not deliver(w, frames(1, 1, LO, values(1), 1005), read_control_first=False)
    assert w.counters.bad_messages == {"old_attempt": 1}


def test_a_new_attempt_forgets_the_old_partial_step_and_another_cut_completes_it(worker):
    w, link = worker
    link.queued.append(ranks.AttemptStarted(0, 0, 1001))
    assert deliver(w, frames(0, 0, LO, values(0), 1001))               # step 0 complete
    assert deliver(w, frames(0, 1, LO, values(1)[:3], 1001))           # step 1: [5, 8)
    assert len(w._assembler) == 1
    link.queued.append(ranks.AttemptStarted(0, 0, 1002))
    assert not deliver(w, frames(0, 1, 8, values(1)[3:], 1001))        # old: dropped
    assert len(w._assembler) == 0                                      # forgotten
    # the rerun cuts its cells otherwise: [5, 7) and [7, 10), overlapping [5, 8)
    assert deliver(w, frames(0, 1, 7, values(1)[2:], 1002))
    assert deliver(w, frames(0, 1, LO, values(1)[:2], 1002))
    assert w.progress.is_folded(0, 0, 1)
    np.testing.assert_array_equal(w.slices["f"].steps[1].moments.mean, values(1))
    assert not deliver(w, frames(0, 0, LO, values(0), 1002))           # complete: stays
    assert w.counters.bad_messages == {"old_attempt": 1, "duplicate": 1}


class RootLink(QueuedLink):
    """Rank 0's link: its tokens are its own (handled at once); ``queued`` holds
    the other ranks' reports, which only the server's loop may read."""

    rank, size, is_root = 0, 2, True

    def __init__(self):
        super().__init__()
        self.drains = 0

    def drain(self):
        self.drains += 1
        return super().drain()


def test_rank_0_drops_an_old_token_without_reading_the_other_ranks_messages(tmp_path):
    study = write_study(tmp_path, study_options={"nb_time_steps": 3},
                        server_config={"server_processes": 2})
    link = RootLink()
    w = RankWorker(load_config(study), comm=None, link=link, completion=lambda: None,
                   checkpoint_meta=lambda: None)
    for message in (ranks.AttemptsBegin(1000), ranks.FieldDeclared("f", N_CELLS),
                    ranks.AttemptStarted(0, 0, 1001), ranks.AttemptStarted(0, 0, 1002)):
        link.handlers[type(message)](message)                # rank 0's own, at once
    link.queued.append(ranks.AttemptsBegin(5))               # stands for a report
    mine = np.arange(0, LO, dtype=np.float64)                # rank 0 owns [0, 5)
    assert not deliver(w, frames(0, 0, 0, mine, 1001), read_control_first=False)
    assert w.counters.bad_messages == {"old_attempt": 1}
    assert link.drains == 0 and link.queued                  # nothing read on the way
    assert deliver(w, frames(0, 0, 0, mine, 1002), read_control_first=False)
    assert link.drains == 0
