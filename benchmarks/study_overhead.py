#!/usr/bin/env python3
"""What a study costs over its simulations alone: the C heat solver, three ways.

The same design (the study's Sobol' groups, p = 3, groups of 5 runs), the
same binary (``examples/heat_pde_c`` built by CMake against ``melissa-sa
client build``'s prefix), one client process at a time, the clients pinned to
one core and everything else to the other:

1. **solver alone**: every run of the design, one after the other, with no
   ``MELISSA_SERVER_ADDRESS`` (libmelissa's calls do nothing outside a study);
2. **in transit**: ``melissa-sa run`` (launcher, server, the clients through
   the local scheduler with ``job_limit`` 1);
3. **classic**: every run writing its fields to a raw fsync'd file, then
   NumPy computing the same statistics from the files (warm page cache).

Prints each wall time, the in-transit study's wall time over the solver
alone's (target: at most 1.10, the server keeps up and finishes within seconds
of the last client) and the server's CPU as a share of the clients' CPU (what
a user must give the server on a cluster). Writes
``benchmarks/results/study_overhead.json``.

    python benchmarks/study_overhead.py                       # 10^6 cells, 10 steps, 16 groups
    python benchmarks/study_overhead.py --n 100 --groups 4    # a quick check

Needs CMake and a C compiler (``mpicc`` of the virtual environment) and two
CPUs (``os.sched_setaffinity``); nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import write_json  # noqa: E402
from e2e_procs import children_cpu_seconds, spawn, stop_all, wait_quiet  # noqa: E402
from e2e_study import (  # noqa: E402
    build_heat_c,
    compare_results,
    heat_study_config,
    run_classic_study,
    run_melissa_study,
)
from sobol_fold import cpu_model  # noqa: E402

CLIENT_CORE, OTHER_CORE = 0, 1


def pinned(core: int, cmd: list) -> list:
    """``cmd`` run on one CPU (``taskset``: util-linux, everywhere Slurm runs)."""
    return ["taskset", "-c", str(core), *map(str, cmd)]


def heat_study(work: Path, heat: Path, args) -> tuple[Path, list]:
    """The study file, and the solver's command line without its parameters."""
    solver = [heat, "--nx", args.n, "--ny", args.n, "--steps", args.steps, "--dt", args.dt]
    study = heat_study_config(work, pinned(CLIENT_CORE, solver), args.n * args.n, args.steps,
                              args.groups, 1, 1)
    return study, solver


def design_of(study: Path, groups: int):
    import numpy as np

    from melissa_sa.config import load_config
    from melissa_sa.sampling import sampler_from_config

    sampler = sampler_from_config(load_config(str(study)))
    return np.concatenate([np.asarray(sampler.next_group(), dtype=np.float64)
                           for _ in range(groups)])


def run_solver_alone(work: Path, solver: list, design) -> dict:
    """Every run of the design, one at a time, outside a study."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELISSA_")}
    busy = wait_quiet(10)
    cpu0, t0 = children_cpu_seconds(), time.perf_counter()
    for x in design:
        proc = spawn(pinned(CLIENT_CORE, [*solver, *[repr(float(v)) for v in x]]),
                     cwd=work, env=env, stdout=subprocess.DEVNULL)
        if proc.wait(600) != 0:
            stop_all()
            raise RuntimeError(f"the solver alone exited with {proc.returncode}: {proc.args}")
    return {"wall_s": time.perf_counter() - t0, "cpu_s": children_cpu_seconds() - cpu0,
            "cpu_busy_before": busy}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="grid side: n x n cells (1000)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--groups", type=int, default=16, help="Sobol' groups of 5 runs (16)")
    ap.add_argument("--dt", type=float, default=1e-5)
    ap.add_argument("--scratch", type=Path, default=None,
                    help="where the fields and files go (default: a temporary directory)")
    ap.add_argument("--output", type=Path,
                    default=Path(__file__).parent / "results" / "study_overhead.json")
    args = ap.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2 or not shutil.which("taskset"):
        print("needs two CPUs and taskset", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {OTHER_CORE})   # the launcher, the server, the NumPy post
    scratch = Path(tempfile.mkdtemp(prefix="study_overhead_", dir=args.scratch))
    try:
        heat = build_heat_c(scratch)
        work = scratch / "work"
        work.mkdir()
        study, solver = heat_study(work, heat, args)
        design = design_of(study, args.groups)
        alone = run_solver_alone(work, solver, design)
        print(f"solver alone: {alone['wall_s']:.1f} s", file=sys.stderr, flush=True)
        transit = run_melissa_study(work, study, 3600)
        print(f"in transit: {transit['wall_s']:.1f} s", file=sys.stderr, flush=True)
        classic = run_classic_study(
            work, study, heat, args.n * args.n, args.steps, args.groups, 1, False, 3600,
            job_command=lambda path, x: pinned(CLIENT_CORE, [*solver, "--output", path,
                                                             *[repr(float(v)) for v in x]]),
            suffix="bin")
        classic.pop("design")
        transit["check_max_abs_diff"] = compare_results(work, design, "temperature",
                                                        stats_file=classic["stats_file"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    cpu = transit["cpu_s"]
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(), "load_average": os.getloadavg(),
        "setup": {"cells": args.n * args.n, "steps": args.steps, "groups": args.groups,
                  "runs": 5 * args.groups, "dt": args.dt, "job_limit": 1,
                  "data_gb": classic["data_bytes"] / 1e9},
        "solver_alone": alone, "in_transit": transit, "classic": classic,
        "in_transit_over_alone": transit["wall_s"] / alone["wall_s"],
        "server_cpu_over_clients_cpu": cpu.get("server", 0.0) / max(cpu.get("clients", 0.0),
                                                                     1e-9),
    }
    write_json(args.output, record)
    post = classic["post_warm"]["wall_s"]
    print(f"\n{cpu_model()}; {args.n * args.n} cells x {args.steps} steps x "
          f"{5 * args.groups} runs ({record['setup']['data_gb']:.2f} GB), one client at a time "
          f"on CPU {CLIENT_CORE}, the rest on CPU {OTHER_CORE}")
    print(f"  solver alone      {alone['wall_s']:8.1f} s  (clients' CPU {alone['cpu_s']:.1f} s)")
    print(f"  in transit        {transit['wall_s']:8.1f} s  = "
          f"{record['in_transit_over_alone']:.3f} x the solver alone (target <= 1.10)")
    print(f"  classic           {classic['total_warm_s']:8.1f} s  (jobs {classic['jobs_s']:.1f} "
          f"+ NumPy {post:.1f})")
    print(f"  server CPU {cpu.get('server', 0.0):.1f} s, clients' CPU "
          f"{cpu.get('clients', 0.0):.1f} s: the server is "
          f"{record['server_cpu_over_clients_cpu']:.2f} of the clients' CPU")
    print(f"  results against the classic NumPy: {transit['check_max_abs_diff']}")
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
