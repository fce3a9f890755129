#!/usr/bin/env python3
"""End-to-end benchmarks: server ingest against raw ZeroMQ, and a whole study
through ``melissa-sa run`` against "the classic way" (files + post-processing).

    python benchmarks/e2e.py               # full run (about 7 minutes on 2 cores)
    python benchmarks/e2e.py --quick       # small run (about 30 s)
    python benchmarks/e2e.py --only ingest # or --only study
    python benchmarks/e2e.py --profile     # + cProfile of the server during ingest

Nothing is asserted: the targets are printed next to the numbers. A table goes
to stdout and everything measured to ``benchmarks/results/e2e.json``.

1. Ingest (GB/s of field data into one server rank)
---------------------------------------------------
The real server (``mpiexec -n 1 python -m melissa_sa.server.main study.json``,
standalone: no launcher, it accepts simulation ids 0..n_runs-1 and exits when
all are folded) receives K clients, each started here with
``MELISSA_SERVER_ADDRESS`` / ``MELISSA_SIMULATION_ID``, each calling
``melissa_send`` T times with a precomputed float64 array of ``--cells`` cells.

What is timed, and why it is fair:

* Client start-up and the handshake (``melissa_init``) are outside the window:
  every client connects, says hello, then prints ``ready`` and waits; all get
  ``go`` together. They are per-client costs, not ingest.
* One warm-up simulation (a whole group under Sobol') is sent and folded
  before ``go``: the first call of each Numba kernel (cache load) and the
  first touch of the statistics' pages are one-time costs of a study, not of
  its steady ingest. The warm-up's own rate is kept in the JSON (``cold``).
* Start = the earliest ``time.time()`` taken by a client just before its first
  send. End = the moment the benchmark reads the server's log line saying the
  last measured simulation (group) is folded on every rank ("group N done";
  the benchmark timestamps each stderr line as it arrives through mpiexec, so
  the few ms of log forwarding count against the server). Rate = payload
  bytes (float64 values, headers excluded) / (end - start).
* Raw: the same number of sender processes, the same message sizes (a 44-byte
  header frame + the array frame), ``send_multipart(copy=False)``, into one
  receiver process that does ``recv_multipart(copy=False)`` and nothing else
  (RCVHWM 0 as the server). Same warm-up, same ready/go, same start rule; end
  = the receiver's clock after its last message. Two raw variants: senders
  that queue freely (the transport's ceiling; the ratio is taken against it)
  and senders that wait for ZeroMQ to release each message before the next,
  as ``melissa_send`` does (``track=True`` + ``tracker.wait``).
* Every configuration runs ``--repeat`` times, alternating raw and server, and
  the best and the median are kept: the machine may be shared (before each
  measurement the benchmark waits, up to ``--quiet-wait`` s, for an idle CPU).
* CPU accounting, which does not depend on how the scheduler shares 2 cores
  between 5+ busy threads: CPU seconds per GB of the receiving process (by
  thread: Python main thread vs ZeroMQ I/O thread, from /proc) and of the
  senders, over the same window. On a machine where clients and server share
  the cores, throughput ~ cores / (receiver + senders CPU s per GB).
* Defaults: 10^6 cells (8 MB messages); mean+variance: 4 clients x 50 steps;
  Sobol' (p = 2, groups of 4): 1 group x 20 steps. ``--profile`` reruns both
  under cProfile (main thread) and keeps the top functions.

2. A whole study: ``melissa-sa run`` against the classic way
------------------------------------------------------------
One simulation script (written to the scratch directory) computes an
Ishigami field per cell, ``Y[t, c] = (1 + t) (sin x1 + a_c sin^2 x2 + b_c x3^4
sin x1)`` (the formula of ``examples/ishigami``), for T steps. Under melissa-sa
it calls ``melissa_init / melissa_send / melissa_finalize``; the classic way
runs the same script without those calls (it does not import the client) and
writes its ``(T, N)`` history to a ``.npy`` file, flushed and fsync'd (a real
study writes to a parallel file system and must have its data durable).

* melissa-sa: wall time of ``melissa-sa run study.json --no-progress`` (the
  whole command: launcher, server start-up under mpiexec, every client,
  results file).
* classic: the same design (``melissa_sa.sampling.sampler_from_config`` on the
  same config; checked equal to ``/parameters`` of the results file), the same
  ``job_limit`` concurrent jobs, then one post-processing process that reads
  every file and computes the same statistics (mean and unbiased variance over
  the A and B runs, Martinez first- and total-order indices, their delta-method
  confidence intervals on the z scale) and saves them (``.npz``). Its results
  are checked against ``results.h5``. The post-processing reads the files
  twice: after dropping the page cache (``echo 3 > /proc/sys/vm/drop_caches``,
  when permitted: the files of a real study are not in the post-processing
  node's memory), then warm; both totals are reported.
* Two configurations: a small one (5 x 10^4 cells, 5 steps, 32 groups = 160
  runs: start-up cost dominates) and a large one (10^6 cells x 10 steps, 16
  groups = 80 runs, 6.4 GB of field data: data volume matters); p = 3,
  ``job_limit`` 2; melissa-sa with 1 and with 2 server ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
PY = sys.executable
BIN = Path(sys.executable).parent
SCRATCH_BASE = Path("/work/scratch_e2ebench")
HEADER_BYTES = 44
FIELD = "f"

QUIET_WAIT = [60.0]   # seconds to wait for an idle machine before each measurement
TARGET_INGEST_RATIO = 0.70
TARGET_STUDY_SPEEDUP = 3.0

# ---------------------------------------------------------------------------
# process bookkeeping: everything started here is stopped by pid / group
# ---------------------------------------------------------------------------
_started: list[subprocess.Popen] = []


def _children_of(pids: set[int]) -> set[int]:
    """All descendants of ``pids`` (from /proc)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parent[int(entry)] = ppid
    found, frontier = set(), set(pids)
    while frontier:
        new = {p for p, pp in parent.items() if pp in frontier and p not in found}
        found |= new
        frontier = new
    return found


