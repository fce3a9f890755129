"""libmelissa's failure paths that need a fault to be seen:

* every ZeroMQ call whose failure libmelissa must report: one chosen call
  fails (a preloaded shim, tests/clients/zmq_fault.c) and the message names
  the call and ZeroMQ's reason; a failed send is not called a timeout;
* the communicator libmelissa duplicates has MPI_ERRORS_ARE_FATAL even when
  the simulation's returns errors (a failed collective never hands a garbage
  size on): seen through MPI's profiling interface (tests/clients/errhandler.c);
* a big-endian build stops at compile time (the values go on the wire as
  they are in memory, the server reads little-endian);
* the header of the libzmq linked: a system libzmq's own zmq.h, libmelissa's
  declarations for pyzmq's libzmq even where another zmq.h is on the path.

Tests skip with a message naming the missing tool or package.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from pathlib import Path

import pytest
import zmq
from cclient_util import MPICC, FakeServer, build_client, missing, run
from conftest import MPIEXEC

from melissa_sa.cclient import build
from melissa_sa.cclient.build import finds_zmq_h, system_zmq

CLIENTS = Path(__file__).parent / "clients"
SRC = Path(__file__).parents[1] / "melissa_sa" / "cclient" / "src"

pytestmark = pytest.mark.skipif(
    bool(missing("cc")) or not Path(MPICC).exists(),
    reason=f"needs {', '.join(missing('cc') or [MPICC])}")


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("faults") / "prefix"
    build(prefix, MPICC, zmq="wheel", quiet=True)
    return prefix


@pytest.fixture(scope="module")
def misuse(prefix) -> Path:
    return build_client(prefix, CLIENTS / "misuse.c", prefix.parent / "misuse")


@pytest.fixture(scope="module")
def zmq_fault(prefix) -> Path:
    shim = prefix.parent / "zmq_fault.so"
    run(["cc", "-shared", "-fPIC", "-std=gnu11", "-Wall", f"-I{SRC}", CLIENTS / "zmq_fault.c",
         "-o", shim, "-ldl"])
    return shim


def in_study(server: FakeServer, cmd: list, **extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MELISSA_", "PMI_", "HYDRA_", "MSA_FAULT_"))}
    env.update(MELISSA_SERVER_ADDRESS=server.address, MELISSA_SIMULATION_ID="3", **extra)
    try:
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env,
                              timeout=60)
    finally:
        server.close()


def reason(code: int) -> str:
    """libzmq's words for an errno (its own for some, as zmq_strerror)."""
    return zmq.strerror(code)


# (call, which use of it fails, errno, melissa's message); the client declares
# one field, sends it twice, finalizes: zmq_socket 1 is the hello's, 2 the
# push socket's; zmq_close 1 closes the hello socket, 2 the push socket.
FAULTS = [
    ("zmq_socket", 1, errno.EMFILE,
     'melissa_init("f"): cannot create a ZeroMQ socket (zmq_socket): ' + reason(errno.EMFILE)),
    ("zmq_socket", 2, errno.EMFILE,
     'melissa_init("f"): cannot create a ZeroMQ socket (zmq_socket): ' + reason(errno.EMFILE)),
    ("zmq_setsockopt", 1, errno.EINVAL,
     'melissa_init("f"): cannot set the socket option ZMQ_LINGER to 0 (zmq_setsockopt): '
     + reason(errno.EINVAL)),
    ("zmq_send", 1, errno.EHOSTUNREACH,
     'melissa_init("f"): sending the hello to {address} (zmq_send): '
     + reason(errno.EHOSTUNREACH)),
    ("zmq_close", 1, errno.ENOTSOCK,
     'melissa_init("f"): closing the hello socket (zmq_close): ' + reason(errno.ENOTSOCK)),
    ("zmq_msg_init_data", 1, errno.ENOMEM,
     'melissa_send("f"): zmq_msg_init_data: ' + reason(errno.ENOMEM)),
    ("zmq_msg_send", 1, errno.EHOSTUNREACH,
     'melissa_send("f"): sending to server rank 0 at {data} (zmq_msg_send): '
     + reason(errno.EHOSTUNREACH)),
    ("zmq_close", 2, errno.ENOTSOCK,
     "melissa_finalize(): closing the socket to server rank 0 (zmq_close): "
     + reason(errno.ENOTSOCK)),
    ("zmq_ctx_term", 1, errno.EFAULT,
     "melissa_finalize(): ending the ZeroMQ context (zmq_ctx_term): " + reason(errno.EFAULT)),
]


@pytest.mark.parametrize("call,at,code,message", FAULTS,
                         ids=[f"{c}-{a}" for c, a, _, _ in FAULTS])
