"""A whole Sobol' study: ``melissa-sa run`` against the classic way (the same
simulation, ``e2e_sim.py``, writing fsync'd files, then NumPy post-processing);
see ``benchmarks/e2e.py``'s docstring."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from e2e_procs import (
    QUIET_WAIT,
    LineReader,
    TreeCpu,
    children_cpu_seconds,
    free_port,
    rm,
    spawn,
    stop_all,
    tail,
    wait_quiet,
)

PY = sys.executable
BIN = Path(sys.executable).parent
HERE_DIR = Path(__file__).resolve().parent
ROLES = HERE_DIR / "e2e_roles.py"
SIM = HERE_DIR / "e2e_sim.py"


#: roles of the processes of ``melissa-sa run`` for :class:`TreeCpu` (first
#: match wins; the clients are what the samples did not see, see TreeCpu)
MELISSA_ROLES = {"server": r"melissa_sa[./]server", "mpiexec": r"mpiexec|hydra_pmi_proxy",
                 "clients": r"e2e_sim|/heat ", "launcher": r"melissa-sa run|melissa_sa[./]cli"}


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
    rm(work / "out")
    busy = wait_quiet(QUIET_WAIT[0])
    t0 = time.time()
    proc = spawn([*cmd, "run", study, "--no-progress", "-v"], stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, env=env, cwd=work)
    cpu = TreeCpu(proc.pid, MELISSA_ROLES, "clients")
    log = LineReader(proc.stdout)
    try:
        proc.wait(timeout)
        log.wait_for(r"study finished|error", 30)
    except BaseException:
        stop_all()
        raise
    wall = time.time() - t0
    cpu_by_role = cpu.stop()
    (work / "melissa-sa.log").write_text(log.text(10 ** 6) + "\n")
    if proc.returncode != 0:
        raise RuntimeError(f"melissa-sa run exited with {proc.returncode}:\n{log.text()}\n"
                           f"server log:\n{tail(work / 'out' / 'logs' / 'server.log')}")
    running = [t for t, line in log.lines if line and re.search(r"\) running, pid", line)]
    finished = [t for t, line in log.lines if line and re.search(r"\) finished", line)]
    res = {"wall_s": wall, "cpu_busy_before": busy, "cpu_s": cpu_by_role}
    if running and finished:
        res["until_first_client_s"] = min(running) - t0
        res["clients_s"] = max(finished) - min(running)
        res["after_last_client_s"] = t0 + wall - max(finished)
    return res


def run_classic_study(work: Path, study: Path, sim: Path, cells: int, steps: int,
                      groups: int, job_limit: int, cold: bool, timeout: float,
                      job_command=None, suffix: str = "npy", warm: bool = True) -> dict:
    """The classic way: every run writes its file (``job_command(out, x)``, default
    the Python simulation ``sim``), then one NumPy post-processing process:
    after dropping the page cache (``cold``), then again warm (``warm``; pointless
    when the files exceed the memory)."""
    if job_command is None:
        def job_command(out, x):
            return [PY, sim, "--cells", cells, "--steps", steps, "--out", out,
                    *[repr(float(v)) for v in x]]
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
    cpu0 = children_cpu_seconds()
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        while jobs or running:
            while jobs and len(running) < job_limit:
                sim_id, x = jobs.pop(0)
                running.append(spawn(job_command(files / f"sim_{sim_id}.{suffix}", x),
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
    cpu_jobs = children_cpu_seconds() - cpu0
    data_bytes = groups * 5 * steps * cells * 8

    def post(tag):
        cmd = [PY, ROLES, "_postprocess", "--dir", files, "--params", 3, "--groups", groups,
               "--steps", steps, "--cells", cells, "--level", 0.95, "--suffix", suffix,
               "--out", work / f"classic_stats_{tag}.npz"]
        t, cpu = time.perf_counter(), children_cpu_seconds()
        proc = spawn(cmd, stdout=subprocess.PIPE, cwd=work)
        out, _ = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"post-processing exited with {proc.returncode}")
        r = json.loads(out.decode().strip().splitlines()[-1])
        r["wall_s"] = time.perf_counter() - t
        r["cpu_s"] = children_cpu_seconds() - cpu
        return r

    res = {"jobs_s": t_jobs, "jobs_cpu_s": cpu_jobs, "data_bytes": data_bytes, "design": design,
           "cpu_busy_before": busy}
    if cold:
        ok, msg = drop_caches()
        res["drop_caches"] = msg
        res["post_cold"] = post("cold") if ok else None
    if warm or not res.get("post_cold"):
        res["post_warm"] = post("warm")
        res["total_warm_s"] = t_jobs + res["post_warm"]["wall_s"]
        res["stats_file"] = "classic_stats_warm.npz"
    if res.get("post_cold"):
        res["total_cold_s"] = t_jobs + res["post_cold"]["wall_s"]
        res.setdefault("stats_file", "classic_stats_cold.npz")
    res["total_s"] = res.get("total_cold_s", res.get("total_warm_s"))
    return res


def compare_results(work: Path, design, field: str = "y",
                    stats_file: str = "classic_stats_warm.npz") -> dict:
    import h5py
    import numpy as np

    ref = np.load(work / stats_file)
    with h5py.File(work / "out" / "results.h5", "r") as f:
        params = f["parameters/value"][()]
        sim_id = f["parameters/sim_id"][()]
        order = np.argsort(sim_id)
        diff = {"design_max_abs_diff": float(np.abs(params[order] - design).max())}
        for k in ("mean", "variance", "sobol_first", "sobol_total", "sobol_first_low",
                  "sobol_first_high", "sobol_total_low", "sobol_total_high"):
            a = f[field][k][()]
            scale = max(1.0, float(np.abs(ref[k]).max())) if k in ("mean", "variance") else 1.0
            diff[k] = float(np.abs(a - ref[k]).max() / scale)
    return diff


def bench_study(args, scratch: Path) -> dict:
    sim = SIM
    configs = [c for c in (("small", args.study_cells, args.study_steps, args.study_groups,
                            False),
                           ("large", args.big_cells, args.big_steps, args.big_groups, True),
                           ("huge", args.huge_cells, args.huge_steps, args.huge_groups, True))
               if c[0] in args.study_sizes.split(",")]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    server_counts = [int(x) for x in str(args.server_processes).split(",")]
    out = {}
    timeout = 1800
    for name, cells, steps, groups, cold in configs:
        work = scratch / f"study_{name}"
        rm(work)
        work.mkdir(parents=True)
        study = study_config(work, sim, cells, steps, groups, args.job_limit, server_counts[0])
        beyond_memory = groups * 5 * steps * cells * 8 > memory
        classic = run_classic_study(work, study, sim, cells, steps, groups, args.job_limit,
                                    cold and not args.no_drop_caches, timeout,
                                    warm=not beyond_memory)
        design = classic.pop("design")
        classic_total = classic["total_s"]
        melissa = {}
        for sp in server_counts:
            study = study_config(work, sim, cells, steps, groups, args.job_limit, sp)
            m = run_melissa_study(work, study, timeout)
            m["check_max_abs_diff"] = compare_results(work, design,
                                                      stats_file=classic["stats_file"])
            m["speedup"] = classic_total / m["wall_s"]
            if "total_warm_s" in classic:
                m["speedup_vs_classic_warm"] = classic["total_warm_s"] / m["wall_s"]
            melissa[str(sp)] = m
            rm(work / "out")
            print(f"  [study {name}] melissa-sa ({sp} server process(es)) {m['wall_s']:.1f} s,"
                  f" classic {classic_total:.1f} s", file=sys.stderr, flush=True)
        best = min(melissa.values(), key=lambda m: m["wall_s"])
        out[name] = {"setup": {"cells": cells, "steps": steps, "groups": groups,
                               "runs": groups * 5, "nb_parameters": 3,
                               "job_limit": args.job_limit,
                               "data_gb": classic["data_bytes"] / 1e9,
                               "memory_gb": memory / 1e9, "beyond_memory": beyond_memory},
                     "melissa": melissa, "classic": classic,
                     "speedup_best": classic_total / best["wall_s"]}
        rm(work)
    return out




def build_heat_c(scratch: Path) -> Path:
    """libmelissa and examples/heat_pde_c (CMake, find_package(Melissa)), in ``scratch``."""
    from melissa_sa.cclient import build

    prefix, build_dir = scratch / "melissa_prefix_heat", scratch / "heat_c_build"
    build(prefix, mpicc=str(BIN / "mpicc"), zmq="wheel", quiet=True)  # the server's MPI
    for cmd in (["cmake", "-S", HERE_DIR.parent / "examples" / "heat_pde_c", "-B", build_dir,
                 f"-DCMAKE_PREFIX_PATH={prefix}", f"-DCMAKE_C_COMPILER={BIN / 'mpicc'}"],
                ["cmake", "--build", build_dir]):
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd} failed:\n{done.stdout}{done.stderr}")
    return build_dir / "heat"


def heat_study_config(work: Path, client_command: list, cells: int, steps: int, groups: int,
                      job_limit: int, server_processes: int) -> Path:
    """The Sobol' study of the C heat solver (its field, bounds and parameter
    names), the clients run by ``client_command``."""
    study = study_config(work, Path("unused"), cells, steps, groups, job_limit,
                         server_processes)
    cfg = json.loads(study.read_text())
    cfg["study_options"].update(field_names=["temperature"], l_bounds=[100.0] * 3,
                                u_bounds=[500.0] * 3,
                                parameter_names=["T_initial", "T_left", "T_other_walls"])
    cfg["client_config"]["executable_command"] = " ".join(map(str, client_command))
    study.write_text(json.dumps(cfg, indent=1))
    return study


def bench_study_c(args, scratch: Path) -> dict:
    """The Sobol' study of the C heat solver (serial runs, p = 3): melissa-sa run
    against the same binary writing fsync'd raw files, then NumPy."""
    heat = build_heat_c(scratch)
    n, steps, groups = args.heat_n, args.heat_steps, args.heat_groups
    cells = n * n
    solver = [heat, "--nx", n, "--ny", n, "--steps", steps, "--dt", args.heat_dt]
    work = scratch / "study_heat_c"
    rm(work)
    work.mkdir(parents=True)
    out = {}
    for sp in [int(x) for x in str(args.server_processes).split(",")]:
        study = heat_study_config(work, solver, cells, steps, groups, args.job_limit, sp)
        if "classic" not in out:
            classic = run_classic_study(
                work, study, heat, cells, steps, groups, args.job_limit,
                not args.no_drop_caches, 1800,
                job_command=lambda path, x: [*solver, "--output", path,
                                             *[repr(float(v)) for v in x]],
                suffix="bin")
            design = classic.pop("design")
            out["classic"] = classic
        m = run_melissa_study(work, study, 1800)
        m["check_max_abs_diff"] = compare_results(work, design, "temperature",
                                                  stats_file=out["classic"]["stats_file"])
        m["speedup"] = out["classic"]["total_s"] / m["wall_s"]
        out.setdefault("melissa", {})[str(sp)] = m
        rm(work / "out")
        print(f"  [study heat C] melissa-sa ({sp} server process(es)) {m['wall_s']:.1f} s, "
              f"classic {out['classic']['total_s']:.1f} s", file=sys.stderr, flush=True)
    out["setup"] = {"cells": cells, "steps": steps, "groups": groups, "runs": groups * 5,
                    "nb_parameters": 3, "job_limit": args.job_limit, "dt": args.heat_dt,
                    "data_gb": out["classic"]["data_bytes"] / 1e9}
    rm(work)
    return out