def spawn(cmd, **kw) -> subprocess.Popen:
    kw.setdefault("start_new_session", True)
    proc = subprocess.Popen([str(c) for c in cmd], **kw)
    _started.append(proc)
    return proc


def stop_all() -> None:
    """Terminate whatever this benchmark started and is still alive."""
    alive = [p for p in _started if p.poll() is None]
    if not alive:
        return
    pids = {p.pid for p in alive} | _children_of({p.pid for p in alive})
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(p.poll() is None for p in alive):
            time.sleep(0.05)
    for p in alive:
        try:
            p.wait(1)
        except subprocess.TimeoutExpired:
            pass


def cpu_busy(interval: float = 0.5) -> float:
    """Fraction of the machine's CPU time busy over ``interval`` seconds."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]          # total, idle + iowait
    t0, i0 = sample()
    time.sleep(interval)
    t1, i1 = sample()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (at most ``max_wait`` s) until the machine is nearly idle: others may
    share it. Returns the busy fraction last seen (kept with each result)."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        time.sleep(1.0)
        busy = cpu_busy()
    return busy


def proc_thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid``, summed by thread name
    (``main``, ``ZMQbg/IO/0``, ...)."""
    out: dict[str, float] = {}
    tck = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = "main" if int(tid) == pid else raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tck
    return out


def self_cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def find_rank_pid(mpiexec_pid: int, marker: str, timeout: float = 30) -> int | None:
    """The pid of the (single) MPI rank started by ``mpiexec_pid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _children_of({mpiexec_pid}):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if any(marker.encode() in c for c in cmd) and b"mpiexec" not in cmd[0]:
                return pid
        time.sleep(0.05)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LineReader:
    """Reads a stream in a thread; every line is kept with its arrival time."""

    def __init__(self, stream, echo=None):
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self._echo = echo
        self.cpu_pid: int | None = None          # sample this process's CPU time ...
        self.cpu_at: dict[int, float] = {}       # ... at each line: line index -> cpu s
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream):
        for raw in iter(stream.readline, b""):
            t = time.time()
            if self.cpu_pid is not None:
                self.cpu_at[len(self.lines)] = proc_thread_cpu(self.cpu_pid)
            line = raw.decode(errors="replace").rstrip("\n")
            with self.cond:
                self.lines.append((t, line))
                self.cond.notify_all()
            if self._echo is not None:
                print(line, file=self._echo, flush=True)
        with self.cond:
            self.lines.append((time.time(), None))  # EOF
            self.cond.notify_all()

    def cpu_of_line(self, pattern: str) -> dict | None:
        rx = re.compile(pattern)
        for i, (_, line) in enumerate(self.lines):
            if line is not None and rx.search(line):
                return self.cpu_at.get(i)
        return None

    def wait_for(self, pattern: str, timeout: float) -> tuple[float, re.Match]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = 0
        with self.cond:
            while True:
                while i < len(self.lines):
                    t, line = self.lines[i]
                    i += 1
                    if line is None:
                        raise RuntimeError(f"stream ended before {pattern!r}:\n" + self.text())
                    m = rx.search(line)
                    if m:
                        return t, m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {pattern!r} within {timeout} s:\n" + self.text())
                self.cond.wait(left)

    def text(self, last: int = 30) -> str:
        return "\n".join(line for _, line in self.lines[-last:] if line is not None)


def read_ready(proc: subprocess.Popen, what: str, timeout: float = 60) -> str:
    """Read one line from a child's stdout (with a timeout)."""
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not out or not out[0]:
        raise RuntimeError(f"{what}: no ready line (exit code {proc.poll()})")
    return out[0].decode().strip()


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------
# child roles (python e2e.py _role ...)
# ---------------------------------------------------------------------------
def role_melissa_client(a) -> None:
    """An instrumented 'simulation' that sends a precomputed array T times."""
    import numpy as np
    from melissa_sa.client import melissa_finalize, melissa_init, melissa_send

    sim_id = int(os.environ["MELISSA_SIMULATION_ID"])
    arr = np.random.default_rng(sim_id).random(a.cells) + sim_id
    melissa_init(FIELD, a.cells, None)
    print("ready", flush=True)
    sys.stdin.readline()
    c0 = self_cpu_seconds()
    t0 = time.time()
    for _ in range(a.steps):
        melissa_send(FIELD, arr)
    t1 = time.time()
    melissa_finalize()
    t2 = time.time()
    print(json.dumps({"first_send": t0, "last_send": t1, "finalized": t2,
                      "cpu_s": self_cpu_seconds() - c0}), flush=True)


def role_raw_send(a) -> None:
    import numpy as np
    import zmq

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, -1)
    push.connect(a.endpoint)
    arr = np.random.default_rng(a.seed).random(a.cells)
    header = bytes(HEADER_BYTES)
    print("ready", flush=True)
    sys.stdin.readline()
    c0 = self_cpu_seconds()
    t0 = time.time()
    for _ in range(a.steps):
        if a.track:
            tracker = push.send_multipart([header, memoryview(arr)], copy=False, track=True)
            tracker.wait()
        else:
            push.send_multipart([header, memoryview(arr)], copy=False)
    t1 = time.time()
    push.close()
    ctx.term()
    t2 = time.time()
    print(json.dumps({"first_send": t0, "last_send": t1, "finalized": t2,
                      "cpu_s": self_cpu_seconds() - c0}), flush=True)


