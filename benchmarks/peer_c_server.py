"""melissa-sa's server beside the reference framework's 2021 C server, on the
same study, in one run: server CPU seconds, peak memory and wall time, and
their ratios.

    python benchmarks/peer_c_server.py --reference PREFIX [--cells 99856] [--steps 10]
        [--groups 32] [--interval delta|fisher] [--fold-batch N] [--only ours|reference]
        [--keep DIR]
    python benchmarks/peer_c_server.py --only ours [...]     # no reference needed

``PREFIX`` is an install of github melissa-sa/melissa at commit d07c43a (June
2021), built as ``docs/performance.md`` says; it is not a dependency of the
project. The study: the solver ``peer_heat.c`` (built here against each
library; a square grid of ``--cells`` cells, ``--steps`` steps), 3 parameters,
Sobol' groups of 5 runs drawn uniformly in [100, 500]^3, mean + variance +
first and total Sobol' indices, one server rank, one group at a time, no
checkpoint during the study. melissa-sa runs with its local scheduler
(``job_limit`` 5); the reference with its own launcher (see
``peer_reference_study.py``) in a network namespace of its own, so this needs
root and ``unshare``.

The servers' CPU and peak resident memory (VmHWM) are read from /proc every
0.05 s for every process of the server (the MPI rank and its threads; not
mpiexec nor its proxy), and the peak of its private memory (RssAnon, as
sampled: VmHWM also counts the pages of shared libraries, about 100 MB of
LLVM for Numba); wall time is the whole study's, launcher start to exit.
The CPU of each of the server's threads (the main thread, ZeroMQ's I/O
thread, the results writer, ...) is printed in user and system seconds:
system time is mostly the kernel zeroing pages the server touches for the
first time (on this project's VM, 1-2.5 s per GB of fresh memory).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from e2e_procs import descendants, free_port, proc_thread_times, stat_cpu_seconds
from peer_reference_study import describe, write_options

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SOLVER = HERE / "peer_heat.c"


class ServerSampler:
    """CPU seconds and peak resident memory of the processes under ``root``
    whose command line holds ``marker``, sampled every ``period`` s."""

    def __init__(self, root: int, marker: str, period: float = 0.05):
        self.root, self.marker, self.period = root, marker.encode(), period
        self.cpu: dict[int, float] = {}
        self.hwm_kib: dict[int, int] = {}
        self.anon_peak_kib: dict[int, int] = {}
        #: (pid, tid) -> (thread name, user s, system s), as last sampled
        self.threads: dict[tuple[int, int], tuple[str, float, float]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for pid in descendants({self.root}):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                if self.marker not in b" ".join(argv) or os.path.basename(argv[0]).startswith(
                        (b"mpiexec", b"mpirun", b"hydra")):
                    continue
                with open(f"/proc/{pid}/stat") as f:
                    self.cpu[pid] = stat_cpu_seconds(f.read())
                self._sample_threads(pid)
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.hwm_kib[pid] = int(line.split()[1])
                        elif line.startswith("RssAnon:"):
                            self.anon_peak_kib[pid] = max(self.anon_peak_kib.get(pid, 0),
                                                          int(line.split()[1]))
            except (OSError, ValueError):
                continue

    def _sample_threads(self, pid: int) -> None:
        for tid, times in proc_thread_times(pid).items():
            self.threads[pid, tid] = times

    def thread_cpu(self) -> dict[str, list[float]]:
        """``{thread name: [user s, system s]}``, the threads of one name summed."""
        out: dict[str, list[float]] = {}
        for name, user, system in self.threads.values():
            total = out.setdefault(name, [0.0, 0.0])
            total[0] += user
            total[1] += system
        return {k: [round(u, 2), round(s, 2)] for k, (u, s) in
                sorted(out.items(), key=lambda kv: -sum(kv[1]))}

    def _run(self) -> None:
        while not self._done.wait(self.period):
            self._sample()

    def stop(self) -> dict:
        self._done.set()
        self._thread.join()
        return {"server_cpu_s": sum(self.cpu.values()),
                "server_peak_mb": sum(self.hwm_kib.values()) / 1024,
                "server_private_peak_mb": sum(self.anon_peak_kib.values()) / 1024,
                "server_pids": len(self.cpu), "server_threads": self.thread_cpu()}


def run(cmd, **kw) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n"
                         f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def build_ours(work: Path) -> Path:
    """libmelissa (the venv's MPICH wheel, pyzmq's libzmq) and the solver against it."""
    work.mkdir(parents=True, exist_ok=True)
    prefix = work / "ours"
    cli = BIN / "melissa-sa"
    run([cli, "client", "build", "--prefix", prefix, "--mpicc", BIN / "mpicc", "--zmq", "wheel"])
    env = {**os.environ, "PKG_CONFIG_PATH": str(prefix / "lib" / "pkgconfig")}
    flags = run(["pkg-config", "--cflags", "--libs", "melissa"], env=env).split()
    exe = work / "heat_ours"
    run([BIN / "mpicc", "-O2", SOLVER, *flags, f"-Wl,-rpath,{prefix / 'lib'}", "-o", exe])
    return exe


def build_reference(work: Path, reference: Path, mpicc: str) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    exe = work / "heat_reference"
    run([mpicc, "-O2", SOLVER, f"-I{reference / 'include'}", f"-L{reference / 'lib'}",
         "-lmelissa_api", f"-Wl,-rpath,{reference / 'lib'}", "-o", exe])
    return exe


def grid(cells: int) -> tuple[int, int]:
    nx = int(math.isqrt(cells))
    return nx, cells // nx


def our_study(work: Path, solver: Path, cells: int, steps: int, groups: int,
              interval: str, fold_batch: int | None = None) -> Path:
    nx, ny = grid(cells)
    cfg = {
        "output_dir": str(work / "out"),
        "study_options": {
            "field_names": ["heat"], "nb_parameters": 3, "parameter_names": ["t0", "left", "walls"],
            "parameter_sweep_size": groups, "nb_time_steps": steps, "sampler": "random_uniform",
            "seed": 0, "l_bounds": [100.0] * 3, "u_bounds": [500.0] * 3,
            "simulation_timeout": 600, "crashes_before_redraw": 3},
        "sa_config": {"mean": True, "variance": True, "sobol_indices": True,
                      "confidence_method": interval, "checkpoint_interval": 10 ** 9,
                      **({} if fold_batch is None else {"sobol_fold_batch": fold_batch})},
        "server_config": {"server_processes": 1, "connection_port": free_port(),
                          "data_puller_port": free_port(), "bind": "127.0.0.1"},
        "launcher_config": {"scheduler": "local", "job_limit": 5, "fault_tolerance": True,
                            "server_timeout": 300},
        "client_config": {"executable_command": f"env NX={nx} NY={ny} STEPS={steps} {solver}",
                          "client_processes": 1},
    }
    path = work / "study.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def measure(cmd, marker: str, cwd: Path, env: dict, timeout: float, log: Path) -> dict:
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        sampler = ServerSampler(proc.pid, marker)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = "timeout"
    res = {"wall_s": time.time() - t0, **sampler.stop(), "rc": rc}
    return res


def run_ours(work: Path, cells: int, steps: int, groups: int, interval: str,
             timeout: float, fold_batch: int | None = None) -> dict:
    solver = build_ours(work)
    study = our_study(work, solver, cells, steps, groups, interval, fold_batch)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELISSA_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    res = measure([BIN / "melissa-sa", "run", study, "--no-progress"], "melissa_sa.server",
                  work, env, timeout, work / "melissa-sa.log")
    if res["rc"] != 0:
        raise SystemExit(f"melissa-sa run failed ({res['rc']}):\n"
                         f"{(work / 'melissa-sa.log').read_text()[-3000:]}")
    server_log = work / "out" / "logs" / "server.log"
    # the server's own account at exit: CPU and peak memory of each phase
    res["server_phases"] = [line.strip() for line in server_log.read_text().splitlines()
                            if line.startswith("melissa-sa server rank ")]
    # the results phase: the CPU of the exit line's last phase ("end": results.h5 written)
    ends = [re.search(r"\bend ([0-9.]+) s\b", line) for line in res["server_phases"]]
    res["server_end_cpu_s"] = sum(float(m.group(1)) for m in ends if m)
    return res


def run_reference_inside(args) -> None:
    """In the network namespace: the reference study; one JSON line on stdout."""
    work, reference = Path(args.work), Path(args.reference)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    solver = build_reference(work, reference, args.mpicc)
    nx, ny = grid(args.cells)
    lib = f"{reference / 'lib'}{os.pathsep}{os.environ.get('LD_LIBRARY_PATH', '')}"
    options = write_options(work, reference, solver, args.mpiexec,
                            {"NX": nx, "NY": ny, "STEPS": args.steps, "LD_LIBRARY_PATH": lib},
                            args.groups, args.steps)
    share = reference / "share" / "melissa"   # what the install's melissa_set_env.sh sets
    env = {**os.environ, "LD_LIBRARY_PATH": lib, "MELISSA_INSTALL_PREFIX": str(reference),
           "PYTHONPATH": os.pathsep.join([str(share), str(share / "launcher")]),
           "PATH": f"{reference / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = measure([sys.executable, reference / "bin" / "melissa_launcher", "-o", options],
                  "melissa_server", work, env, args.timeout, work / "launcher.log")
    if res["rc"] != 0 or res["server_pids"] == 0:
        res["error"] = (f"reference launcher exited with {res['rc']}\n"
                        f"{(work / 'launcher.log').read_text(errors='replace')[-2000:]}\n"
                        f"{describe(work)}")
    print(json.dumps(res), flush=True)


def run_reference(work: Path, args) -> dict:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        raise SystemExit("the reference server needs root and unshare (its fixed port 2003 is "
                         "given a network namespace of its own)")
    cmd = ["unshare", "-n", sys.executable, __file__, "--inside", "--work", work,
           "--reference", args.reference, "--mpicc", args.mpicc, "--mpiexec", args.mpiexec,
           "--cells", args.cells, "--steps", args.steps, "--groups", args.groups,
           "--timeout", args.timeout]
    out = run(cmd, timeout=args.timeout + 120)
    res = json.loads(out.strip().splitlines()[-1])
    if "error" in res:
        raise SystemExit(res["error"])
    return res


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="install prefix of the reference framework (not "
                    "needed with --only ours)")
    ap.add_argument("--cells", type=int, default=99_856)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--groups", type=int, default=32)
    ap.add_argument("--interval", choices=("delta", "fisher"), default="delta")
    ap.add_argument("--fold-batch", type=int, help="our sa_config.sobol_fold_batch "
                    "(default: the interval's default)")
    ap.add_argument("--only", choices=("ours", "reference"))
    ap.add_argument("--mpicc", default="mpicc.mpich", help="MPI the reference was built with")
    ap.add_argument("--mpiexec", default="mpiexec.mpich")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--keep", help="work directory to keep (default: a temporary one)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.only != "ours" and not args.reference:
        ap.error("--reference PREFIX: the reference framework's install (or --only ours)")
    if args.inside:
        run_reference_inside(args)
        return 0
    base = Path(args.keep or tempfile.mkdtemp(prefix="peer-"))
    nx, ny = grid(args.cells)
    mb = 8 * nx * ny * args.steps * 5 * args.groups / 1e6
    print(f"# {time.strftime('%Y-%m-%d')} {cpu_model()}, load {os.getloadavg()[0]:.2f}; "
          f"{nx}x{ny} = {nx * ny} cells, {args.steps} steps, {args.groups} groups of 5 runs, "
          f"{mb:.0f} MB sent; interval {args.interval}"
          f"{'' if args.fold_batch is None else f', fold batch {args.fold_batch}'}", flush=True)
    rows = {}
    if args.only != "reference":
        rows["melissa-sa"] = run_ours(base / "ours", nx * ny, args.steps, args.groups,
                                      args.interval, args.timeout, args.fold_batch)
    if args.only != "ours":
        rows["reference C (d07c43a)"] = run_reference(base / "reference", args)
    print(f"{'server':<24} {'CPU s':>8} {'peak MB':>9} {'wall s':>8} {'private MB':>11}")
    for name, r in rows.items():
        print(f"{name:<24} {r['server_cpu_s']:8.2f} {r['server_peak_mb']:9.0f} {r['wall_s']:8.1f} "
              f"{r['server_private_peak_mb']:11.0f}")
    for line in rows.get("melissa-sa", {}).get("server_phases", []):
        print(f"  {line}")
    for name, r in rows.items():
        threads = ", ".join(f"{t} {u:.2f} + {s:.2f}" for t, (u, s) in r["server_threads"].items()
                            if u + s >= 0.01)
        print(f"  {name} threads, CPU s user + system: {threads}")
    if "melissa-sa" in rows:
        print(f"  results phase (the server's end: results.h5 written): "
              f"{rows['melissa-sa']['server_end_cpu_s']:.2f} s CPU")
    if len(rows) == 2:
        ours, ref = rows.values()
        print(f"{'ratio ours / reference':<24} {ours['server_cpu_s'] / ref['server_cpu_s']:8.2f} "
              f"{ours['server_peak_mb'] / ref['server_peak_mb']:9.2f} "
              f"{ours['wall_s'] / ref['wall_s']:8.2f} "
              f"{ours['server_private_peak_mb'] / max(ref['server_private_peak_mb'], 1e-9):11.2f}")
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cells": nx * ny,
                      "steps": args.steps, "groups": args.groups, "interval": args.interval,
                      "fold_batch": args.fold_batch,
                      "rows": rows}))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
