"""Submission numbers: each client script exports its run's, rank 0 refuses a
hello of an older submission than it accepted, and a rerun's first hello
retires its old run's other fields (one-rank server driven by hand)."""

import numpy as np
import pytest
from conftest import write_study
from test_server_surface import OneRank, Recorder

from melissa_sa.config import load_config
from melissa_sa.protocol import ClientHello, ProtocolError, encode_header
from melissa_sa.server import SensitivityAnalysisServer
from melissa_sa.server.attempts import SubmissionRecord
from melissa_sa.server.data_messages import ServerStatus
from melissa_sa.server.study_events import Begin, JobExited

N_CELLS = 6


class Frame:
    def __init__(self, raw: bytes):
        self.buffer = memoryview(raw)


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("MELISSA_LAUNCHER_ADDRESS", "tcp://127.0.0.1:1")
    study = write_study(tmp_path, study_options={"parameter_sweep_size": 2,
                                                 "field_names": ["f", "g"]})
    s = SensitivityAnalysisServer(load_config(study), comm=OneRank())
    s.transport = Recorder()
    s.connection_address = "tcp://127.0.0.1:2"
    s.open_study()
    s.feed(Begin(0.0))
    return s


def send(server, field_id, step, offset, values, attempt) -> bool:
    """One data message of simulation 0; True if taken, False if dropped."""
    frames = [Frame(encode_header(0, 0, field_id, step, 0, offset, values.size, values.dtype,
                                  attempt)), Frame(values.tobytes())]
    data = server.worker.receive(frames)
    if data is ServerStatus.BAD_MESSAGE:
        return False
    server.process_simulation_data(data)
    return True


def test_the_record_refuses_only_an_older_submission():
    record = SubmissionRecord()
    assert not record.check(4, 1)   # the first hello: nothing to retire
    record.accept(4, 1)
    assert not record.check(4, 1)   # equal: accepted, nothing to retire
    assert record.check(4, 2)       # a rerun
    record.accept(4, 2)
    with pytest.raises(ProtocolError, match="simulation 4: this run is submission 1 "
                                            r"\(MELISSA_RUN_SUBMISSION\), the server "
                                            "already accepted submission 2"):
        record.check(4, 1)
    assert not record.check(5, 0)   # per simulation


def test_a_rerun_retires_its_old_runs_other_fields(server):
    welcome = server.coordinator.welcome
    old_f = welcome(ClientHello(0, "f", N_CELLS, submission=0))
    old_g = welcome(ClientHello(0, "g", N_CELLS, submission=0))
    values = np.arange(float(N_CELLS))
    assert send(server, old_g.field_id, 0, 0, values[:3], old_g.attempt)  # a partial row
    assert len(server.worker._assembler) == 1
    new_f = welcome(ClientHello(0, "f", N_CELLS, submission=1))  # the rerun says hello for f
    assert len(server.worker._assembler) == 0                    # g's partial row forgotten
    # the old run's g data, before the rerun said hello for g: dropped, never folded
    assert not send(server, old_g.field_id, 0, 3, values[3:], old_g.attempt)
    assert not send(server, old_g.field_id, 1, 0, values, old_g.attempt)
    assert not send(server, old_f.field_id, 0, 0, values, old_f.attempt)
    assert server.bad_messages == {"old_attempt": 3}
    assert not server.worker.progress.is_folded(0, old_g.field_id, 1)
    # the old run's late hello for g is refused, naming both numbers
    with pytest.raises(ProtocolError, match="submission 0 .* accepted submission 1"):
        welcome(ClientHello(0, "g", N_CELLS, submission=0))
    new_g = welcome(ClientHello(0, "g", N_CELLS, submission=1))
    assert len({old_f.attempt, old_g.attempt, new_f.attempt, new_g.attempt}) == 4
    for field_id, attempt in [(new_f.field_id, new_f.attempt), (new_g.field_id, new_g.attempt)]:
        assert send(server, field_id, 0, 0, values, attempt)
        assert send(server, field_id, 1, 0, values, attempt)
    assert server.completed_sim_ids == {0}


def test_each_script_exports_its_submission_and_a_rerun_replaces_it_by_a_rename(server):
    path = server.script_dir / "client.0.sh"
    first = path.read_text()
    assert "export MELISSA_RUN_SUBMISSION=0\n" in first
    with open(path) as running:  # the job of the first submission still reads its script
        server.feed(JobExited(0, 3, 1.0, state="failed"))
        assert "export MELISSA_RUN_SUBMISSION=1\n" in path.read_text()
        assert running.read() == first
    assert "export MELISSA_RUN_SUBMISSION=0\n" in (server.script_dir / "client.1.sh").read_text()