def role_raw_recv(a) -> None:
    """recv_multipart(copy=False) and nothing else; reports its clock."""
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 0)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(f"tcp://127.0.0.1:{a.port}")
    print("bound", flush=True)
    nbytes = 0
    for _ in range(a.warm):
        frames = pull.recv_multipart(copy=False)
    print("warm", flush=True)
    c0 = self_cpu_seconds()
    th0 = proc_thread_cpu(os.getpid())
    t_first = None
    for _ in range(a.messages):
        frames = pull.recv_multipart(copy=False)
        if t_first is None:
            t_first = time.time()
        nbytes += len(frames[1])
    t_last = time.time()
    cpu = self_cpu_seconds() - c0
    threads = {k: v - th0.get(k, 0.0) for k, v in proc_thread_cpu(os.getpid()).items()}
    pull.close()
    ctx.term()
    print(json.dumps({"first_recv": t_first, "last_recv": t_last, "bytes": nbytes,
                      "cpu_s": cpu, "threads_cpu_s": threads}), flush=True)


def role_postprocess(a) -> None:
    """The classic way's post-processing: read every run's file, compute stats.

    Per time step, the step's row of every file is read into ``y`` (member,
    group, cell); the statistics are then computed in blocks of cells that fit
    in cache (a plain whole-array NumPy version is about 5x slower here).
    """
    import numpy as np

    t0 = time.perf_counter()
    p, g, steps, n = a.params, a.groups, a.steps, a.cells
    gs = p + 2
    mms = [np.load(Path(a.dir) / f"sim_{s}.npy", mmap_mode="r") for s in range(g * gs)]
    q = statistics.NormalDist().inv_cdf(0.5 + a.level / 2)
    out = {k: np.empty((steps, n)) for k in ("mean", "variance")}
    for k in ("sobol_first", "sobol_total", "sobol_first_low", "sobol_first_high",
              "sobol_total_low", "sobol_total_high"):
        out[k] = np.empty((p, steps, n))
    se_scale = q / np.sqrt(max(g - 3, 1))
    t_read = 0.0
    y = np.empty((gs, g, n))

    def dot(u, v):
        return np.einsum("ij,ij->j", u, v) / g

    for t in range(steps):
        tr = time.perf_counter()
        for s, mm in enumerate(mms):
            y[s % gs, s // gs] = mm[t]
        t_read += time.perf_counter() - tr
        for c0 in range(0, n, a.block):
            c1 = min(n, c0 + a.block)
            yb = y[:, :, c0:c1]
            ab = yb[:2].reshape(2 * g, c1 - c0)
            mean = ab.mean(axis=0)
            dev = ab - mean
            out["mean"][t, c0:c1] = mean
            out["variance"][t, c0:c1] = np.einsum("ij,ij->j", dev, dev) / (2 * g - 1)
            z = []                      # per member: standardised powers, ok, 4th moment
            for m in range(gs):
                x = yb[m] - yb[m].mean(axis=0)
                v = dot(x, x)
                ok = v > 0
                xs = x * (1.0 / np.sqrt(np.where(ok, v, 1.0)))
                x2 = xs * xs
                z.append((xs, x2, x2 * xs, ok, dot(x2, x2)))
            for k in range(p):
                cs, c2, c3, okc, r04 = z[2 + k]
                for side, m in ((0, 1), (1, 0)):   # S_k: corr(B, C_k); ST_k: corr(A, C_k)
                    xs, x2, x3, okx, r40 = z[m]
                    ok = okx & okc
                    r = np.where(ok, dot(xs, cs), 0.0)
                    rr = r * r
                    var = (dot(x2, c2) * (1 + rr / 2) - r * (dot(x3, cs) + dot(xs, c3))
                           + rr / 4 * (r40 + r04))
                    half = se_scale * np.sqrt(np.maximum(var, 0.0)) / np.maximum(1 - rr,
                                                                                  1e-300)
                    zr = np.arctanh(np.clip(r, -1 + 1e-16, 1 - 1e-16))
                    lo = np.where(ok, np.tanh(zr - half), 0.0)
                    hi = np.where(ok, np.tanh(zr + half), 0.0)
                    if side == 0:
                        out["sobol_first"][k, t, c0:c1] = r
                        out["sobol_first_low"][k, t, c0:c1] = lo
                        out["sobol_first_high"][k, t, c0:c1] = hi
                    else:
                        out["sobol_total"][k, t, c0:c1] = 1 - r
                        out["sobol_total_low"][k, t, c0:c1] = np.where(ok, 1 - hi, 0.0)
                        out["sobol_total_high"][k, t, c0:c1] = np.where(ok, 1 - lo, 0.0)
    t_compute_end = time.perf_counter()
    with open(a.out, "wb") as f:
        np.savez(f, **out)
        f.flush()
        os.fsync(f.fileno())
    t_end = time.perf_counter()
    print(json.dumps({"read_s": t_read, "compute_s": t_compute_end - t0 - t_read,
                      "write_s": t_end - t_compute_end, "total_s": t_end - t0}), flush=True)


# the study's simulation: one script, with or without melissa calls
SIM_SOURCE = r'''#!/usr/bin/env python3
"""Per-cell Ishigami field (as examples/ishigami); melissa-sa or .npy output.

    python sim.py --cells N --steps T [--out PATH.npy] x1 x2 x3
"""
import os
import sys

import numpy as np


def main(argv):
    cells, steps, out, x = 1000, 5, None, []
    it = iter(argv)
    for tok in it:
        if tok == "--cells":
            cells = int(next(it))
        elif tok == "--steps":
            steps = int(next(it))
        elif tok == "--out":
            out = next(it)
        else:
            x.append(float(tok))
    x1, x2, x3 = x
    frac = np.linspace(0.0, 1.0, cells)
    a, b = 7.0 + (2.0 - 7.0) * frac, 0.1 + (0.3 - 0.1) * frac
    base = np.sin(x1) + a * np.sin(x2) ** 2 + b * x3 ** 4 * np.sin(x1)
    if out is None:
        from melissa_sa.client import melissa_finalize, melissa_init, melissa_send
        melissa_init("y", cells, None)
        for t in range(steps):
            melissa_send("y", base * (1.0 + t))
        melissa_finalize()
    else:
        history = np.empty((steps, cells))
        for t in range(steps):
            history[t] = base * (1.0 + t)
        tmp = out + ".tmp"
        with open(tmp, "wb") as f:
            np.save(f, history)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)


if __name__ == "__main__":
    main(sys.argv[1:])
'''


# ---------------------------------------------------------------------------
# 1. ingest
# ---------------------------------------------------------------------------
def ingest_config(work: Path, n_runs: int, steps: int, sobol: bool, p: int) -> Path:
    groups = n_runs // (p + 2) if sobol else n_runs
    cfg = {
        "output_dir": str(work / "out"),
        "study_options": {
            "field_names": [FIELD], "nb_parameters": p, "parameter_sweep_size": groups,
            "nb_time_steps": steps, "sampler": "random_uniform", "seed": 0,
            "l_bounds": [0.0] * p, "u_bounds": [1.0] * p,
            "simulation_timeout": 600, "crashes_before_redraw": 3},
        "sa_config": {
            "mean": True, "variance": True, "skewness": False, "kurtosis": False,
            "min": False, "max": False, "sobol_indices": sobol, "second_order": False,
            "confidence_level": 0.95, "checkpoint_interval": 10 ** 9},
        "server_config": {"server_processes": 1, "connection_port": free_port(),
                          "data_puller_port": free_port(), "bind": "127.0.0.1",
                          "zmq_hwm": 0},
        "launcher_config": {"scheduler": "local", "job_limit": 1, "fault_tolerance": False},
        "client_config": {"executable_command": "true", "client_processes": 1},
    }
    path = work / "study.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def _go(clients: list[subprocess.Popen]) -> None:
    for c in clients:
        c.stdin.write(b"go\n")
        c.stdin.flush()


def _client_results(clients, timeout: float) -> list[dict]:
    res = []
    for c in clients:
        out, _ = c.communicate(timeout=timeout)
        if c.returncode != 0:
            raise RuntimeError(f"client exited with {c.returncode}")
        res.append(json.loads(out.decode().strip().splitlines()[-1]))
    return res


def run_server_ingest(work: Path, clients: int, cells: int, steps: int, sobol: bool,
                      p: int, profile: Path | None = None, timeout: float = 300) -> dict:
    """K measured clients (+ one warm-up simulation or group) into the real server."""
    gs = p + 2 if sobol else 1
    if clients % gs:
        raise ValueError(f"{clients} clients do not make whole groups of {gs}")
    n_runs = clients + gs                      # the last group is the warm-up
    work.mkdir(parents=True, exist_ok=True)
    study = ingest_config(work, n_runs, steps, sobol, p)
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("MELISSA_LAUNCHER_ADDRESS", "MELISSA_RESTART"):
        env.pop(k, None)
    py_args = [PY, "-m", "melissa_sa.server.main", study]
    if profile is not None:
        py_args = [PY, "-m", "cProfile", "-o", profile, "-m", "melissa_sa.server.main", study]
    t_spawn = time.time()
    server = spawn([BIN / "mpiexec", "-n", "1", *py_args], cwd=work, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = LineReader(server.stderr)
    try:
        log.cpu_pid = find_rank_pid(server.pid, "melissa_sa.server.main")
        _, m = log.wait_for(r"connection socket (tcp://\S+),", 120)
        t_listening = time.time()
        cenv = dict(env, MELISSA_SERVER_ADDRESS=m.group(1))

        def start(sim_id):
            return spawn([PY, HERE, "_melissa_client", "--cells", cells, "--steps", steps],
                         env=dict(cenv, MELISSA_SIMULATION_ID=str(sim_id)), cwd=work,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)

        warm_group = clients // gs
        warm = [start(s) for s in range(clients, n_runs)]
        for c in warm:
            read_ready(c, "warm-up client")
        _go(warm)
        warm_res = _client_results(warm, timeout)
        t_warm_done, _ = log.wait_for(rf"group {warm_group} done", timeout)
        cold_t = t_warm_done - min(r["first_send"] for r in warm_res)
        measured = [start(s) for s in range(clients)]
        for c in measured:
            read_ready(c, "client")
        busy = wait_quiet(QUIET_WAIT[0])
        cpu_go = proc_thread_cpu(log.cpu_pid) if log.cpu_pid else {}
        t_go = time.time()
        _go(measured)
        res = _client_results(measured, timeout)
        t_done = max(log.wait_for(rf"group {g} done", timeout)[0] for g in range(warm_group))
        cpu_done = max((log.cpu_of_line(rf"group {g} done") or {} for g in range(warm_group)),
                       key=lambda d: sum(d.values()))
        t_results, _ = log.wait_for(r"results written", timeout)
        _, mg = log.wait_for(r"received ([0-9.]+) GB", timeout)
        server.wait(timeout)
        t_exit = time.time()
    except BaseException:
        stop_all()
        raise
    if server.returncode != 0:
        raise RuntimeError(f"server exited with {server.returncode}:\n{log.text()}")
    payload = clients * steps * cells * 8
    start_t = min(r["first_send"] for r in res)
    return {
        "payload_bytes": payload,
        "seconds": t_done - start_t,
        "gbps": payload / (t_done - start_t) / 1e9,
        "clients_send_seconds": max(r["last_send"] for r in res) - start_t,
        "go_to_first_send_s": start_t - t_go,
        "results_write_s": t_results - t_done,
        "server_startup_s": t_listening - t_spawn,
        "server_exit_after_fold_s": t_exit - t_done,
        "server_received_gb": float(mg.group(1)),
        "cold_gbps": gs * steps * cells * 8 / cold_t / 1e9,
        "cpu_busy_before": busy,
        "server_cpu_s_per_gb": (sum(cpu_done.values()) - sum(cpu_go.values()))
        / (payload / 1e9) if cpu_done else float("nan"),
        "server_threads_cpu_s_per_gb": {k: (v - cpu_go.get(k, 0.0)) / (payload / 1e9)
                                        for k, v in cpu_done.items()},
        "clients_cpu_s_per_gb": sum(r["cpu_s"] for r in res) / (payload / 1e9),
    }


def run_raw(work: Path, clients: int, cells: int, steps: int, track: bool,
            warm_senders: int, timeout: float = 300) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    recv = spawn([PY, HERE, "_raw_recv", "--port", port, "--warm", warm_senders * steps,
                  "--messages", clients * steps], stdout=subprocess.PIPE, cwd=work)
    try:
        if read_ready(recv, "raw receiver") != "bound":
            raise RuntimeError("raw receiver did not bind")
        endpoint = f"tcp://127.0.0.1:{port}"

        def start(seed):
            cmd = [PY, HERE, "_raw_send", "--endpoint", endpoint, "--cells", cells,
                   "--steps", steps, "--seed", seed] + (["--track"] if track else [])
            return spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=work)

        warm = [start(1000 + i) for i in range(warm_senders)]
        for c in warm:
            read_ready(c, "warm-up sender")
        _go(warm)
        _client_results(warm, timeout)
        if read_ready(recv, "raw receiver", timeout) != "warm":
            raise RuntimeError("raw receiver: no warm line")
        senders = [start(i) for i in range(clients)]
        for c in senders:
            read_ready(c, "sender")
        busy = wait_quiet(QUIET_WAIT[0])
        _go(senders)
        res = _client_results(senders, timeout)
        out, _ = recv.communicate(timeout=timeout)
    except BaseException:
        stop_all()
        raise
    r = json.loads(out.decode().strip().splitlines()[-1])
    payload = clients * steps * cells * 8
    assert r["bytes"] == payload, (r["bytes"], payload)
    start_t = min(x["first_send"] for x in res)
    return {"payload_bytes": payload, "seconds": r["last_recv"] - start_t,
            "gbps": payload / (r["last_recv"] - start_t) / 1e9,
            "clients_send_seconds": max(x["last_send"] for x in res) - start_t,
            "cpu_busy_before": busy,
            "server_cpu_s_per_gb": r["cpu_s"] / (payload / 1e9),
            "server_threads_cpu_s_per_gb": {k: v / (payload / 1e9)
                                            for k, v in r["threads_cpu_s"].items()},
            "clients_cpu_s_per_gb": sum(x["cpu_s"] for x in res) / (payload / 1e9)}


def summarise(runs: list[dict]) -> dict:
    rates = [r["gbps"] for r in runs]
    return {"best_gbps": max(rates), "median_gbps": statistics.median(rates),
            "all_gbps": rates, "runs": runs}


def bench_ingest(args, scratch: Path) -> dict:
    variants = [("mean+variance", False, args.clients, args.steps),
                ("mean+variance+sobol p=%d" % args.sobol_params, True,
                 args.sobol_groups * (args.sobol_params + 2), args.sobol_steps)]
    out = {}
    for name, sobol, clients, steps in variants:
        gs = args.sobol_params + 2 if sobol else 1
        runs = {"raw": [], "raw_tracked": [], "server": []}
        for rep in range(args.repeat):
            tag = f"{'sobol' if sobol else 'mv'}_{rep}"
            runs["raw"].append(run_raw(scratch / f"raw_{tag}", clients, args.cells, steps,
                                       False, gs))
            runs["raw_tracked"].append(run_raw(scratch / f"rawt_{tag}", clients, args.cells,
                                               steps, True, gs))
            runs["server"].append(run_server_ingest(scratch / f"srv_{tag}", clients,
                                                    args.cells, steps, sobol,
                                                    args.sobol_params))
            _rm(scratch / f"srv_{tag}")
            print(f"  [{name} rep {rep}] raw {runs['raw'][-1]['gbps']:.2f} GB/s, "
                  f"raw tracked {runs['raw_tracked'][-1]['gbps']:.2f} GB/s, "
                  f"server {runs['server'][-1]['gbps']:.2f} GB/s", file=sys.stderr,
                  flush=True)
        res = {k: summarise(v) for k, v in runs.items()}
        res["ratio_best"] = res["server"]["best_gbps"] / res["raw"]["best_gbps"]
        res["ratio_median"] = res["server"]["median_gbps"] / res["raw"]["median_gbps"]
        res["setup"] = {"clients": clients, "cells": args.cells, "steps": steps,
                        "message_bytes": args.cells * 8, "sobol": sobol,
                        "nb_parameters": args.sobol_params if sobol else None,
                        "warmup_runs": gs, "server_processes": 1}
        out[name] = res
    if args.profile:
        for name, sobol, clients, steps in variants:
            prof = scratch / "server.prof"
            run_server_ingest(scratch / "srv_profile", clients, args.cells, steps, sobol,
                              args.sobol_params, profile=prof)
            out[name]["server_profile"] = profile_summary(prof)
            _rm(scratch / "srv_profile")
    return out


def profile_summary(prof: Path, top: int = 15) -> list[dict]:
    import pstats

    st = pstats.Stats(str(prof))
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, _) in st.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({fn})", "calls": nc,
                     "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)})
    rows.sort(key=lambda r: -r["tottime_s"])
    return rows[:top]


