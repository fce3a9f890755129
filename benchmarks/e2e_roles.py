#!/usr/bin/env python3
"""Child roles of the end-to-end benchmark, each a process of its own:

    python benchmarks/e2e_roles.py _melissa_client --cells N --steps T
    python benchmarks/e2e_roles.py _raw_send --endpoint E --cells N --steps T [--track]
    python benchmarks/e2e_roles.py _raw_recv --port P --warm W --messages M
    python benchmarks/e2e_roles.py _postprocess --dir D --params p --groups g ...

A sender prints ``ready``, waits for a line on stdin (``go``), sends, and
prints one JSON line of its clocks and CPU time; the C client
(``e2e_cclient.c``) follows the same rules.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from e2e_procs import proc_thread_cpu, self_cpu_seconds

HEADER_BYTES = 44
FIELD = "f"


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
    def open_run(s):  # .npy (the Python simulation) or raw float64 (the C heat solver)
        path = Path(a.dir) / f"sim_{s}.{a.suffix}"
        if a.suffix == "bin":
            return np.memmap(path, dtype="<f8", mode="r", shape=(steps, n))
        return np.load(path, mmap_mode="r")

    mms = [open_run(s) for s in range(g * gs)]
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
    ap.add_argument("--suffix", choices=("npy", "bin"), default="npy")
    ap.add_argument("--groups", type=int)
    ap.add_argument("--level", type=float)
    ap.add_argument("--out")
    ap.add_argument("--block", type=int, default=8192)
    a = ap.parse_args(argv[1:])
    {"_melissa_client": role_melissa_client, "_raw_send": role_raw_send,
     "_raw_recv": role_raw_recv, "_postprocess": role_postprocess}[role](a)
    return 0



if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
