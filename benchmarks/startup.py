#!/usr/bin/env python3
"""The server's fixed CPU: a 10x10-cell study of 2 groups, run whole.

Writes a study (the heat example on a 10 x 10 grid, 10 steps, 3 parameters,
2 groups of 5 runs, mean + variance + first/total Sobol' with the default
interval, one server rank) into a temporary directory, runs it with
``melissa-sa run`` ``--repeat`` times and reads each run's server CPU from the
line the server writes at exit in ``OUT/logs/server.log`` (user + system
seconds of the rank's process, every thread, and its split: the interpreter's
start and the config, MPI, the server's modules, the server's set-up; then
the kernels loaded, the study, the end). Almost all of it is fixed cost: the
study folds 10 messages of 100 cells. Prints the CPU model, the machine's
load and the median of each phase, and writes
``benchmarks/results/startup.json``.

    python benchmarks/startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _record import write_json  # noqa: E402
from sobol_fold import cpu_model  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
LINE = re.compile(r"server rank (\d+): ([0-9.]+) s CPU \(([0-9.]+) s of it before.*")
PHASE = re.compile(r"([A-Za-z][A-Za-z -]*?) ([0-9.]+) s")


def study(out: pathlib.Path) -> dict:
    heat = ROOT / "examples" / "heat_pde" / "heat.py"
    return {
        "output_dir": str(out),
        "study_options": {
            "field_names": ["temperature"], "nb_parameters": 3,
            "parameter_names": ["T_initial", "T_left", "T_other_walls"],
            "parameter_sweep_size": 2, "nb_time_steps": 10, "sampler": "sobol", "seed": 0,
            "l_bounds": [100, 100, 100], "u_bounds": [500, 500, 500],
            "simulation_timeout": 60},
        "sa_config": {"mean": True, "variance": True, "sobol_indices": True,
                      "confidence_level": 0.95},
        "server_config": {"server_processes": 1},
        "launcher_config": {"scheduler": "local", "job_limit": 2},
        "client_config": {
            "executable_command": f"{sys.executable} {heat} --nx 10 --ny 10 --steps 10",
            "client_processes": 1},
    }


def run_once(tmp: pathlib.Path, k: int) -> tuple[float, float, dict[str, float]]:
    out = tmp / f"out{k}"
    path = tmp / f"study{k}.json"
    path.write_text(json.dumps(study(out), indent=1))
    cli = pathlib.Path(sys.executable).parent / "melissa-sa"
    done = subprocess.run([str(cli), "run", str(path)], capture_output=True, text=True,
                          timeout=600, check=False)
    log = out / "logs" / "server.log"
    text = log.read_text() if log.exists() else ""
    found = LINE.search(text)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"study {path} failed (exit {done.returncode}) or its server log "
                         f"{log} has no CPU line:\n{done.stderr[-2000:]}")
    split = found.group(0).split("before the server class started", 1)[-1]
    phases = {name.strip().removeprefix("then "): float(sec)
              for name, sec in PHASE.findall(split)}
    return float(found.group(2)), float(found.group(3)), phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="melissa-startup-") as tmp:
        runs = [run_once(pathlib.Path(tmp), k) for k in range(a.repeat)]
    load_after = os.getloadavg()
    total = [t for t, _, _ in runs]
    before = [b for _, b, _ in runs]
    names = list(dict.fromkeys(name for _, _, split in runs for name in split))
    phases = {name: [split.get(name, float("nan")) for _, _, split in runs] for name in names}
    record = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "cpu": cpu_model(), "loadavg_before": load_before, "loadavg_after": load_after,
              "server_cpu_s": total, "before_server_class_s": before, "phases_s": phases}
    print(f"{record['date']}  {record['cpu']}; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    print(f"server CPU of a 10x10-cell, 2-group study, {a.repeat} runs: best "
          f"{min(total):.2f} s, median {statistics.median(total):.2f} s (before the server "
          f"class started: best {min(before):.2f} s, median {statistics.median(before):.2f} s)")
    print("median CPU of each phase: " + ", ".join(
        f"{name} {statistics.median(v):.2f} s" for name, v in phases.items()))
    out = write_json(pathlib.Path(__file__).parent / "results" / "startup.json", record)
    print(f"written {out}")


if __name__ == "__main__":
    main()