# ---------------------------------------------------------------------------
# 2. a whole study
# ---------------------------------------------------------------------------
def study_config(work: Path, sim: Path, cells: int, steps: int, groups: int,
                 job_limit: int, server_processes: int) -> Path:
    pi = 3.141592653589793
    cfg = {
        "output_dir": str(work / "out"),
        "study_options": {
            "field_names": ["y"], "nb_parameters": 3, "parameter_names": ["x1", "x2", "x3"],
            "parameter_sweep_size": groups, "nb_time_steps": steps, "sampler": "sobol",
            "seed": 0, "l_bounds": [-pi] * 3, "u_bounds": [pi] * 3,
            "simulation_timeout": 600, "crashes_before_redraw": 3},
        "sa_config": {
            "mean": True, "variance": True, "skewness": False, "kurtosis": False,
            "min": False, "max": False, "sobol_indices": True, "second_order": False,
            "confidence_level": 0.95, "checkpoint_interval": 10 ** 9},
        "server_config": {"server_processes": server_processes,
                          "connection_port": free_port(), "data_puller_port": free_port(),
                          "bind": "127.0.0.1", "zmq_hwm": 0},
        "launcher_config": {"scheduler": "local", "job_limit": job_limit,
                            "fault_tolerance": True, "server_timeout": 120},
        "client_config": {"executable_command":
                          f"python {sim} --cells {cells} --steps {steps}",
                          "client_processes": 1},
    }
    path = work / "study.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def drop_caches() -> tuple[bool, str]:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True, "echo 3 > /proc/sys/vm/drop_caches: ok"
    except OSError as exc:
        return False, f"echo 3 > /proc/sys/vm/drop_caches: {exc}"


