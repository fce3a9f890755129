"""The Slurm schedulers against a real one-node Slurm (tests/slurm_cluster.py).

Each test uses a job-name prefix of its own and checks at the end that nothing
of it is left in ``squeue``. Without Slurm (not root, packages missing) the
tests that need it skip with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
from slurm_cluster import slurm  # noqa: F401  (the session fixture)

from melissa_sa.config import ConfigError, config_from_dict
from melissa_sa.launcher import SchedulerError

PY = sys.executable


def _slurm_module():
    """The Slurm schedulers and the commands that find a study's jobs."""
    from types import SimpleNamespace

    from melissa_sa.launcher import slurm_commands
    from melissa_sa.launcher.slurm import SlurmScheduler
    from melissa_sa.launcher.slurm_allocation import SlurmAllocationScheduler

    return SimpleNamespace(SlurmScheduler=SlurmScheduler,
                           SlurmAllocationScheduler=SlurmAllocationScheduler,
                           find_study_jobs=slurm_commands.find_study_jobs,
                           cancel_study_jobs=slurm_commands.cancel_study_jobs,
                           study_job_prefix=slurm_commands.study_job_prefix)


@pytest.fixture
def prefix(slurm):  # noqa: F811
    """A job-name prefix of this test; nothing with it may be left in squeue."""
    name = f"mtest-{uuid.uuid4().hex[:8]}"
    yield name
    mod = _slurm_module()
    left = mod.find_study_jobs(name, env=slurm.env)
    if left:
        slurm.run("scancel", *[j for j, _, _ in left])
    assert left == [], f"jobs left in squeue: {left}"


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.sh"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def wait_done(sched, n: int, timeout: float = 60.0) -> dict:
    """Poll until ``n`` jobs ended; ``{job_id: (state, rc)}``."""
    done = {}
    deadline = time.monotonic() + timeout
    while len(done) < n:
        assert time.monotonic() < deadline, f"only {done} ended after {timeout:g} s"
        for key, state, rc in sched.poll():
            done[key] = (state, rc)
        time.sleep(0.3)
    return done


def make(slurm, prefix, tmp_path, logs=None, **kw):  # noqa: F811
    mod = _slurm_module()
    args = [f"--partition={slurm.partition}"] if slurm.partition else []
    kw.setdefault("client_args", args)
    sched = mod.SlurmScheduler(cwd=str(tmp_path), env=slurm.env, grace=1.0, prefix=prefix,
                               log=(logs.append if logs is not None else None), **kw)
    sched.poll_interval = 0.5
    return sched


# ---------------------------------------------------------------------------
# the cluster itself


def test_cluster_runs_a_batch_job(slurm, tmp_path):  # noqa: F811
    out = tmp_path / "out.txt"
    res = slurm.run("sbatch", "--parsable", f"--output={out}", "--wrap", "echo hello")
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 30
    while not (out.exists() and "hello" in out.read_text()):
        assert time.monotonic() < deadline, slurm.log_tail()
        time.sleep(0.3)


def test_a_private_cluster_is_stopped_by_pid(slurm):  # noqa: F811
    from slurm_cluster import slurm_cluster
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    other = slurm_cluster(env)  # a second one, on ports of its own
    if not other.started:
        pytest.skip("a system Slurm answers: nothing is started here")
    pids = {name: proc.pid for name, proc in other.procs.items()}
    assert sorted(pids) == ["munged", "slurmctld", "slurmd"]
    assert other.run("sinfo", "--noheader", "-o", "%P").returncode == 0
    other.stop()
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z", name
    assert not other.workdir.exists()


# ---------------------------------------------------------------------------
# SlurmScheduler: one batch job per client


def test_job_runs_and_finishes(slurm, prefix, tmp_path):  # noqa: F811
    sched = make(slurm, prefix, tmp_path)
    marker = tmp_path / "ran"
    handle = sched.submit(7, script(tmp_path, "ok", f"echo running in $SLURM_JOB_ID; "
                                                    f"echo $MELISSA_X > {marker}"),
                          str(tmp_path / "job.log"), env={"MELISSA_X": "from-launcher"})
    assert handle.job_id == 7 and sched.running == 1
    assert sched.slurm_job_ids()[7].isdigit()
    assert wait_done(sched, 1) == {7: ("finished", 0)}
    assert sched.running == 0
    assert marker.read_text().strip() == "from-launcher"  # the job got the env given
    assert "running in " in (tmp_path / "job.log").read_text()


