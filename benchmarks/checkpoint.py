"""Cost of checkpointing: seconds per checkpoint, and study slowdown.

    python benchmarks/checkpoint.py            # 10^6 cells, Sobol' p = 3
    python benchmarks/checkpoint.py --quick    # 10^5 cells, fewer runs

1. Seconds per checkpoint: a real :class:`SensitivityAnalysisServer` (one
   process) holding a 10^6-cell field with mean, variance and Sobol' (p = 3,
   delta-method intervals: 456 + 24 bytes per cell and time step) writes
   durable checkpoint sets through its own ``checkpoint()`` (state, CRC-32,
   fsync, manifest); median of several.
2. Study slowdown: the same study run through ``melissa-sa run`` (2 server
   ranks, single-process clients that send a 10^6-cell field) with the
   default ``checkpoint_interval`` (100 runs), with a small interval, and
   with checkpoints off (an interval larger than the study); wall times
   and the slowdown relative to "off".

Prints a table and writes ``benchmarks/results/checkpoint.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _record import write_json

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

CLIENT = '''
import sys, numpy as np
from melissa_sa.client import melissa_init, melissa_send, melissa_finalize
n = int(sys.argv[1]); steps = int(sys.argv[2]); x = [float(v) for v in sys.argv[3:]]
c = np.linspace(0.0, 1.0, n)
melissa_init("f", n, None)
for t in range(steps):
    melissa_send("f", np.sin(x[0] + c) + x[1] ** 2 * c + 0.1 * x[2] * x[0] + t)
melissa_finalize()
'''


def study_config(n_cells: int, steps: int, groups: int, interval: int, ports) -> dict:
    return {
        "output_dir": "out",
        "study_options": {"field_names": ["f"], "nb_parameters": 3,
                          "parameter_sweep_size": groups, "nb_time_steps": steps,
                          "l_bounds": [0, 0, 0], "u_bounds": [1, 1, 1]},
        "sa_config": {"mean": True, "variance": True, "sobol_indices": True,
                      "checkpoint_interval": interval},
        "server_config": {"server_processes": 2, "connection_port": ports[0],
                          "data_puller_port": ports[1]},
        "launcher_config": {"job_limit": 2},
        "client_config": {"executable_command": f"python client.py {n_cells} {steps}"},
    }


def folded_server(n_cells: int, steps: int, workdir: Path):
    """A one-rank server (no sockets used) holding field ``f`` of ``n_cells``
    cells over ``steps`` steps with three groups folded, its output in ``workdir``."""
    from melissa_sa.config import config_from_dict
    from melissa_sa.server.ranks import FieldDeclared
    from melissa_sa.server.sensitivity_analysis_server import SensitivityAnalysisServer

    cfg = config_from_dict(study_config(n_cells, steps, 4, 100, (40003, 40100)),
                           base_dir=str(workdir))
    server = SensitivityAnalysisServer(cfg)
    server.ranks.broadcast(FieldDeclared("f", n_cells))
    rng = np.random.default_rng(0)
    for step in server.slices["f"].steps:
        for g in range(3):
            step.fold_group(rng.standard_normal((5, n_cells)), g)
    return server


def seconds_per_checkpoint(n_cells: int, steps: int, repeat: int, workdir: Path) -> dict:
    server = folded_server(n_cells, steps, workdir)
    state_bytes = sum(stat.nbytes for step in server.slices["f"].steps
                      for _, stat in step.items())
    times, phases = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        assert server.checkpoint() is not None
        times.append(time.perf_counter() - t0)
        phases.append(server.worker.checkpoints.last_timings)
    server.worker.checkpoints.close()
    files = sorted((workdir / "out" / "checkpoint").glob("set-*.h5"))
    return {"n_cells": n_cells, "time_steps": steps, "state_bytes": state_bytes,
            "file_bytes": files[-1].stat().st_size, "seconds_median": statistics.median(times),
            "seconds_all": times, "GBps": state_bytes / statistics.median(times) / 1e9,
            "phases_last": phases[-1]}


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_study(n_cells: int, steps: int, groups: int, interval: int, workdir: Path) -> dict:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / "client.py").write_text(CLIENT)
    cfg = study_config(n_cells, steps, groups, interval, (free_port(), free_port()))
    (workdir / "study.json").write_text(json.dumps(cfg))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "melissa-sa"), "run", "study.json", "--no-progress"],
                            cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    out, _ = proc.communicate(timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"study failed ({proc.returncode}):\n{out.decode()[-3000:]}")
    log = (workdir / "out" / "logs" / "server.log").read_text()
    ckpts = [float(line.split(" written in ")[1].split(" s")[0])
             for line in log.splitlines() if " written in " in line]
    return {"interval": interval, "wall_seconds": wall, "checkpoints": len(ckpts),
            "checkpoint_seconds": ckpts}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).parent / "results" / "checkpoint.json")
    args = parser.parse_args(argv)
    n_cells = 10**5 if args.quick else 10**6
    groups = 8 if args.quick else 24  # 5 runs per group: 40 or 120 runs
    scratch = Path(tempfile.mkdtemp(prefix="melissa-ckpt-bench-"))
    out = {"command": "python benchmarks/checkpoint.py" + (" --quick" if args.quick else "")}
    try:
        one = seconds_per_checkpoint(n_cells, 1, 5, scratch / "single")
        out["single"] = one
        print(f"checkpoint of {n_cells:.0e} cells x 1 step, Sobol' p=3 + mean/variance: "
              f"{one['state_bytes'] / 1e6:.0f} MB of state, file "
              f"{one['file_bytes'] / 1e6:.0f} MB: {one['seconds_median']:.3f} s per "
              f"checkpoint ({one['GBps']:.2f} GB/s), phases {one['phases_last']}")
        runs = groups * 5
        rows = []
        for interval in (10**9, 100, max(10, runs // 6)):
            row = run_study(n_cells, 1, groups, interval, scratch / f"study_{interval}")
            rows.append(row)
        base = rows[0]["wall_seconds"]
        print(f"\nstudy: {runs} runs of a {n_cells:.0e}-cell field, 2 server ranks")
        print(f"{'checkpoint_interval':>20}{'checkpoints':>13}{'wall s':>9}{'slowdown':>10}"
              f"{'s/checkpoint':>14}")
        for row in rows:
            row["slowdown"] = row["wall_seconds"] / base - 1.0
            per = (statistics.median(row["checkpoint_seconds"])
                   if row["checkpoint_seconds"] else float("nan"))
            label = "off" if row["interval"] >= 10**9 else str(row["interval"])
            print(f"{label:>20}{row['checkpoints']:>13}{row['wall_seconds']:>9.1f}"
                  f"{row['slowdown']:>9.1%}{per:>14.3f}")
        out["studies"] = rows
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nwrote {write_json(args.json, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
