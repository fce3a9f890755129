"""The reference-surface attributes of BaseServer do what docs/internals.md says,
checked on a server object without sockets or MPI."""

import logging
import threading

import pytest
from conftest import write_study

from melissa_sa import messages
from melissa_sa.config import load_config
from melissa_sa.server import SensitivityAnalysisServer
from melissa_sa.server.ranks import RunsReport
from melissa_sa.server.study_events import Begin, RunSeen, RunsReported


def folded(sim_id, now):
    """Rank 0 (the only one) reports run ``sim_id`` folded, at ``now``."""
    return RunsReported(now, RunsReport(0, folded=(sim_id,)))


class OneRank:
    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1


class Recorder:
    """A transport double: records what goes to the launcher; no study secret."""

    def __init__(self):
        self.sent = []
        self.secret = None

    def send_launcher(self, raw):
        self.sent.append(messages.decode(raw, accept=messages.SERVER_TO_LAUNCHER))


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("MELISSA_LAUNCHER_ADDRESS", "tcp://127.0.0.1:1")
    monkeypatch.delenv("MELISSA_DEBUG", raising=False)
    study = write_study(tmp_path, study_options={"parameter_sweep_size": 2})
    s = SensitivityAnalysisServer(load_config(study), comm=OneRank())
    s.transport = Recorder()
    s.connection_address = "tcp://127.0.0.1:2"
    s.open_study()
    return s


def test_scripts_rm_script_and_mean_run_time(server):
    server.feed(Begin(0.0))
    submits = [m for m in server.transport.sent if isinstance(m, messages.Submit)]
    assert [m.sim_ids for m in submits] == [[0], [1]]
    script = server.script_dir / "client.0.sh"
    text = script.read_text()
    assert "MELISSA_OFFLINE" not in text and "MELISSA_SERVER_ADDRESS=tcp://127.0.0.1:2" in text
    server.rm_script = True
    server.feed(folded(0, 4.0))
    assert not script.exists() and (server.script_dir / "client.1.sh").exists()
    assert server.mtt_simulation_completion == pytest.approx(4.0)
    progress = [m for m in server.transport.sent if isinstance(m, messages.Progress)]
    assert progress == [messages.Progress(groups_done=1, groups_total=2, group_id=0)]


def test_a_finished_group_is_reported_before_the_servers_hook_runs(server):
    # the study state answers ReportProgress, then GroupFinished: the launcher
    # hears of the group before the hook (and a convergence check) runs
    reported = []
    server.on_group_finished = lambda group_id: reported.append(
        [m.group_id for m in server.transport.sent if isinstance(m, messages.Progress)])
    server.feed(Begin(0.0))
    server.feed(folded(1, 3.0))
    assert reported == [[1]]


def test_offline_scripts_set_no_server_address(server):
    server.make_study_offline()
    server.open_study()
    server.feed(Begin(0.0))
    text = (server.script_dir / "client.0.sh").read_text()
    assert "MELISSA_SERVER_ADDRESS" not in text and "MELISSA_OFFLINE" not in text


def test_the_consistency_lock_is_held_while_the_state_changes(server):
    seen = []

    def on_group_finished(group_id):
        # another thread cannot take the lock while the server applies the event
        got = []
        t = threading.Thread(target=lambda: got.append(
            server.consistency_lock.acquire(blocking=False)))
        t.start()
        t.join()
        seen.append(got[0])

    server.on_group_finished = on_group_finished
    server.feed(Begin(0.0))
    server.feed(RunSeen(0, 1.0))
    server.feed(folded(0, 2.0))
    assert seen == [False]
    assert server.consistency_lock.acquire(blocking=False)   # released afterwards
    server.consistency_lock.release()


@pytest.mark.parametrize("level,expected", [(0, logging.WARNING), (1, logging.INFO),
                                            (2, logging.DEBUG)])
def test_verbose_level_sets_the_log_level(server, level, expected):
    root = logging.getLogger("melissa_sa")
    saved = root.handlers[:], root.level, root.propagate
    server.verbose_level = level
    try:
        server.configure_logger()
        assert root.level == expected
    finally:
        root.handlers[:], root.level, root.propagate = saved


def test_launcher_messages_go_through_the_handler_table(server, caplog):
    server.feed(Begin(0.0))
    server.handle_launcher(messages.encode(messages.StopRequest(reason="SIGINT")))
    assert server._stop_requested
    with caplog.at_level(logging.WARNING, "melissa_sa.server"):
        server.handle_launcher(b'{"type": "server_failure"}')
        server.handle_launcher(messages.encode(messages.Submit(group_id=0)))
    assert caplog.text.count("dropped a message from the launcher") == 2


class Frame:
    """A received ZeroMQ frame's stand-in: its bytes under ``buffer``."""

    def __init__(self, raw: bytes):
        self.buffer = memoryview(raw)


def data_frames(sim_id, step, values, attempt=0):
    from melissa_sa.protocol import encode_header
    return [Frame(encode_header(sim_id, 0, 0, step, 0, 0, values.size, values.dtype, attempt)),
            Frame(values.tobytes())]