def test_failing_exit_is_failed_with_its_code(slurm, prefix, tmp_path):  # noqa: F811
    logs = []
    sched = make(slurm, prefix, tmp_path, logs)
    sched.submit("a", script(tmp_path, "fail", "exit 3"), str(tmp_path / "a.log"))
    assert wait_done(sched, 1) == {"a": ("failed", 3)}
    assert any("FAILED" in line for line in logs), logs


def test_scancel_from_outside_is_a_crash(slurm, prefix, tmp_path):  # noqa: F811
    logs = []
    sched = make(slurm, prefix, tmp_path, logs)
    sched.submit("b", script(tmp_path, "sleep", "sleep 120"), str(tmp_path / "b.log"))
    slurm_id = sched.slurm_job_ids()["b"]
    _wait_state(slurm, slurm_id, "RUNNING")
    assert slurm.run("scancel", slurm_id).returncode == 0
    state, rc = wait_done(sched, 1)["b"]
    assert state == "failed" and rc == -signal.SIGTERM
    assert any("CANCELLED" in line and slurm_id in line for line in logs), logs


def test_cancel_by_the_launcher_is_reported_cancelled(slurm, prefix, tmp_path):  # noqa: F811
    sched = make(slurm, prefix, tmp_path)
    sched.submit("c", script(tmp_path, "sleep", "sleep 120"), str(tmp_path / "c.log"))
    sched.submit("d", script(tmp_path, "sleep2", "sleep 120"), str(tmp_path / "d.log"))
    sched.cancel("c")
    done = wait_done(sched, 1)
    assert done["c"][0] == "cancelled"
    assert sched.running == 1
    ids = sched.cancel_all(timeout=30)
    assert len(ids) == 1 and sched.running == 0


@pytest.mark.slow  # Slurm's smallest walltime is 1 minute
def test_walltime_is_a_crash(slurm, prefix, tmp_path):  # noqa: F811
    logs = []
    args = [f"--partition={slurm.partition}"] if slurm.partition else []
    sched = make(slurm, prefix, tmp_path, logs, client_args=[*args, "--time=1"])
    sched.submit("t", script(tmp_path, "long", "sleep 600"), str(tmp_path / "t.log"))
    state, rc = wait_done(sched, 1, timeout=150)["t"]  # Slurm's smallest limit is 1 minute
    assert state == "failed" and rc == -signal.SIGTERM
    assert any("TIMEOUT" in line for line in logs), logs


def test_refused_submission_backs_off_and_loses_nothing(slurm, prefix, tmp_path):  # noqa: F811
    if not slurm.admin:
        pytest.skip("needs a Slurm of our own to switch a partition INACTIVE")
    gate = slurm.gate_partition
    logs = []
    sched = make(slurm, prefix, tmp_path, logs, client_args=[f"-p {gate}"],
                 backoff=(1.0, 2.0))
    assert slurm.run("scontrol", "update", f"PartitionName={gate}",
                     "State=INACTIVE").returncode == 0
    try:
        sched.submit(1, script(tmp_path, "one", "true"), str(tmp_path / "1.log"))
        sched.submit(2, script(tmp_path, "two", "true"), str(tmp_path / "2.log"))
        assert sched.running == 2  # still counted against job_limit
        assert sched.slurm_job_ids() == {}
        assert sched.stats["refused"] == 1  # the second waits behind the first
        assert any("sbatch refused" in line and "next attempt in 1 s" in line
                   and "partition" in line for line in logs), logs
        assert sched.poll() == [] and sched.stats["refused"] == 1  # backing off
        time.sleep(1.2)
        assert sched.poll() == [] and sched.stats["refused"] == 2
        assert any("next attempt in 2 s" in line for line in logs), logs
    finally:
        slurm.run("scontrol", "update", f"PartitionName={gate}", "State=UP")
    assert wait_done(sched, 2) == {1: ("finished", 0), 2: ("finished", 0)}
    assert any("accepts jobs again" in line for line in logs), logs
    assert sched.stats["submitted"] == 2