def run_melissa_study(work: Path, study: Path, timeout: float) -> dict:
    """Wall time of ``melissa-sa run study.json`` (with ``-v`` to time its phases)."""
    env = dict(os.environ)
    for k in ("MELISSA_LAUNCHER_ADDRESS", "MELISSA_RESTART", "MELISSA_SERVER_ADDRESS"):
        env.pop(k, None)
    cli = BIN / "melissa-sa"
    cmd = [cli] if cli.exists() else [PY, "-m", "melissa_sa.cli"]
    _rm(work / "out")
    busy = wait_quiet(QUIET_WAIT[0])
    t0 = time.time()
    proc = spawn([*cmd, "run", study, "--no-progress", "-v"], stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, env=env, cwd=work)
    log = LineReader(proc.stdout)
    try:
        proc.wait(timeout)
        log.wait_for(r"study finished|error", 30)
    except BaseException:
        stop_all()
        raise
    wall = time.time() - t0
    (work / "melissa-sa.log").write_text(log.text(10 ** 6) + "\n")
    if proc.returncode != 0:
        raise RuntimeError(f"melissa-sa run exited with {proc.returncode}:\n{log.text()}\n"
                           f"server log:\n{tail(work / 'out' / 'logs' / 'server.log')}")
    running = [t for t, line in log.lines if line and re.search(r"\) running, pid", line)]
    finished = [t for t, line in log.lines if line and re.search(r"\) finished", line)]
    res = {"wall_s": wall, "cpu_busy_before": busy}
    if running and finished:
        res["until_first_client_s"] = min(running) - t0
        res["clients_s"] = max(finished) - min(running)
        res["after_last_client_s"] = t0 + wall - max(finished)
    return res


