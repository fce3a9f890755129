"""The client API outside a healthy study: bounded failures, clear errors."""

import subprocess
import sys
import time

from cclient_util import FakeServer
from conftest import child_env, free_port

from melissa_sa.server.attempts import SubmissionRecord

SNIPPET = """
import numpy as np
from melissa_sa.client import melissa_init, melissa_send, melissa_finalize
melissa_init("f", 4, None)
melissa_send("f", np.zeros(4))
melissa_finalize()
print("ok")
"""


def run_client(timeout=30, **env):
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True,
                          env=child_env(**env), timeout=timeout)
    return done, time.monotonic() - start


def test_unreachable_server_fails_within_the_timeout():
    port = free_port()  # nothing listens there
    done, elapsed = run_client(MELISSA_SERVER_ADDRESS=f"tcp://127.0.0.1:{port}",
                               MELISSA_SIMULATION_ID=0, MELISSA_CONNECT_TIMEOUT=1.5)
    assert done.returncode != 0
    assert "MelissaConnectionError" in done.stderr
    assert f"no answer from the melissa-sa server at tcp://127.0.0.1:{port}" in done.stderr
    assert "MELISSA_CONNECT_TIMEOUT" in done.stderr
    assert elapsed < 20  # 1.5 s of waiting plus interpreter start-up


def test_without_a_study_the_calls_do_nothing():
    env = child_env()
    env.pop("MELISSA_SERVER_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True,
                          env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_required_server_missing_is_an_error():
    done, _ = run_client(MELISSA_REQUIRE_SERVER=1)
    assert done.returncode != 0
    assert "MELISSA_SERVER_ADDRESS is not set" in done.stderr


def test_bad_simulation_id_is_an_error():
    done, _ = run_client(MELISSA_SERVER_ADDRESS="tcp://127.0.0.1:1", MELISSA_SIMULATION_ID="x")
    assert done.returncode != 0
    assert "MELISSA_SIMULATION_ID='x' is not an integer" in done.stderr


def test_the_run_submission_is_sent_and_an_older_one_refused():
    """MELISSA_RUN_SUBMISSION goes into the hello (unset: 0); a hello below the
    highest submission accepted for the simulation is refused naming both."""
    record = SubmissionRecord()
    record.accept(0, 2)
    for submission, expected in [("1", None), ("2", 2), (None, 0), ("3", 3)]:
        server = FakeServer(nb_time_steps=1, submissions=record if expected != 0 else None)
        extra = {} if submission is None else {"MELISSA_RUN_SUBMISSION": submission}
        try:
            done, _ = run_client(MELISSA_SERVER_ADDRESS=server.address,
                                 MELISSA_SIMULATION_ID=0, **extra)
        finally:
            server.close()
        if expected is None:
            assert done.returncode != 0
            assert ("this run is submission 1 (MELISSA_RUN_SUBMISSION), the server already "
                    "accepted submission 2") in done.stderr
        else:
            assert done.returncode == 0, done.stderr
            assert [h.submission for h in server.hellos] == [expected]
    done, _ = run_client(MELISSA_SERVER_ADDRESS="tcp://127.0.0.1:1", MELISSA_SIMULATION_ID=0,
                         MELISSA_RUN_SUBMISSION="x")
    assert "MELISSA_RUN_SUBMISSION='x' is not a submission number" in done.stderr
