"""libmelissa's study secret (melissa_sa/cclient/src/secret.c): read as the
Python client reads it (melissa_sa/auth.py), by rank 0 only.

* white space around the secret is stripped (leading blanks, tabs);
* a symbolic link and a FIFO are refused at once (a FIFO does not block);
* only rank 0 opens the file (a rank given a missing file still runs);
* a wrong secret never gets an answer: the connect timeout's message.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from cclient_util import MPICC, FakeServer, missing, run
from conftest import MPIEXEC

from melissa_sa.cclient import build

MISUSE = Path(__file__).parent / "clients" / "misuse.c"
SECRET = "s3cret-of-the-study"


@pytest.fixture(scope="module")
def exe(tmp_path_factory) -> Path:
    if missing("cc") or not Path(MPICC).exists():
        pytest.skip(f"needs {', '.join(missing('cc') or [MPICC])}")
    tmp = tmp_path_factory.mktemp("secret")
    build(tmp / "prefix", MPICC, zmq="wheel", quiet=True)
    out = tmp / "misuse"
    run([MPICC, f"-I{tmp}/prefix/include", MISUSE, "-o", out, f"-L{tmp}/prefix/lib",
         "-lmelissa", f"-Wl,-rpath,{tmp}/prefix/lib"])
    return out


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MELISSA_", "PMI_", "HYDRA_"))}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_client(cmd, server: FakeServer, **extra) -> subprocess.CompletedProcess:
    env = clean_env(MELISSA_SERVER_ADDRESS=server.address, MELISSA_SIMULATION_ID=3,
                    MELISSA_CONNECT_TIMEOUT=3, **extra)
    try:
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                              env=env, timeout=60)
    finally:
        server.close()


def test_white_space_around_the_secret_is_stripped(exe, tmp_path):
    path = secret_file(tmp_path / "secret", f"  {SECRET}\t\n")
    server = FakeServer(secret=SECRET)
    done = run_client([exe, "normal"], server, MELISSA_SECRET_FILE=path)
    assert done.returncode == 0, done.stderr
    assert [h.field for h in server.hellos] == ["f"]


def test_a_wrong_secret_gets_no_answer(exe, tmp_path):
    path = secret_file(tmp_path / "secret", "not-the-secret\n")
    server = FakeServer(secret=SECRET)
    done = run_client([exe, "normal"], server, MELISSA_SECRET_FILE=path)
    assert done.returncode == 1
    assert "no answer from the melissa-sa server at" in done.stderr
    assert server.hellos == []


@pytest.mark.parametrize("kind,message", [
    ("symlink", "cannot read the study secret: Too many levels of symbolic links"),
    ("fifo", "the study secret must be a regular file"),
])
def test_links_and_fifos_are_refused_at_once(exe, tmp_path, kind, message):
    path = tmp_path / "secret"
    if kind == "symlink":
        path.symlink_to(secret_file(tmp_path / "real", SECRET))
    else:
        os.mkfifo(path, 0o600)
    start = time.monotonic()
    done = run_client([exe, "normal"], FakeServer(secret=SECRET), MELISSA_SECRET_FILE=path)
    assert done.returncode == 1
    assert f'melissa_init("f"): MELISSA_SECRET_FILE={path}: {message}' in done.stderr
    assert time.monotonic() - start < 20


def test_only_rank_0_reads_the_secret(exe, tmp_path):
    """Rank 1 is given a file that does not exist: it never opens it (rank 0
    broadcasts the secret), so the run succeeds."""
    path = secret_file(tmp_path / "secret", SECRET + "\n")
    server = FakeServer(secret=SECRET)
    cmd = [MPIEXEC, "-n", "1", "-env", "MELISSA_SECRET_FILE", path, exe, "normal", ":",
           "-n", "1", "-env", "MELISSA_SECRET_FILE", tmp_path / "missing", exe, "normal"]
    done = run_client(cmd, server)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("done melissa-sa") == 2
    assert [h.n_cells for h in server.hellos] == [8]