def run_classic_study(work: Path, study: Path, sim: Path, cells: int, steps: int,
                      groups: int, job_limit: int, cold: bool, timeout: float) -> dict:
    import numpy as np

    from melissa_sa.config import load_config
    from melissa_sa.sampling import sampler_from_config

    cfg = load_config(str(study))
    sampler = sampler_from_config(cfg)
    design = np.concatenate([np.asarray(sampler.next_group(), dtype=np.float64)
                             for _ in range(groups)])
    files = work / "classic"
    files.mkdir(parents=True, exist_ok=True)
    jobs = list(enumerate(design))
    running: list[subprocess.Popen] = []
    env = dict(os.environ)
    env.pop("MELISSA_SERVER_ADDRESS", None)
    busy = wait_quiet(QUIET_WAIT[0])
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        while jobs or running:
            while jobs and len(running) < job_limit:
                sim_id, x = jobs.pop(0)
                running.append(spawn(
                    [PY, sim, "--cells", cells, "--steps", steps, "--out",
                     files / f"sim_{sim_id}.npy", *[repr(float(v)) for v in x]],
                    cwd=work, env=env))
            # wait for any child (like a scheduler would), without busy-spinning
            done = [p for p in running if p.poll() is not None]
            if not done:
                try:
                    os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
                except ChildProcessError:
                    pass
                done = [p for p in running if p.poll() is not None]
                if not done:
                    time.sleep(0.001)
            for p in done:
                if p.returncode != 0:
                    raise RuntimeError(f"classic job {p.args} exited with {p.returncode}")
                running.remove(p)
            if time.monotonic() > deadline:
                raise TimeoutError("classic study timed out")
    except BaseException:
        stop_all()
        raise
    t_jobs = time.perf_counter() - t0
    data_bytes = groups * 5 * steps * cells * 8

    def post(tag):
        cmd = [PY, HERE, "_postprocess", "--dir", files, "--params", 3, "--groups", groups,
               "--steps", steps, "--cells", cells, "--level", 0.95,
               "--out", work / f"classic_stats_{tag}.npz"]
        t = time.perf_counter()
        proc = spawn(cmd, stdout=subprocess.PIPE, cwd=work)
        out, _ = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"post-processing exited with {proc.returncode}")
        r = json.loads(out.decode().strip().splitlines()[-1])
        r["wall_s"] = time.perf_counter() - t
        return r

    res = {"jobs_s": t_jobs, "data_bytes": data_bytes, "design": design,
           "cpu_busy_before": busy}
    if cold:
        ok, msg = drop_caches()
        res["drop_caches"] = msg
        res["post_cold"] = post("cold") if ok else None
    res["post_warm"] = post("warm")
    res["total_warm_s"] = t_jobs + res["post_warm"]["wall_s"]
    if res.get("post_cold"):
        res["total_cold_s"] = t_jobs + res["post_cold"]["wall_s"]
    return res


