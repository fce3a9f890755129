"""Helpers for the C / Fortran client tests: tool discovery, builds, a fake
server speaking the handshake, and the offline recomputation of a heat study."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import zmq
from conftest import BIN, ROOT, free_port

from melissa_sa.auth import secure_server_socket
from melissa_sa.protocol import (
    ProtocolError,
    Welcome,
    decode_header,
    decode_hello,
    encode_refusal,
    encode_welcome,
)

HEAT_C = ROOT / "examples" / "heat_pde_c"
HEAT_F = ROOT / "examples" / "heat_pde_fortran" / "heat.f90"
MPICC = str(BIN / "mpicc")
NX, NY, STEPS = 12, 7, 5
N_CELLS = NX * NY


def missing(*tools: str) -> list[str]:
    """The tools of ``tools`` not on PATH (nor in the venv's bin/)."""
    return [t for t in tools if not (shutil.which(t) or (BIN / t).exists())]


def run(cmd, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, **kw)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done


def build_client(prefix: Path, source: Path, exe: Path) -> Path:
    """A C client compiled by the mpich wheel's mpicc against ``prefix``."""
    run([MPICC, f"-I{prefix}/include", source, "-o", exe, f"-L{prefix}/lib", "-lmelissa",
         f"-Wl,-rpath,{prefix}/lib"])
    return exe


def cmake_build(source: Path, build: Path, prefix: Path, cc: str) -> None:
    run(["cmake", "-S", source, "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}",
         f"-DCMAKE_C_COMPILER={cc}"])
    run(["cmake", "--build", build])


def heat_history(heat: Path, params, tmp: Path, extra=()) -> np.ndarray:
    """The C heat solver run serially, outside a study, writing its fields."""
    out = tmp / "history.bin"
    run([heat, *extra, "--output", out, *[repr(float(v)) for v in params]], cwd=tmp,
        env={"PATH": "/usr/bin:/bin"})
    return np.fromfile(out, dtype="<f8").reshape(STEPS, N_CELLS)


def offline(results, heat: Path, tmp: Path, p: int) -> dict:
    """Every statistic of the heat study, recomputed two-pass from the solver's files."""
    params = results.parameters
    keep = params.folded
    order = np.lexsort((params.member[keep], params.group_id[keep]))
    values, member = params.values[keep][order], params.member[keep][order]
    n_groups = len(values) // (p + 2)
    y = np.stack([heat_history(heat, v, tmp) for v in values])
    y = y.reshape(n_groups, p + 2, STEPS, N_CELLS)
    assert np.all(member.reshape(n_groups, p + 2) == np.arange(p + 2))
    ab = y[:, :2].reshape(2 * n_groups, STEPS, N_CELLS)
    ref = {"mean": ab.mean(axis=0), "variance": ab.var(axis=0, ddof=1),
           "min": ab.min(axis=0), "max": ab.max(axis=0),
           "threshold_exceedance": np.stack([(ab > 300.0).mean(axis=0)]),
           "quantiles": np.stack([np.quantile(ab, q, axis=0) for q in (0.25, 0.5)])}
    dev = ab - ab.mean(axis=0)
    m2, m3, m4 = [(dev ** k).mean(axis=0) for k in (2, 3, 4)]
    ref["skewness"] = m3 / m2 ** 1.5
    ref["kurtosis"] = m4 / m2 ** 2 - 3.0
    first = np.zeros((p, STEPS, N_CELLS))
    total = np.zeros((p, STEPS, N_CELLS))
    for k in range(p):
        for t in range(STEPS):
            for c in range(N_CELLS):
                a, b, ck = y[:, 0, t, c], y[:, 1, t, c], y[:, 2 + k, t, c]
                first[k, t, c] = np.corrcoef(b, ck)[0, 1]
                total[k, t, c] = 1.0 - np.corrcoef(a, ck)[0, 1]
    ref["sobol_first"], ref["sobol_total"] = first, total
    return ref


#: the fake server's attempt tokens: ATTEMPT_BASE + 1 for the first hello, + 2 ...
ATTEMPT_BASE = 0xA77E0000


class FakeServer:
    """Server rank 0 of a one-rank study, in a thread: answers hellos (or refuses
    them with ``refuse``) and counts the data messages it pulls; ``deaf``: the
    welcome names a data endpoint where nobody listens (no data is taken);
    ``secret``: both sockets accept only peers presenting it; ``move``: the
    welcomes after the first name another data endpoint; ``submissions``: a
    :class:`~melissa_sa.server.attempts.SubmissionRecord` checked as rank 0
    checks it (a hello of an older submission is refused)."""

    def __init__(self, nb_time_steps: int = 2, refuse: str | None = None,
                 deaf: bool = False, secret: str | None = None, move: bool = False,
                 submissions=None):
        self.ctx = zmq.Context()
        self.rep = self.ctx.socket(zmq.REP)
        self.pull = self.ctx.socket(zmq.PULL)
        self.guard = None
        if secret:
            self.guard = secure_server_socket(self.rep, secret)
            secure_server_socket(self.pull, secret)
        port = self.rep.bind_to_random_port("tcp://127.0.0.1")
        data_port = self.pull.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.data_endpoint = f"tcp://127.0.0.1:{free_port() if deaf else data_port}"
        self.nb_time_steps, self.refuse, self.move = nb_time_steps, refuse, move
        self.submissions = submissions
        self.hellos, self.messages, self.payloads, self.headers = [], 0, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.rep, zmq.POLLIN)
        poller.register(self.pull, zmq.POLLIN)
        while not self._stop.is_set():
            events = dict(poller.poll(50))
            if self.rep in events:
                raw = self.rep.recv()
                try:
                    hello = decode_hello(raw)
                    self.hellos.append(hello)
                    if self.refuse:
                        raise ProtocolError(self.refuse)
                    if self.submissions is not None:
                        self.submissions.check(hello.sim_id, hello.submission)
                        self.submissions.accept(hello.sim_id, hello.submission)
                    endpoint = self.data_endpoint
                    if self.move and len(self.hellos) > 1:
                        endpoint = f"tcp://127.0.0.1:{free_port()}"
                    reply = encode_welcome(Welcome(len(self.hellos) - 1, 0, self.nb_time_steps,
                                                   [(0, hello.n_cells)], [endpoint],
                                                   ATTEMPT_BASE + len(self.hellos)))
                except ProtocolError as exc:
                    reply = encode_refusal(exc.reason)
                self.rep.send(reply)
            if self.pull in events:
                frames = self.pull.recv_multipart()
                self.headers.append(decode_header(frames[0]))
                self.payloads.append(frames[1])
                self.messages += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.rep.close(0)
        self.pull.close(0)
        if self.guard is not None:
            self.guard.close()
        self.ctx.term()
