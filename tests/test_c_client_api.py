"""libmelissa's API against a fake server (tests/cclient_util.py): several
fields in one client, the field limit, NULL pointers and bad names, mixed
MPI and serial calls, a different communicator per field, a server whose
ranks move between two fields' welcomes.

Tests skip with a message naming the missing tool.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from cclient_util import ATTEMPT_BASE, MPICC, FakeServer, build_client, missing
from conftest import MPIEXEC

from melissa_sa.cclient import build
from melissa_sa.server.attempts import SubmissionRecord

MISUSE = Path(__file__).parent / "clients" / "misuse.c"


@pytest.fixture(scope="module")
def exe(tmp_path_factory) -> Path:
    if missing("cc") or not Path(MPICC).exists():
        pytest.skip(f"needs {', '.join(missing('cc') or [MPICC])}")
    tmp = tmp_path_factory.mktemp("api")
    build(tmp / "prefix", MPICC, zmq="wheel", quiet=True)
    return build_client(tmp / "prefix", MISUSE, tmp / "misuse")


def against(server: FakeServer, exe: Path, scenario: str, ranks: int = 0, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MELISSA_", "PMI_", "HYDRA_"))}
    env.update(MELISSA_SERVER_ADDRESS=server.address, MELISSA_SIMULATION_ID="3", **extra)
    cmd = ([MPIEXEC, "-n", str(ranks)] if ranks else []) + [str(exe), scenario]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        deadline = time.monotonic() + 5
        while done.returncode == 0 and server.messages < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        server.close()
    return done


@pytest.mark.parametrize("ranks", [0, 2])
def test_two_fields_in_one_client(exe, ranks):
    server = FakeServer(nb_time_steps=2)
    done = against(server, exe, "two_fields", ranks)
    assert done.returncode == 0, done.stderr
    assert [(h.field, h.n_cells) for h in server.hellos] == [("f", 4 * max(ranks, 1)),
                                                            ("g1", 4 * max(ranks, 1))]
    assert server.messages == 4 * max(ranks, 1)
    # every rank sends each field with the token of that field's welcome
    assert sorted({(h.field_id, h.attempt) for h in server.headers}) == [
        (0, ATTEMPT_BASE + 1), (1, ATTEMPT_BASE + 2)]


def test_the_run_submission_is_sent_and_an_older_one_refused(exe):
    """MELISSA_RUN_SUBMISSION goes into the hello; a hello below the highest
    submission accepted for the simulation is refused naming both numbers."""
    record = SubmissionRecord()
    record.accept(3, 2)
    server = FakeServer(nb_time_steps=2, submissions=record)
    done = against(server, exe, "two_fields", MELISSA_RUN_SUBMISSION="1")
    assert done.returncode == 1
    assert "this run is submission 1 (MELISSA_RUN_SUBMISSION), the server already " \
           "accepted submission 2" in done.stderr
    server = FakeServer(nb_time_steps=2, submissions=record)
    done = against(server, exe, "two_fields", MELISSA_RUN_SUBMISSION="2")
    assert done.returncode == 0, done.stderr
    assert [h.submission for h in server.hellos] == [2, 2]
    server = FakeServer(nb_time_steps=2)
    done = against(server, exe, "two_fields")  # unset: 0
    assert done.returncode == 0, done.stderr
    assert [h.submission for h in server.hellos] == [0, 0]
    server = FakeServer(nb_time_steps=2)
    done = against(server, exe, "two_fields", MELISSA_RUN_SUBMISSION="-1")
    assert done.returncode == 1
    assert "MELISSA_RUN_SUBMISSION=-1 is not a submission number" in done.stderr


@pytest.mark.parametrize("scenario,ranks,message", [
    ("too_many_fields", 0, 'melissa_init("g64"): more than 64 fields'),
    ("mixed_no_mpi", 0, 'melissa_init_no_mpi("g"): mixes melissa_init and '
                        'melissa_init_no_mpi in one simulation'),
    ("other_comm", 2, 'melissa_init("g"): comm differs from the first melissa_init\'s'),
    ("null_name", 0, "melissa_init(): field_name is NULL"),
    ("control_name", 0, 'melissa_init("f?g"): the field name holds a control character'),
    ("long_name", 0, 'melissa_init("' + "x" * 64 + '..."): the field name is longer than '
                     '1024 bytes or not NUL-terminated'),
    ("empty_name", 0, 'melissa_init(""): the field name is empty'),
    ("null_values", 0, 'melissa_send("f"): send_vect is NULL'),
    ("null_fortran_size", 0, 'melissa_init("f"): local_vect_size or comm is a null pointer'),
])
def test_bad_calls_name_the_call_and_the_field(exe, scenario, ranks, message):
    done = against(FakeServer(nb_time_steps=2), exe, scenario, ranks)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"melissa: {message}" in done.stderr, done.stderr
    assert "done" not in done.stdout


def test_server_ranks_that_move_between_fields_are_reported(exe):
    server = FakeServer(nb_time_steps=2, move=True)
    done = against(server, exe, "two_fields")
    assert done.returncode == 1
    assert ('melissa: melissa_init("g1"): server rank 0 moved from '
            f'{server.data_endpoint} to tcp://127.0.0.1:') in done.stderr, done.stderr


def test_the_send_timeout_ignores_the_wall_clock(exe, tmp_path):
    """The wall clock reads a day ahead (a preloaded clock_gettime): the send
    timeout, on CLOCK_MONOTONIC, still fires after MELISSA_SEND_TIMEOUT."""
    shift = tmp_path / "shift.c"
    shift.write_text(
        "#define _GNU_SOURCE\n#include <dlfcn.h>\n#include <time.h>\n"
        "int clock_gettime(clockid_t id, struct timespec *ts) {\n"
        "    int (*real)(clockid_t, struct timespec *) = "
        "(int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, \"clock_gettime\");\n"
        "    int rc = real(id, ts);\n"
        "    if (id == CLOCK_REALTIME) ts->tv_sec += 86400;\n"
        "    return rc;\n}\n")
    run_cc = subprocess.run(["cc", "-shared", "-fPIC", str(shift), "-o",
                             str(tmp_path / "shift.so"), "-ldl"], capture_output=True,
                            text=True)
    assert run_cc.returncode == 0, run_cc.stderr
    server = FakeServer(nb_time_steps=2, deaf=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MELISSA_", "PMI_", "HYDRA_"))}
    env.update(MELISSA_SERVER_ADDRESS=server.address, MELISSA_SIMULATION_ID="3",
               MELISSA_SEND_TIMEOUT="1.5", LD_PRELOAD=str(tmp_path / "shift.so"))
    start = time.monotonic()
    try:
        done = subprocess.run([str(exe), "normal"], capture_output=True, text=True, env=env,
                              timeout=30)
    finally:
        server.close()
    assert done.returncode == 1
    assert "the server took no data for 1.5 s (MELISSA_SEND_TIMEOUT)" in done.stderr
    assert time.monotonic() - start < 20


def test_a_failing_mpi_call_is_melissa_s_message(exe, tmp_path):
    """MPI_Bcast preloaded to return an error code (as under a user's
    MPI_ERRORS_RETURN): the code is checked, MPI's reason is in the message."""
    fail = tmp_path / "bcast.c"
    fail.write_text("#include <mpi.h>\n"
                    "int MPI_Bcast(void *b, int n, MPI_Datatype t, int root, MPI_Comm c) {\n"
                    "    (void)b; (void)n; (void)t; (void)root; (void)c;\n"
                    "    return MPI_ERR_OTHER;\n}\n")
    done = subprocess.run([MPICC, "-shared", "-fPIC", str(fail), "-o",
                           str(tmp_path / "bcast.so")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    server = FakeServer(nb_time_steps=2)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MELISSA_", "PMI_", "HYDRA_"))}
    env.update(MELISSA_SERVER_ADDRESS=server.address, MELISSA_SIMULATION_ID="3",
               LD_PRELOAD=str(tmp_path / "bcast.so"))
    try:
        done = subprocess.run([MPIEXEC, "-n", "2", str(exe), "normal"], capture_output=True,
                              text=True, env=env, timeout=60)
    finally:
        server.close()
    assert done.returncode == 1
    assert 'melissa: melissa_init("f"): MPI_Bcast failed: ' in done.stderr, done.stderr


@pytest.mark.parametrize("ranks", [0, 2])
def test_copying_sends_deliver_the_same_values(exe, ranks):
    """MELISSA_SEND_COPY=1: melissa_send copies the array and returns at once;
    the server gets the same values."""
    server = FakeServer(nb_time_steps=2)
    done = against(server, exe, "normal", ranks, MELISSA_SEND_COPY="1")
    assert done.returncode == 0, done.stderr
    assert server.messages == 2 * max(ranks, 1)
    assert set(server.payloads) == {np.array([1.0, 2, 3, 4]).tobytes()}


def test_send_copy_must_be_0_or_1(exe):
    done = against(FakeServer(nb_time_steps=2), exe, "normal", MELISSA_SEND_COPY="yes")
    assert done.returncode == 1
    assert ('melissa: melissa_init("f"): MELISSA_SEND_COPY=yes is not 0 (send the caller\'s '
            'array, wait until it is taken) or 1 (copy it, return at once)') in done.stderr


def test_copies_the_server_never_took_fail_melissa_finalize(exe):
    """A copying send returns at once; melissa_finalize then waits for ZeroMQ to
    take the copy and says so when it cannot: no data is dropped silently."""
    done = against(FakeServer(nb_time_steps=2, deaf=True), exe, "one_step",
                   MELISSA_SEND_COPY="1", MELISSA_SEND_TIMEOUT="1.5")
    assert done.returncode == 1
    assert ("melissa: melissa_finalize(): the server took no data for 1.5 s "
            "(MELISSA_SEND_TIMEOUT)") in done.stderr, done.stderr