def test_job_limit_bounds_jobs_queued_or_running(slurm, prefix, tmp_path):  # noqa: F811
    sched = make(slurm, prefix, tmp_path)
    limit, total, seen = 2, 5, 0
    pending = list(range(total))
    done = {}
    deadline = time.monotonic() + 120
    while len(done) < total:
        assert time.monotonic() < deadline
        for key, state, rc in sched.poll():
            done[key] = (state, rc)
        while pending and sched.running < limit:  # what the launcher does
            key = pending.pop(0)
            sched.submit(key, script(tmp_path, f"j{key}", "sleep 1"), str(tmp_path / "j.log"))
        ours = _mod_jobs(slurm, prefix)
        assert len(ours) <= limit, ours
        seen = max(seen, len(ours))
        time.sleep(0.3)
    assert done == {k: ("finished", 0) for k in range(total)}
    assert seen == limit


def test_one_squeue_call_for_all_jobs(slurm, prefix, tmp_path):  # noqa: F811
    sched = make(slurm, prefix, tmp_path)
    sched.poll_interval = 0.0
    for k in range(3):
        sched.submit(k, script(tmp_path, f"s{k}", "sleep 2"), str(tmp_path / f"{k}.log"))
    calls = []
    run = sched.slurm.run
    sched.slurm.run = lambda args, env=None: calls.append(args[0]) or run(args, env)
    sched.poll()
    assert calls.count("squeue") == 1 and "scontrol" not in calls and "sacct" not in calls
    wait_done(sched, 3)
    assert calls.count("sacct") == 0  # COMPLETED needs no further look-up


def test_server_job_has_one_communicator(slurm, prefix, tmp_path):  # noqa: F811
    sched = make(slurm, prefix, tmp_path,
                 server_args=[f"--partition={slurm.partition}"] if slurm.partition else [])
    prog = tmp_path / "size.py"
    prog.write_text("from mpi4py import MPI\n"
                    "print('size', MPI.COMM_WORLD.Get_size(), flush=True)\n")
    log = tmp_path / "server.log"
    job = sched.submit_server([PY, str(prog)], tmp_path / "server.sh", log, ntasks=2)
    assert job.poll() is None
    assert job.wait(60) == 0
    assert log.read_text().split("\n").count("size 2") == 2, log.read_text()
    assert "srun --mpi=pmi2 --kill-on-bad-exit=1 -n 2" in (tmp_path / "server.sh").read_text()


def test_server_job_crash_and_terminate(slurm, prefix, tmp_path):  # noqa: F811
    sched = make(slurm, prefix, tmp_path)
    job = sched.submit_server(["sh", "-c", "exit 4"], tmp_path / "s.sh", tmp_path / "s.log",
                              ntasks=1, mpi=())
    assert job.wait(60) == 4
    job = sched.submit_server(["sleep", "120"], tmp_path / "s.sh", tmp_path / "s.log",
                              ntasks=1, mpi=())
    _wait_state(slurm, job.job_id, "RUNNING")
    job.terminate()
    assert job.wait(60) == -signal.SIGTERM


def test_find_study_jobs(slurm, prefix, tmp_path):  # noqa: F811
    mod = _slurm_module()
    sched = make(slurm, prefix, tmp_path)
    sched.submit("x", script(tmp_path, "x", "sleep 60"), str(tmp_path / "x.log"))
    found = mod.find_study_jobs(prefix, env=slurm.env)
    assert [(j, n) for j, n, _ in found] == [(sched.slurm_job_ids()["x"], f"{prefix}-x")]
    assert mod.find_study_jobs(prefix + "-nothing", env=slurm.env) == []
    sched.cancel_all(timeout=30)