def compare_results(work: Path, design) -> dict:
    import h5py
    import numpy as np

    ref = np.load(work / "classic_stats_warm.npz")
    with h5py.File(work / "out" / "results.h5", "r") as f:
        params = f["parameters/value"][()]
        sim_id = f["parameters/sim_id"][()]
        order = np.argsort(sim_id)
        diff = {"design_max_abs_diff": float(np.abs(params[order] - design).max())}
        for k in ("mean", "variance", "sobol_first", "sobol_total", "sobol_first_low",
                  "sobol_first_high", "sobol_total_low", "sobol_total_high"):
            a = f["y"][k][()]
            scale = max(1.0, float(np.abs(ref[k]).max())) if k in ("mean", "variance") else 1.0
            diff[k] = float(np.abs(a - ref[k]).max() / scale)
    return diff


def bench_study(args, scratch: Path) -> dict:
    sim = scratch / "sim.py"
    sim.write_text(SIM_SOURCE)
    configs = [c for c in (("small", args.study_cells, args.study_steps, args.study_groups,
                            False),
                           ("large", args.big_cells, args.big_steps, args.big_groups, True))
               if c[0] in args.study_sizes.split(",")]
    server_counts = [int(x) for x in str(args.server_processes).split(",")]
    out = {}
    timeout = 1800
    for name, cells, steps, groups, cold in configs:
        work = scratch / f"study_{name}"
        _rm(work)
        work.mkdir(parents=True)
        study = study_config(work, sim, cells, steps, groups, args.job_limit, server_counts[0])
        classic = run_classic_study(work, study, sim, cells, steps, groups, args.job_limit,
                                    cold and not args.no_drop_caches, timeout)
        design = classic.pop("design")
        classic_total = classic.get("total_cold_s", classic["total_warm_s"])
        melissa = {}
        for sp in server_counts:
            study = study_config(work, sim, cells, steps, groups, args.job_limit, sp)
            m = run_melissa_study(work, study, timeout)
            m["check_max_abs_diff"] = compare_results(work, design)
            m["speedup"] = classic_total / m["wall_s"]
            m["speedup_vs_classic_warm"] = classic["total_warm_s"] / m["wall_s"]
            melissa[str(sp)] = m
            _rm(work / "out")
            print(f"  [study {name}] melissa-sa ({sp} server process(es)) {m['wall_s']:.1f} s,"
                  f" classic {classic['total_warm_s']:.1f} s (warm)"
                  + (f" / {classic['total_cold_s']:.1f} s (cold)" if "total_cold_s" in classic
                     else ""), file=sys.stderr, flush=True)
        best = min(melissa.values(), key=lambda m: m["wall_s"])
        out[name] = {"setup": {"cells": cells, "steps": steps, "groups": groups,
                               "runs": groups * 5, "nb_parameters": 3,
                               "job_limit": args.job_limit,
                               "data_gb": classic["data_bytes"] / 1e9},
                     "melissa": melissa, "classic": classic,
                     "speedup_best": classic_total / best["wall_s"]}
        _rm(work)
    return out


# ---------------------------------------------------------------------------
def _rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def machine_info() -> dict:
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "loadavg_at_start": load}


