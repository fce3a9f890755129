"""Shared helpers for tests that start real processes.

Every process a test starts is started in its own session and killed by
process group id in teardown (never by name), with bounded waits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (with a gap after it)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 60000:
            return port
    return port


def child_env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env["NUMBA_NUM_THREADS"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """Terminate ``proc``'s process group, then kill it; reap ``proc``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def run_mpi_script(processes, script: Path, text: str, args, n: int = 2,
                   timeout: float = 180) -> list:
    """Write ``text`` to ``script`` and run it on ``n`` MPI ranks (the venv's
    mpiexec, ``processes`` fixture, log beside the script); it must exit 0 and
    print one line ``RESULT <json>``, whose value is returned."""
    script.write_text(text)
    log_path = script.with_suffix(".log")
    proc = processes.start([MPIEXEC, "-n", n, sys.executable, script, *args],
                           log_path=log_path, cwd=ROOT)
    try:
        rc = proc.wait(timeout)
    except Exception:
        kill_group(proc)
        raise
    text = log_path.read_text()
    assert rc == 0, text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


class Processes:
    """Starts processes in new sessions and kills them all at teardown."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, cmd, log_path=None, **kwargs) -> subprocess.Popen:
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL
        kwargs.setdefault("env", child_env())
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, **kwargs)
        if log_path:
            out.close()
        self.started.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.started:
            kill_group(proc)


@pytest.fixture(scope="module")
def one_numba_thread():
    """One Numba thread for a module of many tiny kernel calls (parallel
    kernels on a busy 2-core box stall at their barriers); restored after."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


@pytest.fixture
def processes():
    procs = Processes()
    yield procs
    procs.cleanup()


def write_study(tmp_path: Path, **sections) -> Path:
    """Write a small study.json in ``tmp_path``; ``sections`` update the base."""
    base = {
        "output_dir": "out",
        "study_options": {"field_names": ["f"], "nb_parameters": 2,
                          "parameter_sweep_size": 2, "nb_time_steps": 2, "seed": 0},
        "sa_config": {"mean": True, "variance": True},
        "server_config": {"server_processes": 1, "connection_port": free_port(),
                          "data_puller_port": free_port()},
        "launcher_config": {"job_limit": 2, "server_timeout": 30},
        "client_config": {"executable_command": "python client.py"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key].update(value)
        else:
            base[key] = value
    path = tmp_path / "study.json"
    path.write_text(json.dumps(base, indent=1))
    return path


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="session")
def prefix(tmp_path_factory) -> Path:
    """libmelissa built and installed once per session (the venv's MPI,
    pyzmq's libzmq), for the C client tests and the C heat example."""
    from cclient_util import MPICC, missing

    lacking = missing("cc", "cmake")
    if lacking or not Path(MPICC).exists():
        pytest.skip(f"the C client tests need {', '.join(lacking or [MPICC])}")
    from melissa_sa.cclient import build

    path = tmp_path_factory.mktemp("melissa_prefix")
    build(path, MPICC, zmq="wheel", quiet=True)
    return path


@pytest.fixture(scope="session")
def heat(prefix, tmp_path_factory) -> Path:
    """The C heat example, built by CMake against the installed prefix."""
    from cclient_util import HEAT_C, MPICC, cmake_build

    build = tmp_path_factory.mktemp("heat_c_build")
    cmake_build(HEAT_C, build, prefix, MPICC)
    return build / "heat"
