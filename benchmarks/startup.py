#!/usr/bin/env python3
"""The server's fixed CPU: a 10x10-cell study of 2 groups, run whole.

Writes a study (the heat example on a 10 x 10 grid, 10 steps, 3 parameters,
2 groups of 5 runs, mean + variance + first/total Sobol' with the default
interval, one server rank by default) into a temporary directory, runs it
with ``melissa-sa run`` ``--repeat`` times and reads each run's server CPU
from the lines the ranks write at exit in ``OUT/logs/server.log`` (user +
system seconds of the rank's process, every thread, and its split: the
interpreter's start and NumPy, the config, MPI, Numba, the server's modules,
the server's set-up; then the kernels loaded, the study, the end). Almost
all of it is fixed cost: the study folds 10 messages of 100 cells. Prints
each run's CPU and split with the machine's load average when it started,
the CPU model and the median of each phase, and writes
``benchmarks/results/startup.json``.

``--against DIR`` alternates the runs with those of another copy of the
repository (e.g. ``git worktree add DIR COMMIT``, or ``git archive COMMIT |
tar -x -C DIR``): its ``melissa_sa`` is put first on ``PYTHONPATH`` for the
launcher, the server and the clients, with this interpreter and its
packages. Its kernels compile on its first run (the launcher does it before
starting the server, so the server's CPU does not include it). Each tree's
``melissa_sa`` is compiled to bytecode first (``compileall``), as an install
is.

    python benchmarks/startup.py --repeat 5
    python benchmarks/startup.py --repeat 3 --against /tmp/melissa-before
    python benchmarks/startup.py --repeat 3 --ranks 2

``--ranks 2`` runs the same study on two server ranks: rank 0 draws the
design (SciPy's sampler), the others only fold.
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


def study(out: pathlib.Path, ranks: int = 1) -> dict:
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
        "server_config": {"server_processes": ranks},
        "launcher_config": {"scheduler": "local", "job_limit": 2},
        "client_config": {
            "executable_command": f"{sys.executable} {heat} --nx 10 --ny 10 --steps 10",
            "client_processes": 1},
    }


def run_once(tmp: pathlib.Path, k: int, source: pathlib.Path | None = None, ranks: int = 1
             ) -> dict[int, tuple[float, float, dict[str, float]]]:
    """One study; by server rank, its CPU, the part before the server class
    started and the split. ``source``: a copy of the repository whose
    ``melissa_sa`` runs instead of this one's."""
    out = tmp / f"out{k}"
    path = tmp / f"study{k}.json"
    path.write_text(json.dumps(study(out, ranks), indent=1))
    cli = pathlib.Path(sys.executable).parent / "melissa-sa"
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(source), *filter(None, [os.environ.get("PYTHONPATH")])])
    # run from tmp: ``python -m`` children (the launcher's kernel compile) put
    # their working directory first on sys.path, before PYTHONPATH
    done = subprocess.run([str(cli), "run", str(path)], capture_output=True, text=True,
                          timeout=900, check=False, env=env, cwd=tmp)
    log = out / "logs" / "server.log"
    text = log.read_text() if log.exists() else ""
    found = {int(m.group(1)): m for m in LINE.finditer(text)}
    if done.returncode != 0 or sorted(found) != list(range(ranks)):
        raise SystemExit(f"study {path} failed (exit {done.returncode}) or its server log "
                         f"{log} lacks a rank's CPU line (found ranks {sorted(found)} of "
                         f"{ranks}):\n{done.stderr[-2000:]}")
    by_rank = {}
    for rank, m in sorted(found.items()):
        split = m.group(0).split("before the server class started", 1)[-1]
        phases = {name.strip().removeprefix("then "): float(sec)
                  for name, sec in PHASE.findall(split)}
        by_rank[rank] = (float(m.group(2)), float(m.group(3)), phases)
    return by_rank


