"""The study secret and ZAP/PLAIN authentication with real ZeroMQ sockets on 127.0.0.1."""

from __future__ import annotations

import os
import stat
import threading
import time

import pytest
import zmq

from melissa_sa.auth import (
    SECRET_FILE,
    SecretError,
    ZapGuard,
    read_secret,
    secret_from_env,
    secure_client_socket,
    secure_server_socket,
    study_secret,
)

# ---------------------------------------------------------------------------
# the secret file


def test_secret_is_created_private_and_reused(tmp_path):
    old = os.umask(0o022)
    try:
        secret, path = study_secret(tmp_path / "out")
    finally:
        os.umask(old)
    assert path == tmp_path / "out" / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) == 64 and int(secret, 16) >= 0
    assert study_secret(tmp_path / "out") == (secret, path)  # a resume keeps it
    assert [p.name for p in path.parent.iterdir()] == [SECRET_FILE]  # no temporary left
    other, _ = study_secret(tmp_path / "other")
    assert other != secret


def test_secret_readable_by_others_is_refused(tmp_path):
    secret, path = study_secret(tmp_path)
    path.chmod(0o644)
    with pytest.raises(SecretError, match=r"accessible to other users \(mode 0644\).*chmod 600"):
        study_secret(tmp_path)
    with pytest.raises(SecretError, match=str(path)):
        read_secret(path)
    path.chmod(0o600)
    assert read_secret(path) == secret


def test_secret_errors_name_the_file(tmp_path):
    with pytest.raises(SecretError, match="cannot read the study secret"):
        read_secret(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(SecretError, match="not a study secret"):
        read_secret(empty)
    link = tmp_path / "link"
    link.symlink_to(empty)
    with pytest.raises(SecretError, match="cannot read"):
        read_secret(link)


def test_concurrent_creation_agrees_on_one_secret(tmp_path):
    results = []
    threads = [threading.Thread(target=lambda: results.append(study_secret(tmp_path)[0]))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 8


def test_secret_from_env(tmp_path):
    secret, path = study_secret(tmp_path)
    assert secret_from_env({"MELISSA_SECRET_FILE": str(path)}) == secret
    assert secret_from_env({"MELISSA_SECRET": "abc"}) == "abc"
    assert secret_from_env({}) is None


# ---------------------------------------------------------------------------
# sockets


@pytest.fixture
def contexts():
    server, client = zmq.Context(), zmq.Context()
    yield server, client
    for ctx in (client, server):
        ctx.destroy(linger=0)


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_push_pull_only_the_secret_holder_gets_through(contexts):
    sctx, cctx = contexts
    logs = []
    pull = sctx.socket(zmq.PULL)
    guard = secure_server_socket(pull, "s3cret", log=logs.append)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    addr = f"tcp://127.0.0.1:{port}"
    intruders = []
    for secret in (None, "wrong"):
        sock = cctx.socket(zmq.PUSH)
        sock.linger = 0
        if secret:
            secure_client_socket(sock, secret)
        sock.connect(addr)
        sock.send(b"intruder", zmq.NOBLOCK)  # queued locally, never delivered
        intruders.append(sock)
    good = cctx.socket(zmq.PUSH)
    good.linger = 0
    secure_client_socket(good, "s3cret")
    good.connect(addr)
    for i in range(100):
        good.send(b"data %d" % i)
    got = [pull.recv() for _ in range(100)]
    assert got == [b"data %d" % i for i in range(100)]
    _wait(lambda: guard.refused >= 2 and guard.accepted >= 1)
    assert not pull.poll(500)  # nothing else ever arrives
    assert guard.accepted == 1
    assert "wrong credentials" in guard.refusals and len(guard.refusals) >= 2
    assert any("refused a peer" in line for line in logs)
    assert any("without the study's secret" in line and "127.0.0.1" in line for line in logs)
    guard.close()
    pull.close(0)


def test_req_rep_handshake_refuses_a_peer_without_the_secret(contexts):
    sctx, cctx = contexts
    rep = sctx.socket(zmq.REP)
    guard = secure_server_socket(rep, "k3y", log=lambda s: None)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    addr = f"tcp://127.0.0.1:{port}"
    bad = cctx.socket(zmq.REQ)
    bad.linger = 0
    bad.connect(addr)
    bad.send(b"hello from an intruder")
    good = cctx.socket(zmq.REQ)
    good.linger = 0
    secure_client_socket(good, "k3y")
    good.connect(addr)
    good.send(b"hello")
    assert rep.poll(5000)
    assert rep.recv() == b"hello"
    rep.send(b"welcome")
    assert good.recv() == b"welcome"
    _wait(lambda: guard.refused >= 1)
    assert not rep.poll(500)  # the intruder's request never reached the server
    assert not bad.poll(100)
    assert guard.accepted == 1
    guard.close()
    rep.close(0)


def test_one_guard_per_context_and_one_secret(contexts):
    sctx, _ = contexts
    a, b = sctx.socket(zmq.PULL), sctx.socket(zmq.REP)
    g1 = secure_server_socket(a, "same", log=lambda s: None)
    g2 = secure_server_socket(b, "same")
    assert g1 is g2
    c = sctx.socket(zmq.PULL)
    with pytest.raises(SecretError, match="another secret"):
        secure_server_socket(c, "different")
    g1.close()
    for s in (a, b, c):
        s.close(0)


def test_must_be_called_before_bind_or_connect(contexts):
    sctx, cctx = contexts
    pull = sctx.socket(zmq.PULL)
    pull.bind_to_random_port("tcp://127.0.0.1")
    with pytest.raises(SecretError, match="before the socket binds"):
        secure_server_socket(pull, "x")
    push = cctx.socket(zmq.PUSH)
    push.connect("tcp://127.0.0.1:1")
    with pytest.raises(SecretError, match="before the socket binds or connects"):
        secure_client_socket(push, "x")
    with pytest.raises(SecretError, match="empty secret"):
        secure_client_socket(cctx.socket(zmq.PUSH), "")
    pull.close(0)
    push.close(0)


def test_terminating_the_context_stops_the_guard():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    guard = ZapGuard.for_context(ctx, "x", log=lambda s: None)
    guard.watch(sock)
    sock.close(0)
    done = threading.Event()
    threading.Thread(target=lambda: (ctx.term(), done.set()), daemon=True).start()
    assert done.wait(10), "context.term() hangs on the guard's sockets"
    _wait(lambda: not guard.alive)


def test_refusals_are_summarised_not_logged_one_by_one(contexts):
    sctx, cctx = contexts
    logs = []
    pull = sctx.socket(zmq.PULL)
    guard = secure_server_socket(pull, "s", log=logs.append, log_interval=3600)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    intruders = []
    for i in range(20):
        sock = cctx.socket(zmq.PUSH)
        sock.linger = 0
        if i % 2:
            secure_client_socket(sock, f"guess {i}")
        sock.connect(f"tcp://127.0.0.1:{port}")
        intruders.append(sock)
    _wait(lambda: guard.refused >= 20)
    # the first refusal of each kind and the first few peers, not one line per peer
    assert 1 <= len(logs) <= 6, logs
    for sock in intruders:
        sock.close(0)
    guard.close()  # the summary is written on close
    assert "handshake(s) refused so far" in logs[-1]
    assert guard.accepted == 0
    pull.close(0)
