#!/usr/bin/env python3
"""End-to-end benchmarks: server ingest against raw ZeroMQ, and a whole study
through ``melissa-sa run`` against "the classic way" (files + post-processing).

    python benchmarks/e2e.py               # full run (about 7 minutes on 2 cores)
    python benchmarks/e2e.py --quick       # small run (about 30 s)
    python benchmarks/e2e.py --only ingest # or --only study
    python benchmarks/e2e.py --profile     # + cProfile of the server during ingest

Nothing is asserted: the targets are printed next to the numbers. A table goes
to stdout and everything measured to ``benchmarks/results/e2e.json``.

The harness is split by role: ``e2e_procs.py`` (process bookkeeping, CPU
accounting), ``e2e_roles.py`` (the child processes: Python client, raw
sender and receiver, post-processing), ``e2e_cclient.c`` (the C client),
``e2e_sim.py`` (the study's simulation), ``e2e_ingest.py`` and
``e2e_study.py`` (the two benchmarks); this file parses the command line and
prints the tables.

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
* One warm-up simulation (two whole groups under Sobol') is sent and folded
  before ``go``: the first call of each Numba kernel (cache load) and the
  first touch of the statistics' pages are one-time costs of a study, not of
  its steady ingest. The warm-up's own rate is kept in the JSON (``cold``).
  Under Sobol' the server buffers groups and folds them ``fold_batch`` (4)
  at a time: the two warm-up groups are folded together (the re-centring
  count), and the measured groups must be a multiple of 4 so that the
  window ends with every measured group folded, none left for the results
  (``check_sobol_groups`` refuses other counts).
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
* C clients (``e2e_cclient.c`` linked with libmelissa, built here by
  ``melissa_sa.cclient.build`` with the venv's ``mpicc`` and pyzmq's libzmq,
  as the Python clients use): the same server, messages and rules as the
  Python clients, so ``server_c`` compares with ``server`` and ``raw``
  directly (``--no-c-client`` skips it).
* Every configuration runs ``--repeat`` times, alternating raw and server, and
  the best and the median are kept: the machine may be shared (before each
  measurement the benchmark waits, up to ``--quiet-wait`` s, for an idle CPU).
* CPU accounting, which does not depend on how the scheduler shares 2 cores
  between 5+ busy threads: CPU seconds per GB of the receiving process (by
  thread: Python main thread vs ZeroMQ I/O thread, from /proc) and of the
  senders, over the same window. On a machine where clients and server share
  the cores, throughput ~ cores / (receiver + senders CPU s per GB).
* Defaults: 10^6 cells (8 MB messages); mean+variance: 4 clients x 50 steps;
  Sobol' (p = 2, groups of 4): 4 groups x 5 steps (16 clients; before the
  batched fold: 1 group x 20 steps, the same 80 messages). ``--profile`` reruns both
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
* Two configurations by default: a small one (5 x 10^4 cells, 5 steps, 32
  groups = 160 runs: start-up cost dominates) and a large one (10^6 cells x 10
  steps, 16 groups = 80 runs, 6.4 GB of field data: data volume matters);
  ``--study-sizes huge`` adds 72 groups of 10^6 x 10 (360 runs, 28.8 GB: more
  than the machine's memory, so no page cache holds the classic files; the
  classic post-processing then reads them once, from disk); p = 3,
  ``job_limit`` 2; melissa-sa with 1 and with 2 server ranks.
* The profile of each run: wall phases from the launcher's log (time to the
  first client, clients, after the last client) and CPU seconds by role
  (server ranks, clients, launcher, mpiexec: ``e2e_procs.TreeCpu`` samples
  /proc every 0.25 s, the total is the exact ``getrusage`` of the tree, the
  clients get what the samples missed); the classic jobs' and
  post-processing's CPU seconds likewise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_ingest import bench_ingest  # noqa: E402
from e2e_procs import QUIET_WAIT, rm, stop_all  # noqa: E402
from e2e_study import bench_study, bench_study_c  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRATCH_BASE = Path("/work/scratch_e2ebench")
TARGET_INGEST_RATIO = 0.70
TARGET_STUDY_SPEEDUP = 3.0


def machine_info() -> dict:
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "loadavg_at_start": load}


def post_of(classic: dict) -> dict:
    return classic["post_cold"] if classic.get("post_cold") else classic["post_warm"]


def cpu_line(cpu: dict) -> str:
    """CPU seconds of a ``melissa-sa run`` by role (``TreeCpu``)."""
    roles = [r for r in ("server", "clients", "launcher", "mpiexec", "other") if r in cpu]
    return ", ".join(f"{r} {cpu[r]:.1f}" for r in roles) + f"; total {cpu['total']:.1f}"


def print_table(res: dict) -> None:
    ing = res.get("ingest")
    if ing:
        print("\nIngest, 1 server rank (GB/s of float64 field data; best / median of "
              f"{len(next(iter(ing.values()))['raw']['all_gbps'])}; ratio = server / raw)")
        print(f"{'variant':28} {'clients':>7} {'msgs':>6} {'raw':>12} {'raw tracked':>12} "
              f"{'server':>12} {'ratio':>11} {'target':>6}")
        for name, r in ing.items():
            s = r["setup"]

            def bm(k, r=r):
                return f"{r[k]['best_gbps']:.2f}/{r[k]['median_gbps']:.2f}"
            print(f"{name:28} {s['clients']:>7} {s['clients'] * s['steps']:>6} {bm('raw'):>12} "
                  f"{bm('raw_tracked'):>12} {bm('server'):>12} "
                  f"{r['ratio_best']:>5.2f}/{r['ratio_median']:.2f} {TARGET_INGEST_RATIO:>6.2f}")
            if "server_c" in r:
                print(f"{'  ... with C clients':28} {'':>7} {'':>6} {'':>12} {'':>12} "
                      f"{bm('server_c'):>12} {r['c_ratio_best']:>5.2f}/"
                      f"{r['c_ratio_median']:.2f} {TARGET_INGEST_RATIO:>6.2f}  "
                      f"(C / Python, median: {r['c_over_python_median']:.2f})")
        print("\nCPU seconds per GB ingested (median; all threads, user + system):")
        print(f"{'':28} {'---- raw receiver ----':>26}  {'------ server ------':>26}")
        print(f"{'variant':28} {'all':>6} {'main':>6} {'ZMQ IO':>6} {'send':>6}  "
              f"{'all':>6} {'main':>6} {'ZMQ IO':>6} {'client':>6}")
        for name, r in ing.items():
            def med(k, key, thread=None, r=r):
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
        job_limit = next(iter(st.values()))["setup"]["job_limit"]
        print(f"\nWhole Sobol' study (p=3, job_limit {job_limit}): melissa-sa run vs classic "
              "(fsync'd .npy files + NumPy post-processing)")
        print(f"{'config':7} {'cells':>8} {'steps':>5} {'runs':>5} {'GB':>6} | {'classic':>8} "
              f"{'jobs':>6} {'post':>6} | {'melissa-sa':>14} {'start':>6} {'clients':>7} "
              f"{'end':>6} | {'speed-up':>8}")
        for name, r in st.items():
            s, c = r["setup"], r["classic"]
            post = c["post_cold"] if c.get("post_cold") else c["post_warm"]
            total = c["total_s"]
            for sp, m in r["melissa"].items():
                print(f"{name:7} {s['cells']:>8} {s['steps']:>5} {s['runs']:>5} "
                      f"{s['data_gb']:>6.2f} | {total:>7.1f}s {c['jobs_s']:>5.1f}s "
                      f"{post['wall_s']:>5.1f}s | {m['wall_s']:>6.1f}s ({sp} rank) "
                      f"{m.get('until_first_client_s', float('nan')):>5.1f}s "
                      f"{m.get('clients_s', float('nan')):>6.1f}s "
                      f"{m.get('after_last_client_s', float('nan')):>5.1f}s | "
                      f"{m['speedup']:>7.2f}x")
                print(f"{'':7}   CPU s: {cpu_line(m['cpu_s'])}")
            print(f"{'':7}   classic CPU s: jobs {c['jobs_cpu_s']:.1f}, post "
                  f"{post['cpu_s']:.1f} (read {post.get('read_s', float('nan')):.1f} s, compute "
                  f"{post.get('compute_s', float('nan')):.1f} s, write "
                  f"{post.get('write_s', float('nan')):.1f} s)")
            if "total_cold_s" in c and "total_warm_s" in c:
                print(f"{'':7} classic post-processing read the files cold "
                      f"({c['drop_caches']}); with a warm page cache the classic total is "
                      f"{c['total_warm_s']:.1f} s")
            elif "total_cold_s" in c:
                print(f"{'':7} the files ({s['data_gb']:.1f} GB) exceed the memory "
                      f"({s['memory_gb']:.1f} GB): read from disk ({c['drop_caches']})")
        print(f"target speed-up: {TARGET_STUDY_SPEEDUP:.1f}x; classic post = read + compute "
              "+ fsync'd write of the statistics; melissa end = after the last client exits")


    hc = res.get("study_heat_c")
    if hc:
        s, c = hc["setup"], hc["classic"]
        print(f"\nWhole Sobol' study of the C heat solver ({s['cells']} cells x {s['steps']} "
              f"steps, {s['runs']} serial runs, {s['data_gb']:.2f} GB, job_limit "
              f"{s['job_limit']}): classic {c['total_s']:.1f} s (jobs {c['jobs_s']:.1f} s"
              f" + NumPy post {post_of(c)['wall_s']:.1f} s"
              f"{', files read cold' if c.get('post_cold') else ''})")
        print(f"  classic CPU s: jobs {c['jobs_cpu_s']:.1f}, post {post_of(c)['cpu_s']:.1f}")
        for sp, m in hc["melissa"].items():
            print(f"  melissa-sa, {sp} server rank(s): {m['wall_s']:.1f} s (start "
                  f"{m.get('until_first_client_s', float('nan')):.1f} s, clients "
                  f"{m.get('clients_s', float('nan')):.1f} s, end "
                  f"{m.get('after_last_client_s', float('nan')):.1f} s); classic / "
                  f"melissa-sa = {m['speedup']:.2f}x")
            print(f"    CPU s: {cpu_line(m['cpu_s'])}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (< 1 min)")
    ap.add_argument("--only", choices=("ingest", "study", "study-c"), default=None)
    ap.add_argument("--profile", action="store_true",
                    help="also run the mean+variance ingest with the server under cProfile")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cells", type=int, default=10 ** 6)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50, help="steps per client (mean+variance)")
    ap.add_argument("--sobol-params", type=int, default=2)
    ap.add_argument("--sobol-groups", type=int, default=4,
                    help="measured Sobol' groups: a multiple of SobolMartinez's fold_batch")
    ap.add_argument("--sobol-steps", type=int, default=5)
    ap.add_argument("--study-cells", type=int, default=50_000)
    ap.add_argument("--study-steps", type=int, default=5)
    ap.add_argument("--study-groups", type=int, default=32)
    ap.add_argument("--big-cells", type=int, default=10 ** 6)
    ap.add_argument("--big-steps", type=int, default=10)
    ap.add_argument("--big-groups", type=int, default=16)
    ap.add_argument("--huge-cells", type=int, default=10 ** 6)
    ap.add_argument("--huge-steps", type=int, default=10)
    ap.add_argument("--huge-groups", type=int, default=72,
                    help="huge study: 72 groups of 10^6 x 10 float64 = 28.8 GB of files, "
                         "more than this machine's memory (no page cache can hold them)")
    ap.add_argument("--study-sizes", default="small,large",
                    help="which study configurations to run (small, large, huge)")
    ap.add_argument("--job-limit", type=int, default=2)
    ap.add_argument("--server-processes", default="1,2",
                    help="server ranks of the melissa-sa study runs (comma-separated list)")
    ap.add_argument("--no-drop-caches", action="store_true")
    ap.add_argument("--heat-n", type=int, default=200,
                    help="C heat study: an N x N mesh (default 200)")
    ap.add_argument("--heat-steps", type=int, default=20)
    ap.add_argument("--heat-groups", type=int, default=16)
    ap.add_argument("--heat-dt", type=float, default=1e-5)
    ap.add_argument("--no-c-client", action="store_true",
                    help="skip the ingest of C clients (libmelissa)")
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
        args.sobol_groups, args.sobol_steps = 4, 1
        args.study_cells, args.study_steps, args.study_groups = 10_000, 3, 6
        args.study_sizes = "small"
        args.server_processes = "1"
        args.heat_n, args.heat_steps, args.heat_groups = 40, 5, 4
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
        if args.only in (None, "study-c"):
            res["study_heat_c"] = bench_study_c(args, scratch)
    finally:
        stop_all()
        rm(scratch)
    with open("/proc/loadavg") as f:
        res["machine"]["loadavg_at_end"] = f.read().split()[:3]
    res["elapsed_s"] = time.perf_counter() - t0
    print_table(res)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"\nresults: {args.output}")
    return 0



if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
