"""Ingest into one server rank: Python clients, C clients and raw ZeroMQ in the
same harness (see ``benchmarks/e2e.py``'s docstring for what is timed)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from e2e_procs import (
    QUIET_WAIT,
    LineReader,
    find_rank_pid,
    free_port,
    proc_thread_cpu,
    read_ready,
    rm,
    spawn,
    stop_all,
    wait_quiet,
)

PY = sys.executable
BIN = Path(sys.executable).parent
HERE_DIR = Path(__file__).resolve().parent
ROLES = HERE_DIR / "e2e_roles.py"
FIELD = "f"


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


def warmup_runs(sobol: bool, p: int) -> int:
    """Runs sent and folded before the window: one simulation, or under
    Sobol' two groups. ``SobolMartinez`` buffers groups and folds them
    ``FOLD_BATCH`` at a time (and at the re-centring count, 2): with two
    warm-up groups the first fold of every step (the first touch of the
    state's pages, a one-time cost of a study) happens before the window,
    and with a multiple of ``FOLD_BATCH`` measured groups the last fold of
    every step happens inside it, so the window holds the fold of exactly
    the measured groups (see :func:`check_sobol_groups`)."""
    return 2 * (p + 2) if sobol else 1


def check_sobol_groups(groups: int) -> None:
    """Refuse a Sobol' ingest whose measured groups would leave groups
    buffered, unfolded, when the window closes (their fold would be paid
    after it, at the results)."""
    from melissa_sa.stats.sobol_fold import FOLD_BATCH, RECENTRE_AT

    pending = 0                                # per time step, after the warm-up's fold
    for count in range(3, 3 + groups):
        pending += 1
        if pending == FOLD_BATCH["delta"] or count in RECENTRE_AT:
            pending = 0
    if pending:
        raise ValueError(f"--sobol-groups {groups}: {pending} of them would still be buffered "
                         f"when the window closes; use a multiple of {FOLD_BATCH['delta']} "
                         "(SobolMartinez's fold_batch)")


def run_server_ingest(work: Path, clients: int, cells: int, steps: int, sobol: bool,
                      p: int, profile: Path | None = None, timeout: float = 300,
                      c_client: Path | None = None, auth: bool = False) -> dict:
    """K measured clients (+ one warm-up simulation or group) into the real server:
    Python clients, or the C client ``c_client`` (``e2e_cclient.c``). ``auth``:
    the study has a secret (``OUT/secret``, as every launched study): the server's
    sockets check it (ZeroMQ PLAIN + ZAP) and the clients present it."""
    gs = p + 2 if sobol else 1
    if clients % gs:
        raise ValueError(f"{clients} clients do not make whole groups of {gs}")
    n_runs = clients + warmup_runs(sobol, p)   # the last runs are the warm-up
    work.mkdir(parents=True, exist_ok=True)
    study = ingest_config(work, n_runs, steps, sobol, p)
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("MELISSA_LAUNCHER_ADDRESS", "MELISSA_RESTART", "MELISSA_SECRET_FILE",
              "MELISSA_SECRET"):
        env.pop(k, None)
    if auth:
        from melissa_sa.auth import study_secret
        env["MELISSA_SECRET_FILE"] = str(study_secret(work / "out")[1])
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
            cmd = ([c_client, cells, steps] if c_client else
                   [PY, ROLES, "_melissa_client", "--cells", cells, "--steps", steps])
            return spawn(cmd,
                         env=dict(cenv, MELISSA_SIMULATION_ID=str(sim_id)), cwd=work,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)

        warm_group = clients // gs             # the first warm-up group
        warm = [start(s) for s in range(clients, n_runs)]
        for c in warm:
            read_ready(c, "warm-up client")
        _go(warm)
        warm_res = _client_results(warm, timeout)
        t_warm_done = max(log.wait_for(rf"group {g} done", timeout)[0]
                          for g in range(warm_group, n_runs // gs))
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
        "cold_gbps": (n_runs - clients) * steps * cells * 8 / cold_t / 1e9,
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
    recv = spawn([PY, ROLES, "_raw_recv", "--port", port, "--warm", warm_senders * steps,
                  "--messages", clients * steps], stdout=subprocess.PIPE, cwd=work)
    try:
        if read_ready(recv, "raw receiver") != "bound":
            raise RuntimeError("raw receiver did not bind")
        endpoint = f"tcp://127.0.0.1:{port}"

        def start(seed):
            cmd = [PY, ROLES, "_raw_send", "--endpoint", endpoint, "--cells", cells,
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


def build_c_client(scratch: Path) -> Path | None:
    """libmelissa (pyzmq's libzmq, as the Python clients use) and e2e_cclient.c,
    built with the venv's mpicc into ``scratch``; None (with a note) if it fails."""
    from melissa_sa.cclient import BuildError, build

    prefix, exe = scratch / "melissa_prefix", scratch / "e2e_cclient"
    try:
        build(prefix, mpicc=str(BIN / "mpicc"), zmq="wheel", quiet=True)
        done = subprocess.run([BIN / "mpicc", "-O2", f"-I{prefix}/include", HERE_DIR /
                               "e2e_cclient.c", "-o", exe, f"-L{prefix}/lib", "-lmelissa",
                               f"-Wl,-rpath,{prefix}/lib"], capture_output=True, text=True)
    except (BuildError, OSError) as exc:
        print(f"  C client not built, skipped: {exc}", file=sys.stderr)
        return None
    if done.returncode != 0:
        print(f"  C client not built, skipped:\n{done.stderr}", file=sys.stderr)
        return None
    return exe


def bench_ingest(args, scratch: Path) -> dict:
    check_sobol_groups(args.sobol_groups)
    c_client = None if args.no_c_client else build_c_client(scratch)
    variants = [("mean+variance", False, args.clients, args.steps),
                (f"mean+variance+sobol p={args.sobol_params}", True,
                 args.sobol_groups * (args.sobol_params + 2), args.sobol_steps)]
    out = {}
    for name, sobol, clients, steps in variants:
        runs = {"raw": [], "raw_tracked": [], "server": [], "server_auth": [], "server_c": []}
        for rep in range(args.repeat):
            tag = f"{'sobol' if sobol else 'mv'}_{rep}"
            warm = warmup_runs(sobol, args.sobol_params)
            runs["raw"].append(run_raw(scratch / f"raw_{tag}", clients, args.cells, steps,
                                       False, warm))
            runs["raw_tracked"].append(run_raw(scratch / f"rawt_{tag}", clients, args.cells,
                                               steps, True, warm))
            runs["server"].append(run_server_ingest(scratch / f"srv_{tag}", clients,
                                                    args.cells, steps, sobol,
                                                    args.sobol_params))
            rm(scratch / f"srv_{tag}")
            runs["server_auth"].append(run_server_ingest(scratch / f"srva_{tag}", clients,
                                                         args.cells, steps, sobol,
                                                         args.sobol_params, auth=True))
            rm(scratch / f"srva_{tag}")
            if c_client is not None:
                runs["server_c"].append(run_server_ingest(
                    scratch / f"srvc_{tag}", clients, args.cells, steps, sobol,
                    args.sobol_params, c_client=c_client))
                rm(scratch / f"srvc_{tag}")
            print(f"  [{name} rep {rep}] raw {runs['raw'][-1]['gbps']:.2f} GB/s, "
                  f"raw tracked {runs['raw_tracked'][-1]['gbps']:.2f} GB/s, "
                  f"server {runs['server'][-1]['gbps']:.2f} GB/s, "
                  f"server authenticated {runs['server_auth'][-1]['gbps']:.2f} GB/s"
                  + (f", server with C clients {runs['server_c'][-1]['gbps']:.2f} GB/s"
                     if runs["server_c"] else ""), file=sys.stderr, flush=True)
        res = {k: summarise(v) for k, v in runs.items() if v}
        res["ratio_best"] = res["server"]["best_gbps"] / res["raw"]["best_gbps"]
        res["ratio_median"] = res["server"]["median_gbps"] / res["raw"]["median_gbps"]
        res["auth_over_plain_median"] = (res["server_auth"]["median_gbps"]
                                         / res["server"]["median_gbps"])
        if "server_c" in res:
            res["c_ratio_best"] = res["server_c"]["best_gbps"] / res["raw"]["best_gbps"]
            res["c_ratio_median"] = (res["server_c"]["median_gbps"]
                                     / res["raw"]["median_gbps"])
            res["c_over_python_median"] = (res["server_c"]["median_gbps"]
                                           / res["server"]["median_gbps"])
        res["setup"] = {"clients": clients, "cells": args.cells, "steps": steps,
                        "message_bytes": args.cells * 8, "sobol": sobol,
                        "nb_parameters": args.sobol_params if sobol else None,
                        "warmup_runs": warmup_runs(sobol, args.sobol_params),
                        "server_processes": 1}
        out[name] = res
    if args.profile:
        for name, sobol, clients, steps in variants:
            prof = scratch / "server.prof"
            run_server_ingest(scratch / "srv_profile", clients, args.cells, steps, sobol,
                              args.sobol_params, profile=prof)
            out[name]["server_profile"] = profile_summary(prof)
            rm(scratch / "srv_profile")
    return out


def profile_summary(prof: Path, top: int = 15) -> list[dict]:
    import pstats

    st = pstats.Stats(str(prof))
    rows = []
    for (file, line, fn), (_cc, nc, tt, ct, _) in st.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({fn})", "calls": nc,
                     "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)})
    rows.sort(key=lambda r: -r["tottime_s"])
    return rows[:top]