def test_cancel_study_jobs_touches_only_the_study(slurm, prefix, tmp_path):  # noqa: F811
    mod = _slurm_module()
    ours = make(slurm, prefix, tmp_path)
    theirs = make(slurm, prefix + "x", tmp_path)  # a prefix that only starts like ours
    ours.submit("a", script(tmp_path, "a", "sleep 60"), str(tmp_path / "a.log"))
    theirs.submit("b", script(tmp_path, "b", "sleep 60"), str(tmp_path / "b.log"))
    assert mod.cancel_study_jobs(prefix, env=slurm.env) == [ours.slurm_job_ids()["a"]]
    assert wait_done(ours, 1)["a"][0] == "failed"  # cancelled behind its back: a crash
    assert [n for _, n, _ in mod.find_study_jobs(prefix + "x", env=slurm.env)] == \
        [f"{prefix}x-b"]
    theirs.cancel_all(timeout=30)


def test_squeue_failure_is_not_a_crash(slurm, prefix, tmp_path):  # noqa: F811
    logs = []
    sched = make(slurm, prefix, tmp_path, logs)
    sched.submit("q", script(tmp_path, "q", "sleep 2"), str(tmp_path / "q.log"))
    good_env = sched.slurm.env
    # a controller that does not answer: squeue hangs (here: gets no config and
    # retries) until the command timeout
    sched.slurm.env = {**good_env, "SLURM_CONF": str(tmp_path / "missing.conf")}
    sched.slurm.timeout = 1.0
    time.sleep(3)
    sched.poll_interval = 0.0
    assert sched.poll() == [] and sched.poll() == []
    assert sum("squeue fails" in line for line in logs) == 1, logs
    sched.slurm.env, sched.slurm.timeout = good_env, 60.0
    assert wait_done(sched, 1) == {"q": ("finished", 0)}


def _mod_jobs(slurm, prefix):  # noqa: F811
    return _slurm_module().find_study_jobs(prefix, env=slurm.env)


def _wait_state(slurm, slurm_id: str, state: str, timeout: float = 30.0) -> None:  # noqa: F811
    deadline = time.monotonic() + timeout
    while True:
        out = slurm.run("squeue", "--noheader", f"--jobs={slurm_id}", "--format=%T").stdout
        if out.strip() == state:
            return
        assert time.monotonic() < deadline, f"job {slurm_id} never {state}: {out!r}"
        time.sleep(0.3)


# ---------------------------------------------------------------------------
# SlurmAllocationScheduler: job steps inside one allocation


@pytest.fixture
def allocation(slurm, prefix):  # noqa: F811
    args = [f"--partition={slurm.partition}"] if slurm.partition else []
    res = slurm.run("salloc", "--no-shell", "--ntasks=2", f"--job-name={prefix}-alloc", *args,
                    timeout=60)
    assert res.returncode == 0, res.stderr
    job = next(w for w in res.stderr.split() if w.isdigit())
    yield job
    slurm.run("scancel", job)
    deadline = time.monotonic() + 30
    while _mod_jobs(slurm, prefix) and time.monotonic() < deadline:
        time.sleep(0.3)


def test_allocation_steps_run_side_by_side(slurm, prefix, allocation, tmp_path):  # noqa: F811
    mod = _slurm_module()
    sched = mod.SlurmAllocationScheduler(cwd=str(tmp_path), env=slurm.env, grace=1.0,
                                         allocation=allocation, prefix=prefix)
    stamp = "python3 -c 'import time; print(time.time())'"
    for k in range(2):
        sched.submit(k, script(tmp_path, f"st{k}", f"{stamp} > {tmp_path}/{k}.start; sleep 3; "
                                                  f"{stamp} > {tmp_path}/{k}.end; "
                                                  f"echo step $SLURM_STEP_ID"),
                     str(tmp_path / f"{k}.log"))
    assert sched.running == 2
    assert wait_done(sched, 2) == {0: ("finished", 0), 1: ("finished", 0)}
    t = {k: (float((tmp_path / f"{k}.start").read_text()),
             float((tmp_path / f"{k}.end").read_text())) for k in range(2)}
    assert t[0][0] < t[1][1] and t[1][0] < t[0][1], f"steps ran one after the other: {t}"
    assert "step " in (tmp_path / "0.log").read_text()


