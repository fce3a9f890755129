"""Many clients on the Slurm of network namespaces (tests/namespace_cluster.py):
2,000 short client runs with ``job_limit`` 100, each a batch job. The
launcher must poll Slurm with one ``squeue`` per poll, its memory and the
server's must stay flat, no descriptor may leak, and the study must finish.
Slow (about 5 minutes on 2 cores); prints the CPU per run it measured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import child_env, kill_group, write_study
from namespace_cluster import LOGIN, ns_cluster  # noqa: F401
from studyutil import MELISSA, NB_STEPS, copy_client

from melissa_sa.results import open_results

RUNS, JOB_LIMIT = 2000, 100
SERVER_NODE = "msa-n1"


def usage(pid: int | None) -> tuple[float, float, int, float] | None:
    """(CPU seconds, RSS MiB, open descriptors, CPU seconds of its reaped
    children: sbatch, squeue...) of ``pid``, or None if gone."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return ((int(fields[11]) + int(fields[12])) / ticks, rss / 2 ** 20, fds,
            (int(fields[13]) + int(fields[14])) / ticks)


def server_pid(cluster) -> int | None:  # noqa: F811
    for pid in cluster.node_pids(SERVER_NODE):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"melissa_sa.server.main" in argv and not any(b"mpiexec" in a for a in argv):
            return pid
    return None


@pytest.mark.slow
def test_two_thousand_client_runs(ns_cluster, tmp_path):  # noqa: F811
    copy_client(tmp_path)
    study = write_study(
        tmp_path,
        study_options={"field_names": ["f"], "nb_parameters": 2, "parameter_sweep_size": RUNS,
                       "nb_time_steps": NB_STEPS, "l_bounds": [-3.0, -1.0],
                       "u_bounds": [3.0, 2.0], "seed": 7},
        sa_config={"mean": True, "variance": True, "checkpoint_interval": 500},
        server_config={"server_processes": 1},
        launcher_config={"scheduler": "slurm", "job_limit": JOB_LIMIT, "server_timeout": 300,
                         "scheduler_arg_server": [f"--nodelist={SERVER_NODE}"],
                         "scheduler_arg_client": [f"--exclude={SERVER_NODE}"]},
        client_config={"executable_command": "python analytic_client.py"})
    # count the launcher's squeue calls with a wrapper first on its PATH
    shims, calls = tmp_path / "shims", tmp_path / "squeue.calls"
    shims.mkdir()
    (shims / "squeue").write_text(f'#!/bin/sh\necho x >> {calls}\nexec {shutil.which("squeue")} '
                                  f'"$@"\n')
    (shims / "squeue").chmod(0o755)
    env = child_env(SLURM_CONF=ns_cluster.state["conf"])
    env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
    log = open(tmp_path / "launcher.out", "wb")
    proc = subprocess.Popen(ns_cluster.on(LOGIN, [MELISSA, "run", str(study), "--no-progress"]),
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
                            start_new_session=True)
    log.close()
    samples: list[tuple[float, tuple | None, tuple | None]] = []
    start, spid = time.monotonic(), None
    try:
        while proc.poll() is None:
            assert time.monotonic() - start < 1500, "the study did not finish in 25 min"
            spid = spid if usage(spid) else server_pid(ns_cluster)
            samples.append((time.monotonic() - start, usage(proc.pid), usage(spid)))
            time.sleep(5)
    finally:
        kill_group(proc)
    wall = time.monotonic() - start
    text = (tmp_path / "launcher.out").read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    with open_results(tmp_path / "out" / "results.h5") as r:
        assert int(r.parameters.folded.sum()) == RUNS
    launcher = [s[1] for s in samples if s[1] is not None]
    server = [s[2] for s in samples if s[2] is not None]
    n_calls = len(calls.read_text().splitlines())
    print(f"\n{RUNS} runs in {wall:.0f} s; launcher CPU {launcher[-1][0]:.1f} s "
          f"({1000 * launcher[-1][0] / RUNS:.1f} ms/run; its sbatch/squeue children "
          f"{1000 * launcher[-1][3] / RUNS:.1f} ms/run), RSS {launcher[1][1]:.0f} -> "
          f"{launcher[-1][1]:.0f} MiB, fds {launcher[1][2]} -> {max(s[2] for s in launcher)}; "
          f"server CPU {server[-1][0]:.1f} s ({1000 * server[-1][0] / RUNS:.1f} ms/run), RSS "
          f"{server[0][1]:.0f} -> {server[-1][1]:.0f} MiB; {n_calls} squeue calls")
    # one squeue per poll (every 2 s), a few more at the start and the end
    assert n_calls <= wall / 2 + 20, (n_calls, wall)
    # flat: less than 30 MiB of growth after the first samples, no descriptor leak
    assert launcher[-1][1] - launcher[1][1] < 30 and server[-1][1] - server[0][1] < 30
    assert max(s[2] for s in launcher) < launcher[1][2] + 50
