"""Malformed messages, sent with raw ZeroMQ sockets, never hurt the server.

One real server rank under mpiexec; a hand-written client says hello, then
sends every kind of bad message, then the valid data. The server must
survive, count each kind, and fold exactly the valid data.
"""

import functools
import json
import sys

import h5py
import numpy as np
import pytest
import zmq
from conftest import MPIEXEC, write_study

from melissa_sa.protocol import (
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    ClientHello,
    ProtocolError,
    decode_welcome,
    encode_header,
    encode_hello,
)

N_CELLS = 8


def hello(ctx, address, sim_id, n_cells=N_CELLS, field="f"):
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:   # closed whatever happens: ctx.term() waits for every socket
        req.connect(address)
        req.send(encode_hello(ClientHello(sim_id, field, n_cells)))
        assert req.poll(20000), "server did not answer the hello"
        raw = req.recv()
    finally:
        req.close()
    try:
        welcome = decode_welcome(raw)
    except ProtocolError as exc:
        assert exc.kind == "refused", exc
        return {"type": "error", "message": exc.reason}
    return {"type": "welcome", "endpoints": welcome.endpoints,
            "partition": welcome.partition, "attempt": welcome.attempt}


def raw_header(attempt, magic=MAGIC, version=PROTOCOL_VERSION, dtype=1, sim_id=0, member=0,
               field_id=0, step=0, offset=0, count=N_CELLS):
    return HEADER.pack(magic, version, dtype, 0, sim_id, member, field_id, step, 0,
                       offset, count, attempt)


def server_results(proc, tmp_path):
    """The results file of a server that must exit 0 within 60 s."""
    proc.wait(60)
    assert proc.returncode == 0, (tmp_path / "server.log").read_text()
    return tmp_path / "out" / "results.h5"


@pytest.fixture
def server(tmp_path, processes):
    study = write_study(tmp_path, study_options={"parameter_sweep_size": 2,
                                                 "nb_time_steps": 2})
    cfg = json.loads(study.read_text())
    proc = processes.start([MPIEXEC, "-n", "1", sys.executable,
                            "-m", "melissa_sa.server.main", study],
                           log_path=tmp_path / "server.log", cwd=tmp_path)
    address = f"tcp://127.0.0.1:{cfg['server_config']['connection_port']}"
    return proc, address, tmp_path


def test_every_malformed_kind_is_counted_and_dropped(server):
    proc, address, tmp_path = server
    ctx = zmq.Context()
    try:
        # a hello for a field the study does not have, and one for an unknown sim
        assert hello(ctx, address, 0, field="nope")["type"] == "error"
        assert hello(ctx, address, 99)["type"] == "error"
        welcome = hello(ctx, address, 0)
        assert welcome["type"] == "welcome", welcome
        assert hello(ctx, address, 1, n_cells=N_CELLS + 1)["type"] == "error"
        attempts = {0: welcome["attempt"], 1: hello(ctx, address, 1)["attempt"]}
        header = functools.partial(raw_header, attempts[0])
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 5000)
        push.connect(welcome["endpoints"][0])
        good = np.arange(N_CELLS, dtype=np.float64)
        payload = good.tobytes()
        bad = {
            "bad_magic": [header(magic=b"XXXX"), payload],
            "bad_version": [header(version=PROTOCOL_VERSION + 1), payload],
            "truncated_header": [header()[:20], payload],
            "bad_size": [header(count=N_CELLS - 1), payload],
            "bad_range": [header(offset=4, count=N_CELLS), payload],
            "unknown_field": [header(field_id=3), payload],
            "unknown_simulation": [header(sim_id=1000), payload],
            "bad_dtype": [header(dtype=7), payload],
            "bad_frames": [header()],
            "bad_time_step": [header(step=5), payload],
            "bad_member": [header(sim_id=0, member=1), payload],
            # the counter's first value, never issued; a token sim 1 holds, not sim 0
            "old_attempt": [raw_header((attempts[0] - 1) % 2**32), payload],
            "old_attempt ": [raw_header(attempts[1]), payload],
        }
        for frames in bad.values():
            push.send_multipart(frames)
        # float32 payload announced as float64: a size mismatch, not a crash
        push.send_multipart([header(), good.astype(np.float32).tobytes()])
        # the valid data of both simulations; step 0 of sim 0 sent twice
        for sim_id in (0, 1):
            for step in (0, 1):
                values = good * (sim_id + 1) + step
                data = encode_header(sim_id, 0, 0, step, 0, 0, N_CELLS, np.float64,
                                     attempts[sim_id])
                push.send_multipart([data, values.tobytes()])
                if sim_id == 0 and step == 0:
                    push.send_multipart([data, (values + 100).tobytes()])
        push.close()
    finally:
        ctx.destroy(linger=0)   # closes what a failed assertion left open
    with h5py.File(server_results(proc, tmp_path)) as f:
        dropped = json.loads(f.attrs["dropped_messages"])
        for kind in bad:
            # bad_size also counts the float32 payload announced as float64
            expected = {"bad_size": 2, "old_attempt": 2}.get(kind.strip(), 1)
            assert dropped.get(kind.strip()) == expected, (kind, dropped)
        assert dropped["duplicate"] == 1
        np.testing.assert_array_equal(f["f/n_samples"][()], [2, 2])
        mean = f["f/mean"][()]
    expected = np.stack([(good * 1 + t + good * 2 + t) / 2 for t in (0, 1)])
    np.testing.assert_allclose(mean, expected, rtol=1e-15)