def test_allocation_step_failure_and_cancel(slurm, prefix, allocation, tmp_path):  # noqa: F811
    mod = _slurm_module()
    logs = []
    sched = mod.SlurmAllocationScheduler(cwd=str(tmp_path), env=slurm.env, grace=2.0,
                                         allocation=allocation, prefix=prefix,
                                         log=logs.append)
    sched.submit("f", script(tmp_path, "f", "exit 5"), str(tmp_path / "f.log"))
    sched.submit("k", script(tmp_path, "k", "kill -KILL $$"), str(tmp_path / "k.log"))
    assert wait_done(sched, 2) == {"f": ("failed", 5), "k": ("failed", -signal.SIGKILL)}
    sched.submit("c", script(tmp_path, "c", "sleep 120"), str(tmp_path / "c.log"))
    time.sleep(1.5)
    sched.cancel("c")
    assert wait_done(sched, 1, timeout=30)["c"][0] == "cancelled"
    steps = slurm.run("squeue", "--noheader", "--steps", f"--jobs={allocation}",
                      "--format=%i|%j").stdout
    assert prefix + "-c" not in steps


def test_allocation_server_step_has_one_communicator(slurm, prefix, allocation,  # noqa: F811
                                                     tmp_path):
    import subprocess
    mod = _slurm_module()
    sched = mod.SlurmAllocationScheduler(env=slurm.env, allocation=allocation, prefix=prefix)
    prog = tmp_path / "size.py"
    prog.write_text("from mpi4py import MPI\n"
                    "print('size', MPI.COMM_WORLD.Get_size(), flush=True)\n")
    cmd = sched.server_command([PY, str(prog)], ntasks=2)
    res = subprocess.run(cmd, env=slurm.env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n").count("size 2") == 2, res.stdout


def test_allocation_scheduler_needs_an_allocation(slurm):  # noqa: F811
    mod = _slurm_module()
    env = {k: v for k, v in slurm.env.items() if k != "SLURM_JOB_ID"}
    with pytest.raises(SchedulerError, match="inside an allocation"):
        mod.SlurmAllocationScheduler(env=env)


# ---------------------------------------------------------------------------
# config (no Slurm needed)


def _study(launcher: dict) -> dict:
    return {"output_dir": "out",
            "study_options": {"field_names": ["f"], "nb_parameters": 1,
                              "parameter_sweep_size": 2, "nb_time_steps": 1,
                              "l_bounds": [0], "u_bounds": [1]},
            "launcher_config": launcher,
            "client_config": {"executable_command": "true"}}


def test_config_accepts_slurm_schedulers_and_their_options():
    for name in ("slurm", "slurm-allocation"):
        cfg = config_from_dict(_study({
            "scheduler": name, "scheduler_arg_client": ["--time=00:10:00", "-p debug"],
            "scheduler_arg_server": ["--mem-per-cpu=2G"]}))
        assert cfg.launcher_config.scheduler == name
        assert cfg.launcher_config.scheduler_arg_client == ("--time=00:10:00", "-p debug")
        assert cfg.launcher_config.scheduler_arg_server == ("--mem-per-cpu=2G",)
    default = config_from_dict(_study({}))
    assert default.launcher_config.scheduler_arg_client == ()


@pytest.mark.parametrize("bad, message", [
    (["debug"], "expected a Slurm option"),
    ("--time=1", "expected a list"),
    ([""], "must not be empty"),
    (["--comment='unclosed"], "cannot split"),
])
def test_config_rejects_bad_scheduler_options(bad, message):
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict(_study({"scheduler": "slurm", "scheduler_arg_client": bad}))
    assert "launcher_config.scheduler_arg_client" in str(info.value)


def test_from_config_reads_the_options(tmp_path):
    mod = _slurm_module()
    cfg = config_from_dict(_study({"scheduler": "slurm",
                                   "scheduler_arg_client": ["-p debug", "--time=5"]}))
    sched = mod.SlurmScheduler.from_config(cfg, cwd=str(tmp_path), env={})
    assert sched.client_args == ["-p", "debug", "--time=5"]
    assert sched.prefix == mod.study_job_prefix(cfg.output_dir)
    assert sched.prefix.startswith("melissa-") and len(sched.prefix) == 16
    assert sched.server_args == [] and sched.client_processes == 1
    steps = mod.SlurmAllocationScheduler.from_config(cfg, env={"SLURM_JOB_ID": "42"})
    assert steps.allocation == "42" and steps.prefix == sched.prefix
    cmd = steps.server_command(["python", "-m", "x"], ntasks=3)
    assert cmd[0] == "srun" and "--jobid=42" in cmd and "--exclusive" in cmd
    assert "--ntasks=3" in cmd and "--mpi=pmi2" in cmd and cmd[-3:] == ["python", "-m", "x"]


# ---------------------------------------------------------------------------
# a whole study whose clients are Slurm jobs, through today's launcher


def test_study_with_client_jobs_in_slurm_matches_offline(slurm, tmp_path):  # noqa: F811
    """The launcher as it is (server under its local mpiexec, 2 ranks) with
    ``scheduler: "slurm"``: every client is an sbatch job of 2 tasks whose
    ranks the client script's mpiexec starts inside the job."""
    import numpy as np
    from conftest import write_study
    from studyutil import NB_STEPS, copy_client, offline

    from melissa_sa.config import load_config
    from melissa_sa.launcher import Launcher
    from melissa_sa.results import open_results

    mod = _slurm_module()
    n_cells, p, groups = 11, 2, 3
    copy_client(tmp_path)
    study = write_study(
        tmp_path,
        study_options={"field_names": ["f"], "nb_parameters": p,
                       "parameter_sweep_size": groups, "nb_time_steps": NB_STEPS,
                       "l_bounds": [-3.0, -1.0], "u_bounds": [3.0, 2.0]},
        sa_config={"mean": True, "variance": True, "skewness": True, "kurtosis": True,
                   "min": True, "max": True, "threshold_exceedance": [5.0],
                   "quantiles": [0.25, 0.5], "sobol_indices": True},
        server_config={"server_processes": 2},
        launcher_config={"scheduler": "slurm", "job_limit": 4, "server_timeout": 120,
                         "fault_tolerance": False},
        client_config={"executable_command": "python analytic_client.py --split 3,8",
                       "client_processes": 2},
    )
    launcher = Launcher(load_config(study), str(study))
    code = launcher.run()
    assert code == 0, (tmp_path / "out" / "logs" / "server.log").read_text()[-3000:]
    assert isinstance(launcher.scheduler, mod.SlurmScheduler)
    assert launcher.scheduler.stats["submitted"] == groups * (p + 2) + 1  # + the server
    assert mod.find_study_jobs("melissa", env=slurm.env) == []  # nothing left in squeue
    with open_results(tmp_path / "out" / "results.h5") as r:
        ref, n_groups = offline(r, n_cells, p)
        assert n_groups == groups
        for name, expected in ref.items():
            np.testing.assert_allclose(r.get("f", name), expected, rtol=1e-10, atol=1e-10,
                                       err_msg=name)
        slurm_results = {name: r.get("f", name) for name in ref}
        slurm_design = r.parameters.values

    # the same study with the local scheduler: the same numbers
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    copy_client(local_dir)
    config = json.loads(study.read_text())
    config["launcher_config"]["scheduler"] = "local"
    (local_dir / "study.json").write_text(json.dumps(config))
    assert Launcher(load_config(local_dir / "study.json"),
                    str(local_dir / "study.json")).run() == 0
    with open_results(local_dir / "out" / "results.h5") as r:
        order = lambda v: v[np.lexsort(v.T[::-1])]  # noqa: E731  (runs in any order)
        np.testing.assert_array_equal(order(r.parameters.values), order(slurm_design))
        for name, got in slurm_results.items():
            np.testing.assert_allclose(got, r.get("f", name), rtol=0, atol=1e-12, err_msg=name)


@pytest.mark.slow  # Slurm's smallest walltime is 1 minute
def test_client_jobs_cancelled_or_out_of_walltime_are_rerun(slurm, tmp_path,  # noqa: F811
                                                            monkeypatch):
    """Fault tolerance through today's launcher with client jobs in Slurm:
    sim 1's first attempt hangs and is scancel'ed from outside, sim 4's hangs
    until its 1-minute walltime (SBATCH_TIMELIMIT): both are crashes, rerun,
    and the statistics equal NumPy's over the design.

    Plain sampling (no Sobol' groups); the siblings of a hanging Sobol' member
    are covered by tests/test_cluster_study.py (they are not rerun)."""
    import io
    import threading

    import numpy as np
    from conftest import write_study
    from studyutil import NB_STEPS, copy_client, field_values

    from melissa_sa.config import load_config
    from melissa_sa.launcher import Launcher
    from melissa_sa.results import open_results

    mod = _slurm_module()
    n_cells, runs = 11, 6
    copy_client(tmp_path)
    study = write_study(
        tmp_path,
        study_options={"field_names": ["f"], "nb_parameters": 2,
                       "parameter_sweep_size": runs, "nb_time_steps": NB_STEPS,
                       "l_bounds": [-3.0, -1.0], "u_bounds": [3.0, 2.0],
                       "simulation_timeout": 600},
        sa_config={"mean": True, "variance": True, "min": True, "max": True},
        server_config={"server_processes": 2},
        launcher_config={"scheduler": "slurm", "job_limit": 6, "server_timeout": 300,
                         "fault_tolerance": True,
                         "scheduler_arg_server": ["--time=10"]},  # beats SBATCH_TIMELIMIT
        client_config={"executable_command": "python analytic_client.py"},
    )
    monkeypatch.setenv("TEST_FAULT_PLAN", json.dumps({"1": {"mode": "hang", "step": 1},
                                                      "4": {"mode": "hang", "step": 1}}))
    monkeypatch.setenv("TEST_FAULT_DIR", str(tmp_path))
    monkeypatch.setenv("SBATCH_TIMELIMIT", "1")  # every client job: a 1-minute walltime
    stop, cancelled = threading.Event(), []

    def cancel_sim_1():  # what a user's scancel does
        while not stop.is_set() and not cancelled:
            if (tmp_path / "attempts.1").exists():
                out = slurm.run("squeue", "--noheader", "--format=%i|%o|%T").stdout
                for line in out.splitlines():
                    job, command, state = line.split("|")
                    if command.endswith("client.1.sh") and state == "RUNNING":
                        slurm.run("scancel", job)
                        cancelled.append(job)
            time.sleep(0.5)

    injector = threading.Thread(target=cancel_sim_1, daemon=True)
    injector.start()
    stream = io.StringIO()  # the scheduler's lines go to the launcher's console
    launcher = Launcher(load_config(study), str(study), stream=stream)
    try:
        code = launcher.run()
    finally:
        stop.set()
        injector.join(10)
    assert code == 0, (tmp_path / "out" / "logs" / "server.log").read_text()[-3000:]
    assert len(cancelled) == 1
    assert (tmp_path / "attempts.1").read_text() == "xx"  # cancelled, then rerun
    assert (tmp_path / "attempts.4").read_text() == "xx"  # TIMEOUT, then rerun
    slurm_lines = [line for line in stream.getvalue().splitlines() if "slurm:" in line]
    assert any(f"Slurm job {cancelled[0]}," in m and "CANCELLED" in m for m in slurm_lines)
    assert any("TIMEOUT" in m for m in slurm_lines), slurm_lines
    assert mod.find_study_jobs("melissa", env=slurm.env) == []
    with open_results(tmp_path / "out" / "results.h5") as r:
        values = r.parameters.values[r.parameters.folded]
        assert len(values) == runs
        y = np.stack([np.stack([field_values(v, n_cells, t) for t in range(NB_STEPS)])
                      for v in values])
        expected = {"mean": y.mean(axis=0), "variance": y.var(axis=0, ddof=1),
                    "min": y.min(axis=0), "max": y.max(axis=0)}
        for name, ref in expected.items():
            np.testing.assert_allclose(r.get("f", name), ref, rtol=1e-12, atol=1e-10,
                                       err_msg=name)