def print_table(res: dict) -> None:
    ing = res.get("ingest")
    if ing:
        print("\nIngest, 1 server rank (GB/s of float64 field data; best / median of "
              f"{len(next(iter(ing.values()))['raw']['all_gbps'])}; ratio = server / raw)")
        print(f"{'variant':28} {'clients':>7} {'msgs':>6} {'raw':>12} {'raw tracked':>12} "
              f"{'server':>12} {'ratio':>11} {'target':>6}")
        for name, r in ing.items():
            s = r["setup"]

            def bm(k):
                return f"{r[k]['best_gbps']:.2f}/{r[k]['median_gbps']:.2f}"
            print(f"{name:28} {s['clients']:>7} {s['clients'] * s['steps']:>6} {bm('raw'):>12} "
                  f"{bm('raw_tracked'):>12} {bm('server'):>12} "
                  f"{r['ratio_best']:>5.2f}/{r['ratio_median']:.2f} {TARGET_INGEST_RATIO:>6.2f}")
        print("\nCPU seconds per GB ingested (median; all threads, user + system):")
        print(f"{'':28} {'---- raw receiver ----':>26}  {'------ server ------':>26}")
        print(f"{'variant':28} {'all':>6} {'main':>6} {'ZMQ IO':>6} {'send':>6}  "
              f"{'all':>6} {'main':>6} {'ZMQ IO':>6} {'client':>6}")
        for name, r in ing.items():
            def med(k, key, thread=None):
                vals = [x[key] if thread is None else x[key].get(thread, float("nan"))
                        for x in r[k]["runs"]]
                return statistics.median(vals)
            th = "server_threads_cpu_s_per_gb"
            print(f"{name:28} {med('raw', 'server_cpu_s_per_gb'):>6.3f} "
                  f"{med('raw', th, 'main'):>6.3f} {med('raw', th, 'ZMQbg/IO/0'):>6.3f} "
                  f"{med('raw', 'clients_cpu_s_per_gb'):>6.3f}  "
                  f"{med('server', 'server_cpu_s_per_gb'):>6.3f} "
                  f"{med('server', th, 'main'):>6.3f} {med('server', th, 'ZMQbg/IO/0'):>6.3f} "
                  f"{med('server', 'clients_cpu_s_per_gb'):>6.3f}")
        for name, r in ing.items():
            if "server_profile" in r:
                print(f"\nServer profile, {name} (cProfile, main thread), top tottime:")
                for row in r["server_profile"][:8]:
                    print(f"  {row['tottime_s']:8.3f} s {row['calls']:>7}  {row['function']}")
    st = res.get("study")
    if st:
        print("\nWhole Sobol' study (p=3, job_limit %s): melissa-sa run vs classic "
              "(fsync'd .npy files + NumPy post-processing)" % next(iter(st.values()))
              ["setup"]["job_limit"])
        print(f"{'config':7} {'cells':>8} {'steps':>5} {'runs':>5} {'GB':>6} | {'classic':>8} "
              f"{'jobs':>6} {'post':>6} | {'melissa-sa':>14} {'start':>6} {'clients':>7} "
              f"{'end':>6} | {'speed-up':>8}")
        for name, r in st.items():
            s, c = r["setup"], r["classic"]
            post = c["post_cold"] if c.get("post_cold") else c["post_warm"]
            total = c.get("total_cold_s", c["total_warm_s"])
            for sp, m in r["melissa"].items():
                print(f"{name:7} {s['cells']:>8} {s['steps']:>5} {s['runs']:>5} "
                      f"{s['data_gb']:>6.2f} | {total:>7.1f}s {c['jobs_s']:>5.1f}s "
                      f"{post['wall_s']:>5.1f}s | {m['wall_s']:>6.1f}s ({sp} rank) "
                      f"{m.get('until_first_client_s', float('nan')):>5.1f}s "
                      f"{m.get('clients_s', float('nan')):>6.1f}s "
                      f"{m.get('after_last_client_s', float('nan')):>5.1f}s | "
                      f"{m['speedup']:>7.2f}x")
            if "total_cold_s" in c:
                print(f"{'':7} classic post-processing read the files cold "
                      f"({c['drop_caches']}); with a warm page cache the classic total is "
                      f"{c['total_warm_s']:.1f} s")
        print(f"target speed-up: {TARGET_STUDY_SPEEDUP:.1f}x; classic post = read + compute "
              "+ fsync'd write of the statistics; melissa end = after the last client exits")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):
        return child_main(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (< 1 min)")
    ap.add_argument("--only", choices=("ingest", "study"), default=None)
    ap.add_argument("--profile", action="store_true",
                    help="also run the mean+variance ingest with the server under cProfile")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cells", type=int, default=10 ** 6)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50, help="steps per client (mean+variance)")
    ap.add_argument("--sobol-params", type=int, default=2)
    ap.add_argument("--sobol-groups", type=int, default=1)
    ap.add_argument("--sobol-steps", type=int, default=20)
    ap.add_argument("--study-cells", type=int, default=50_000)
    ap.add_argument("--study-steps", type=int, default=5)
    ap.add_argument("--study-groups", type=int, default=32)
    ap.add_argument("--big-cells", type=int, default=10 ** 6)
    ap.add_argument("--big-steps", type=int, default=10)
    ap.add_argument("--big-groups", type=int, default=16)
    ap.add_argument("--study-sizes", default="small,large",
                    help="which study configurations to run (small, large)")
    ap.add_argument("--job-limit", type=int, default=2)
    ap.add_argument("--server-processes", default="1,2",
                    help="server ranks of the melissa-sa study runs (comma-separated list)")
    ap.add_argument("--no-drop-caches", action="store_true")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="wait up to this many seconds for an idle machine before each "
                         "measurement (the machine may be shared)")
    ap.add_argument("--scratch", type=Path, default=None)
    ap.add_argument("--output", type=Path, default=None,
                    help="JSON results (default benchmarks/results/e2e.json; "
                         "e2e_quick.json with --quick, so a quick run keeps the full numbers)")
    args = ap.parse_args(argv)
    if args.output is None:
        args.output = ROOT / "benchmarks" / "results" / ("e2e_quick.json" if args.quick
                                                         else "e2e.json")
    if args.quick:
        args.repeat = 1
        args.clients, args.steps = 2, 10
        args.sobol_groups, args.sobol_steps = 1, 4
        args.study_cells, args.study_steps, args.study_groups = 10_000, 3, 6
        args.study_sizes = "small"
        args.server_processes = "1"
    QUIET_WAIT[0] = args.quiet_wait if not args.quick else min(args.quiet_wait, 2.0)
    scratch = args.scratch or SCRATCH_BASE / f"run_{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    res = {"machine": machine_info(), "quick": args.quick,
           "command": "python benchmarks/e2e.py " + " ".join(argv)}
    t0 = time.perf_counter()
    try:
        if args.only in (None, "ingest"):
            res["ingest"] = bench_ingest(args, scratch)
        if args.only in (None, "study"):
            res["study"] = bench_study(args, scratch)
    finally:
        stop_all()
        _rm(scratch)
    with open("/proc/loadavg") as f:
        res["machine"]["loadavg_at_end"] = f.read().split()[:3]
    res["elapsed_s"] = time.perf_counter() - t0
    print_table(res)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"\nresults: {args.output}")
    return 0


def child_main(argv) -> int:
    role = argv[0]
    ap = argparse.ArgumentParser(prog=f"e2e.py {role}")
    ap.add_argument("--cells", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--endpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--track", action="store_true")
    ap.add_argument("--port", type=int)
    ap.add_argument("--warm", type=int, default=0)
    ap.add_argument("--messages", type=int)
    ap.add_argument("--dir")
    ap.add_argument("--params", type=int)
    ap.add_argument("--groups", type=int)
    ap.add_argument("--level", type=float)
    ap.add_argument("--out")
    ap.add_argument("--block", type=int, default=8192)
    a = ap.parse_args(argv[1:])
    {"_melissa_client": role_melissa_client, "_raw_send": role_raw_send,
     "_raw_recv": role_raw_recv, "_postprocess": role_postprocess}[role](a)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