def test_drops_and_bytes_are_summed_over_ranks(tmp_path, processes):
    """Messages dropped on rank 1 count in results.h5, summed and per rank."""
    study = write_study(tmp_path, study_options={"parameter_sweep_size": 1,
                                                 "nb_time_steps": 1},
                        server_config={"server_processes": 2})
    cfg = json.loads(study.read_text())
    proc = processes.start([MPIEXEC, "-n", "2", sys.executable,
                            "-m", "melissa_sa.server.main", study],
                           log_path=tmp_path / "server.log", cwd=tmp_path)
    address = f"tcp://127.0.0.1:{cfg['server_config']['connection_port']}"
    ctx = zmq.Context()
    try:
        welcome = hello(ctx, address, 0)
        assert welcome["type"] == "welcome", welcome
        (lo0, hi0), (lo1, hi1) = welcome["partition"]
        pushes = []
        for endpoint in welcome["endpoints"]:
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 5000)
            push.connect(endpoint)
            pushes.append(push)
        values = np.arange(N_CELLS, dtype=np.float64)
        # hostile messages to rank 1 only: 3 bad magics, 2 out-of-range
        attempt = welcome["attempt"]
        for _ in range(3):
            pushes[1].send_multipart([raw_header(attempt, magic=b"XXXX"), values.tobytes()])
        for _ in range(2):
            pushes[1].send_multipart([raw_header(attempt, offset=lo0, count=hi0 - lo0),
                                      values[lo0:hi0].tobytes()])
        pushes[0].send_multipart([raw_header(attempt, magic=b"XXXX"), values.tobytes()])
        for rank, (lo, hi) in enumerate(((lo0, hi0), (lo1, hi1))):
            header = encode_header(0, 0, 0, 0, 0, lo, hi - lo, np.float64, attempt)
            pushes[rank].send_multipart([header, values[lo:hi].tobytes()])
        for push in pushes:
            push.close()
    finally:
        ctx.destroy(linger=0)   # closes what a failed assertion left open
    with h5py.File(server_results(proc, tmp_path)) as f:
        assert json.loads(f.attrs["dropped_messages"]) == {"bad_magic": 4, "bad_range": 2}
        assert json.loads(f.attrs["dropped_messages_per_rank"]) == [
            {"bad_magic": 1}, {"bad_magic": 3, "bad_range": 2}]
        assert f.attrs["bytes_received"] == N_CELLS * 8
        assert list(f.attrs["bytes_received_per_rank"]) == [(hi0 - lo0) * 8, (hi1 - lo1) * 8]
        np.testing.assert_array_equal(f["f/mean"][0], values)


def test_server_refuses_a_communicator_of_the_wrong_size(tmp_path, processes):
    """One rank where server_processes says 2 fails loudly, naming both."""
    study = write_study(tmp_path, server_config={"server_processes": 2})
    proc = processes.start([MPIEXEC, "-n", "1", sys.executable,
                            "-m", "melissa_sa.server.main", study],
                           log_path=tmp_path / "server.log", cwd=tmp_path)
    assert proc.wait(60) == 1
    log = (tmp_path / "server.log").read_text()
    assert "the MPI communicator has 1 rank but server_config.server_processes is 2" in log
    assert "srun --mpi=pmi2" in log
    assert not (tmp_path / "out" / "server.lock").exists()
