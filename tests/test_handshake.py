"""Protocol version 3's binary handshake: round trips, every malformed form
refused by the decoders, and a real server that refuses (and counts) bad
hellos with a reason and still welcomes a good one afterwards."""

import json
import re
import struct
import sys

import pytest
import zmq
from conftest import MPIEXEC, wait_for, write_study

from melissa_sa.protocol import (
    HANDSHAKE_MAGIC,
    PROTOCOL_VERSION,
    ClientHello,
    ProtocolError,
    Welcome,
    decode_hello,
    decode_refusal,
    decode_welcome,
    encode_hello,
    encode_refusal,
    encode_welcome,
)

WELCOME = Welcome(field_id=1, member=3, n_time_steps=7, partition=[(0, 5), (5, 9)],
                  endpoints=["tcp://127.0.0.1:5000", "tcp://127.0.0.1:5001"],
                  attempt=0xFEDCBA98)


def test_round_trips():
    hello = ClientHello(sim_id=12, field="température", n_cells=1 << 40, submission=7)
    raw = encode_hello(hello)
    assert raw[:4] == HANDSHAKE_MAGIC and len(raw) == 26 + len("température".encode())
    assert raw[12:16] == struct.pack("<I", 7)  # the submission, after sim_id
    assert decode_hello(raw) == hello
    assert decode_welcome(encode_welcome(WELCOME)) == WELCOME
    assert encode_welcome(WELCOME)[20:24] == struct.pack("<I", 0xFEDCBA98)  # after n_ranks
    assert decode_refusal(encode_refusal("no such field")) == "no such field"
    with pytest.raises(ProtocolError, match="no such field") as err:
        decode_welcome(encode_refusal("no such field"))
    assert err.value.kind == "refused"


def _prefix(version=PROTOCOL_VERSION, kind=1, magic=HANDSHAKE_MAGIC):
    return struct.pack("<4sHBB", magic, version, kind, 0)


GOOD_HELLO = encode_hello(ClientHello(0, "f", 8))
BAD_HELLOS = {
    "empty": (b"", "shorter than its 8-byte prefix"),
    "json": (b'{"type": "hello", "sim_id": 0}', "bad magic"),
    "version": (_prefix(version=1) + GOOD_HELLO[8:], "protocol version 1"),
    "version 2": (_prefix(version=2) + GOOD_HELLO[8:],
                  "protocol version 2, this melissa-sa speaks 3 (a C or Fortran client: "
                  "rebuild its library with `melissa-sa client build`)"),
    "kind": (_prefix(kind=2) + GOOD_HELLO[8:], "message kind 2, expected 1"),
    "truncated": (GOOD_HELLO[:15], "too short"),
    "name past end": (GOOD_HELLO[:-1], "runs past the end"),
    "trailing": (GOOD_HELLO + b"x", "1 trailing bytes"),
    "empty name": (_prefix() + struct.pack("<IIQH", 0, 0, 8, 0), "field name of 0 bytes"),
    "long name": (_prefix() + struct.pack("<IIQH", 0, 0, 8, 2000) + b"a" * 2000, "2000 bytes"),
    "not utf-8": (_prefix() + struct.pack("<IIQH", 0, 0, 8, 2) + b"\xff\xfe", "not utf-8"),
}


@pytest.mark.parametrize("name", list(BAD_HELLOS))
def test_malformed_hellos_are_refused_with_a_reason(name):
    raw, reason = BAD_HELLOS[name]
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        decode_hello(raw)


def test_malformed_welcomes_are_refused_with_a_reason():
    good = encode_welcome(WELCOME)
    gap = encode_welcome(Welcome(0, 0, 1, [(0, 5), (6, 9)], ["a", "b"], 1))
    cases = {good[:10]: "too short", good + b"\0": "trailing", good[:-3]: "endpoint 1",
             gap: "do not follow", encode_welcome(Welcome(0, 0, 1, [], [], 1)): "0 server ranks"}
    for raw, reason in cases.items():
        with pytest.raises(ProtocolError, match=reason):
            decode_welcome(raw)


def test_the_server_refuses_bad_hellos_and_keeps_serving(tmp_path, processes):
    study = write_study(tmp_path, study_options={"parameter_sweep_size": 2,
                                                 "nb_time_steps": 2})
    cfg = json.loads(study.read_text())
    processes.start([MPIEXEC, "-n", "1", sys.executable, "-m", "melissa_sa.server.main",
                     study], log_path=tmp_path / "server.log", cwd=tmp_path)
    address = f"tcp://127.0.0.1:{cfg['server_config']['connection_port']}"
    ctx = zmq.Context()

    def ask(raw: bytes) -> bytes:
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(address)
        req.send(raw)
        assert req.poll(30000), "the server did not answer"
        reply = req.recv()
        req.close()
        return reply

    try:
        for raw, reason in BAD_HELLOS.values():
            assert reason.lower() in decode_refusal(ask(raw)).lower()
        for hello, reason in [(ClientHello(0, "g", 8), "unknown field 'g'"),
                              (ClientHello(99, "f", 8), "unknown simulation id 99"),
                              (ClientHello(0, "f", 0), "need an integer >= 1")]:
            assert reason in decode_refusal(ask(encode_hello(hello)))
        welcome = decode_welcome(ask(encode_hello(ClientHello(1, "f", 8))))
        again = decode_welcome(ask(encode_hello(ClientHello(1, "f", 8))))  # a rerun's
        assert again.attempt == (welcome.attempt + 1) % (1 << 32)          # a fresh token
        # a resubmitted run (submission 2), then the late hello of its submission 1
        decode_welcome(ask(encode_hello(ClientHello(1, "f", 8, submission=2))))
        assert ("simulation 1: this run is submission 1 (MELISSA_RUN_SUBMISSION), the server "
                "already accepted submission 2") in \
            decode_refusal(ask(encode_hello(ClientHello(1, "f", 8, submission=1))))
        decode_welcome(ask(encode_hello(ClientHello(1, "f", 8, submission=2))))  # equal: ok
        assert welcome.partition == [(0, 8)] and welcome.member == 0  # no Sobol: groups of 1
        assert welcome.n_time_steps == 2 and len(welcome.endpoints) == 1
        assert "field 'f' has 8 cells in this study, simulation 0 declares 9" in \
            decode_refusal(ask(encode_hello(ClientHello(0, "f", 9))))
    finally:
        ctx.destroy(0)
    expected = len(BAD_HELLOS) + 5
    wait_for(lambda: (tmp_path / "server.log").read_text().count("refused a client hello")
             == expected, 10, f"{expected} refusals in the server log")