def test_the_rank_worker_reports_a_folded_run_to_the_coordinator(server):
    """One rank: a hello declares the field on the worker, the data fold there,
    and the run reaches the study state through the rank messages."""
    import numpy as np

    from melissa_sa.protocol import ClientHello
    from melissa_sa.server.data_messages import ServerStatus

    server.feed(Begin(0.0))
    welcome = server.coordinator.welcome(ClientHello(0, "f", 6))
    assert welcome.partition == [(0, 6)] and server.field_sizes == {"f": 6}
    assert server.slices["f"].n_cells == 6
    values = np.arange(6.0)
    for step in range(2):
        server.process_simulation_data(
            server.worker.receive(data_frames(0, step, values, welcome.attempt)))
    assert server.completed_sim_ids == {0} and server.bytes_received == 2 * values.nbytes
    progress = [m for m in server.transport.sent if isinstance(m, messages.Progress)]
    assert progress == [messages.Progress(groups_done=1, groups_total=2, group_id=0)]
    server.process_simulation_data(
        server.worker.receive(data_frames(0, 1, values, welcome.attempt)))
    assert server.duplicates == 1 and server.bad_messages["duplicate"] == 1
    assert server.worker.receive(data_frames(7, 0, values)) is ServerStatus.BAD_MESSAGE
    assert server.bad_messages["unknown_simulation"] == 1


def test_a_redraw_reaches_the_rank_worker(tmp_path, monkeypatch):
    from melissa_sa.server.study_events import JobExited

    monkeypatch.setenv("MELISSA_LAUNCHER_ADDRESS", "tcp://127.0.0.1:1")
    study = write_study(tmp_path, study_options={"parameter_sweep_size": 2,
                                                 "crashes_before_redraw": 1})
    s = SensitivityAnalysisServer(load_config(study), comm=OneRank())
    s.transport = Recorder()
    s.open_study()
    s.feed(Begin(0.0))
    assert s.worker.progress.sim_id_limit == 2
    s.feed(JobExited(0, 3, 1.0, state="failed"))
    assert s.study.is_abandoned(0) and s.worker.progress.abandoned_groups == {0}
    assert s.worker.progress.sim_id_limit == s.study.sim_id_limit == 3
    submits = [m for m in s.transport.sent if isinstance(m, messages.Submit)]
    assert [m.sim_ids for m in submits] == [[0], [1], [2]]


def test_a_study_that_finishes_after_a_stop_request_stops_for_the_request(server):
    """The first reason to stop stands on every rank: ranks that already left to
    take a checkpoint must not meet a rank 0 that writes the results."""
    from melissa_sa.exit_codes import StopReason

    server.feed(Begin(0.0))
    server.on_stop_request()                                   # the launcher's request
    assert server.worker.stop_reason is StopReason.REQUESTED
    server.feed(folded(0, 4.0))
    server.feed(folded(1, 5.0))                             # every group is done now
    assert server.study.all_done
    assert server.coordinator.stop_reason is StopReason.REQUESTED
    assert server.worker.stop_reason is StopReason.REQUESTED


def test_the_clock_ticks_while_data_keeps_arriving(server, monkeypatch):
    """Run timeouts and due checkpoints are checked even when no poll is idle."""
    import numpy as np

    from melissa_sa.protocol import DataHeader
    from melissa_sa.server.data_messages import ServerStatus, SimulationData

    header = DataHeader(sim_id=0, member=0, field_id=0, time_step=0, client_rank=0,
                        offset=0, count=1, dtype=np.dtype("<f8"), attempt=0)
    item = SimulationData(header, np.zeros(1), 0)
    ticks = []
    coordinator = server.coordinator
    monkeypatch.setattr(server, "process_simulation_data", lambda data: None)
    monkeypatch.setattr(coordinator, "data_seen", lambda sim_id: None)
    monkeypatch.setattr(coordinator, "idle", lambda: ticks.append(1))
    polls = []

    def poll_sockets(timeout):
        polls.append(1)   # data only, until the third tick (or 200,000 messages)
        return ServerStatus.STOP if len(ticks) >= 3 or len(polls) > 200_000 else item

    monkeypatch.setattr(server, "poll_sockets", poll_sockets)
    server.tick_every = 0.001
    server._loop()
    assert len(ticks) == 3


@pytest.mark.parametrize("n_cells, batch", [(1000, None), (600_000, 1)])
def test_the_pool_keeps_spares_for_the_sobol_batch_of_the_slice(tmp_path, monkeypatch,
                                                                   n_cells, batch):
    """The spares follow the step's SobolMartinez.fold_batch, which is 1 once a
    group (p = 2: 4 float64 rows) over the slice passes BATCH_GROUP_BYTES."""
    from melissa_sa.protocol import ClientHello
    from melissa_sa.server.assembly import SPARE_BUFFERS
    from melissa_sa.stats.sobol_fold import BATCH_GROUP_BYTES, FOLD_BATCH

    monkeypatch.setenv("MELISSA_LAUNCHER_ADDRESS", "tcp://127.0.0.1:1")
    study = write_study(tmp_path, study_options={"nb_time_steps": 1},
                        sa_config={"sobol_indices": True})
    s = SensitivityAnalysisServer(load_config(study), comm=OneRank())
    s.transport = Recorder()
    s.open_study()
    s.feed(Begin(0.0))
    s.coordinator.welcome(ClientHello(0, "f", n_cells))
    sobol = s.slices["f"].steps[0].sobol
    assert (8 * 4 * n_cells > BATCH_GROUP_BYTES) == (batch == 1)
    expected = FOLD_BATCH["delta"] if batch is None else batch
    assert sobol.fold_batch == expected
    assert s.worker._assembler.pool.spares == SPARE_BUFFERS + expected
    s.worker.release_spare_buffers()
    s.worker.declare_missing_fields()
    assert s.worker._assembler.pool.spares == 0