def test_a_failing_zmq_call_is_named_with_its_reason(misuse, zmq_fault, call, at, code,
                                                     message):
    server = FakeServer(nb_time_steps=2)
    done = in_study(server, [misuse, "normal"], LD_PRELOAD=str(zmq_fault),
                    MSA_FAULT_CALL=call, MSA_FAULT_AT=str(at), MSA_FAULT_ERRNO=str(code))
    expected = message.format(address=server.address, data=server.data_endpoint)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"melissa: {expected}\n" in done.stderr, done.stderr
    assert "MELISSA_SEND_TIMEOUT" not in done.stderr
    assert "done" not in done.stdout


def test_the_shim_alone_changes_nothing(misuse, zmq_fault):
    """Preloaded with no call chosen, the client streams as without it (the
    failures above are the shim's doing, not the preload's)."""
    server = FakeServer(nb_time_steps=2)
    done = in_study(server, [misuse, "normal"], LD_PRELOAD=str(zmq_fault))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("done melissa-sa ")


@pytest.mark.parametrize("ranks", [0, 2])
def test_the_duplicated_communicator_has_errors_are_fatal(prefix, ranks):
    """The simulation's communicator returns errors (MPI_ERRORS_RETURN); the
    one libmelissa duplicates from it does not inherit that: an MPI failure in
    the library's collectives stops the simulation where it happens."""
    exe = prefix.parent / "errhandler"
    run([MPICC, "-rdynamic", f"-I{prefix}/include", CLIENTS / "errhandler.c", "-o", exe,
         f"-L{prefix}/lib", "-lmelissa", f"-Wl,-rpath,{prefix}/lib"])
    server = FakeServer(nb_time_steps=2)
    done = in_study(server, ([MPIEXEC, "-n", str(ranks)] if ranks else []) + [exe])
    assert done.returncode == 0, (done.stdout, done.stderr)
    # each rank's line, parsed by its words: mpiexec may join two ranks' lines
    said = dict(re.findall(r"rank (\d+): (fatal|return|other)", done.stdout))
    assert said == {str(r): "fatal" for r in range(max(ranks, 1))}, done.stdout


def test_a_big_endian_build_stops_at_compile_time(prefix):
    """melissa.c (the sends) compiled with the compiler's byte order forced to
    big-endian: a clear #error, where the plain compile passes."""
    cmd = [MPICC, "-fsyntax-only", "-std=gnu11", f"-I{prefix}/include", f"-I{SRC}",
           "-DMSA_ZMQ_STAND_IN", str(SRC / "melissa.c")]
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    forced = subprocess.run([*cmd, "-U__BYTE_ORDER__",
                             "-D__BYTE_ORDER__=__ORDER_BIG_ENDIAN__"],
                            capture_output=True, text=True, timeout=120)
    assert forced.returncode != 0
    assert "libmelissa needs a little-endian machine" in forced.stderr, forced.stderr


def test_pyzmq_s_libzmq_builds_with_libmelissa_s_declarations(tmp_path, monkeypatch, capsys):
    """pyzmq's wheel ships no zmq.h: another libzmq's zmq.h on the include
    path (here one that stops the compiler) is not read, and the library
    streams with the wheel's libzmq."""
    poisoned = tmp_path / "other-zmq"
    poisoned.mkdir()
    (poisoned / "zmq.h").write_text("#error another libzmq's zmq.h is read\n")
    monkeypatch.setenv("CPATH", str(poisoned))
    prefix = tmp_path / "prefix"
    build(prefix, MPICC, zmq="wheel")
    assert "libmelissa's declarations (no zmq.h)" in capsys.readouterr().out
    monkeypatch.delenv("CPATH")
    exe = build_client(prefix, CLIENTS / "misuse.c", tmp_path / "misuse")
    server = FakeServer(nb_time_steps=2)
    done = in_study(server, [exe, "normal"])
    assert done.returncode == 0, done.stderr
    assert server.messages == 2


def test_a_system_libzmq_builds_with_its_zmq_h(tmp_path, capsys):
    """Debian's libzmq3-dev: the library compiles with its zmq.h, links its
    libzmq.so.5 (nothing copied) and streams."""
    flags = system_zmq() if not missing("pkg-config") else None
    if flags is None or not finds_zmq_h(MPICC, flags[0]):
        pytest.skip("needs a system libzmq with its zmq.h (Debian: apt-get install "
                    "libzmq3-dev; and pkg-config)")
    prefix = tmp_path / "prefix"
    build(prefix, MPICC, zmq="system")
    assert "libzmq: the system (pkg-config libzmq), its zmq.h" in capsys.readouterr().out
    assert not list((prefix / "lib").glob("libzmq*"))
    needed = run(["readelf", "-d", prefix / "lib" / "libmelissa.so.0"]).stdout
    assert "Shared library: [libzmq.so.5]" in needed, needed
    exe = build_client(prefix, CLIENTS / "misuse.c", tmp_path / "misuse")
    server = FakeServer(nb_time_steps=2)
    done = in_study(server, [exe, "normal"])
    assert done.returncode == 0, done.stderr
    assert server.messages == 2