def compile_bytecode(tree: pathlib.Path) -> None:
    """Compile ``tree``'s ``melissa_sa`` to bytecode, as pip does at install.

    With ``PYTHONDONTWRITEBYTECODE`` set (and an editable install) every
    server start would compile about 70 of our modules from source, about
    0.1 s of CPU a user's install does not pay; a tree that has bytecode and
    one that has none would not compare either.
    """
    done = subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "melissa_sa")],
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"compiling {tree / 'melissa_sa'} to bytecode failed:\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")


def summary(runs: list[dict]) -> dict:
    """Best and median server CPU, and the median of each phase, of ``runs``."""
    total = [r["server_cpu_s"] for r in runs]
    before = [r["before_server_class_s"] for r in runs]
    names = list(dict.fromkeys(name for r in runs for name in r["phases_s"]))
    return {"best_s": min(total), "median_s": statistics.median(total),
            "before_server_class_median_s": statistics.median(before),
            "phase_medians_s": {name: statistics.median(
                [r["phases_s"].get(name, float("nan")) for r in runs]) for name in names}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--against", type=pathlib.Path, default=None, metavar="DIR",
                    help="another copy of the repository, run alternately with this one")
    ap.add_argument("--ranks", type=int, default=1,
                    help="server ranks (each prints its own CPU; rank 0 draws the design)")
    a = ap.parse_args()
    if a.repeat < 1:
        raise SystemExit(f"--repeat: need at least one run, got {a.repeat}")
    if a.ranks < 1:
        raise SystemExit(f"--ranks: need at least one server rank, got {a.ranks}")
    sources: dict[str, pathlib.Path | None] = {"this": None}
    if a.against is not None:
        against = a.against.resolve()
        if not (against / "melissa_sa" / "server" / "main.py").is_file():
            raise SystemExit(f"--against: {against} holds no melissa_sa/server/main.py "
                             "(give a copy of this repository)")
        sources["against"] = against
    for source in sources.values():
        compile_bytecode(source or ROOT)
    load_before = os.getloadavg()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="melissa-startup-") as tmp:
        for k in range(a.repeat):
            for label, source in sources.items():
                load = os.getloadavg()
                by_rank = run_once(pathlib.Path(tmp), len(runs), source, a.ranks)
                for rank, (total, before, split) in by_rank.items():
                    runs.append({"tree": label, "rank": rank, "loadavg": load,
                                 "server_cpu_s": total, "before_server_class_s": before,
                                 "phases_s": split})
                    print(f"run {k + 1} {label} rank {rank}: {total:.2f} s ({before:.2f} "
                          "before the server class; "
                          f"{', '.join(f'{n} {v:.2f}' for n, v in split.items())}); "
                          f"load average {load[0]:.2f}", flush=True)
    load_after = os.getloadavg()
    record = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "cpu": cpu_model(), "loadavg_before": load_before, "loadavg_after": load_after,
              "server_ranks": a.ranks,
              "trees": {label: str(source or ROOT) for label, source in sources.items()},
              "runs": runs, "summaries": {}}
    print(f"{record['date']}  {record['cpu']}; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    for label in sources:
        for rank in range(a.ranks):
            mine = [r for r in runs if r["tree"] == label and r["rank"] == rank]
            s = record["summaries"][f"{label} rank {rank}"] = summary(mine)
            print(f"{label} ({record['trees'][label]}) rank {rank} of {a.ranks}: server CPU "
                  f"of a 10x10-cell, 2-group study, {len(mine)} runs: best {s['best_s']:.2f} "
                  f"s, median "
                  f"{s['median_s']:.2f} s (before the server class started: median "
                  f"{s['before_server_class_median_s']:.2f} s); median of each phase: "
                  + ", ".join(f"{n} {v:.2f} s" for n, v in s["phase_medians_s"].items()))
    out = write_json(pathlib.Path(__file__).parent / "results" / "startup.json", record)
    print(f"written {out}")


if __name__ == "__main__":
    main()
