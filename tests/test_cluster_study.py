"""Whole studies through ``melissa-sa run`` on a real (one-node) Slurm, and the
study secret against an intruder.

Every Slurm study here is a Sobol' study with 2 server ranks whose results
must equal the local scheduler's on the same design to 1e-12; faults (a client
job or the server job cancelled with scancel, the launcher SIGKILLed then
``--resume``) must not change them, and nothing of the study may be left in
``squeue`` afterwards. The tests that start Slurm skip, saying what is
missing, where Slurm cannot be started (tests/slurm_cluster.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import child_env, free_port, kill_group, wait_for, write_study
from slurm_cluster import slurm  # noqa: F401  (the session fixture)
from studyutil import MELISSA, NB_STEPS, copy_client, offline, run_study

from melissa_sa.launcher.slurm_commands import find_study_jobs, study_job_prefix
from melissa_sa.protocol import ClientHello, encode_hello
from melissa_sa.results import open_results

N_CELLS, P, GROUPS = 11, 2, 3
STATS = ("mean", "variance", "skewness", "kurtosis", "min", "max", "threshold_exceedance",
         "quantiles", "sobol_first", "sobol_total")


def sobol_study(directory: Path, launcher: dict, *, client_processes: int = 1,
                checkpoint_interval: int = 100, partition: str | None = None,
                **study_options) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    copy_client(directory)
    part = [f"--partition={partition}"] if partition else []
    if launcher.get("scheduler", "local") != "local":
        launcher = {"scheduler_arg_client": part, "scheduler_arg_server": part, **launcher}
    return write_study(
        directory,
        study_options={"field_names": ["f"], "nb_parameters": P,
                       "parameter_sweep_size": GROUPS, "nb_time_steps": NB_STEPS,
                       "l_bounds": [-3.0, -1.0], "u_bounds": [3.0, 2.0], "seed": 7,
                       **study_options},
        sa_config={"mean": True, "variance": True, "skewness": True, "kurtosis": True,
                   "min": True, "max": True, "threshold_exceedance": [5.0],
                   "quantiles": [0.25, 0.5], "sobol_indices": True,
                   "checkpoint_interval": checkpoint_interval},
        server_config={"server_processes": 2},
        launcher_config={"job_limit": 4, "server_timeout": 120, **launcher},
        client_config={"executable_command": "python analytic_client.py --split 3,8",
                       "client_processes": client_processes},
    )


def results_of(study: Path) -> tuple[np.ndarray, dict, dict]:
    with open_results(study.parent / "out" / "results.h5") as r:
        values = r.parameters.values[r.parameters.folded]
        order = np.lexsort(values.T[::-1])
        stats = {name: r.get("f", name) for name in STATS}
        ref, n_groups = offline(r, N_CELLS, P)
        assert n_groups == GROUPS
        for name, expected in ref.items():
            np.testing.assert_allclose(stats[name], expected, rtol=1e-10, atol=1e-10,
                                       err_msg=name)
        attrs = dict(r.h5.attrs)
    return values[order], stats, attrs


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    """The study with the local scheduler: the numbers every Slurm run must give."""
    study = sobol_study(tmp_path_factory.mktemp("local"), {"scheduler": "local"})
    done = run_study(study, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    design, stats, _ = results_of(study)
    return design, stats


def assert_same_as_local(study: Path, local_reference) -> None:
    design, stats, _ = results_of(study)
    ref_design, ref_stats = local_reference
    np.testing.assert_array_equal(design, ref_design)
    for name, ref in ref_stats.items():
        np.testing.assert_allclose(stats[name], ref, rtol=0, atol=1e-12, err_msg=name)


def assert_nothing_left(study: Path, slurm) -> None:  # noqa: F811
    prefix = study_job_prefix(study.parent / "out")
    left = find_study_jobs(prefix, env=slurm.env)
    if left:
        slurm.run("scancel", *[job for job, _, _ in left])
    assert left == [], f"jobs of the study left in squeue: {left}"


def slurm_env(slurm) -> dict:  # noqa: F811
    """The children's environment: the cluster's ``SLURM_CONF`` when the
    fixture started one, else the caller's own (an empty ``SLURM_CONF``
    would hide the running Slurm's configuration)."""
    conf = slurm.env.get("SLURM_CONF")
    return child_env(**({"SLURM_CONF": conf} if conf else {}))


def test_slurm_env_keeps_a_running_slurms_configuration(monkeypatch):
    from slurm_cluster import SlurmCluster
    monkeypatch.delenv("SLURM_CONF", raising=False)
    assert "SLURM_CONF" not in slurm_env(SlurmCluster({}, started=False))
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/site.conf")
    assert slurm_env(SlurmCluster({}, started=False))["SLURM_CONF"] == "/etc/slurm/site.conf"
    started = SlurmCluster({"SLURM_CONF": "/tmp/x/slurm.conf"}, started=True)
    assert slurm_env(started)["SLURM_CONF"] == "/tmp/x/slurm.conf"


def study_jobs(study: Path, slurm) -> list[tuple[str, str, str]]:  # noqa: F811
    return find_study_jobs(study_job_prefix(study.parent / "out"), env=slurm.env)


# ---------------------------------------------------------------------------
# fault-free


def test_slurm_study_equals_local(slurm, tmp_path, local_reference):  # noqa: F811
    """Server = one batch job of 2 tasks (mpiexec inside the job), every client a
    batch job; bound on the node's address, authenticated."""
    study = sobol_study(tmp_path / "s", {"scheduler": "slurm"}, partition=slurm.partition)
    done = run_study(study, timeout=400, env=slurm_env(slurm))
    assert done.returncode == 0, done.stdout[-3000:]
    out = study.parent / "out"
    assert_same_as_local(study, local_reference)
    assert_nothing_left(study, slurm)
    state = json.loads((out / "launcher.json").read_text())
    assert state["slurm"]["job_prefix"] == study_job_prefix(out)
    assert state["slurm"]["server_job_id"].isdigit()
    script = (out / "server.sh").read_text()
    assert "mpiexec -n 2 " in script and "melissa_sa.server.main" in script
    client = (out / "client_scripts" / "client.0.sh").read_text()
    assert f"MELISSA_SECRET_FILE={out / 'secret'}" in client
    assert "127.0.0.1" not in client and "0.0.0.0" not in client
    assert (out / "secret").stat().st_mode & 0o777 == 0o600


def test_slurm_allocation_study_equals_local(slurm, tmp_path, local_reference):  # noqa: F811
    """The launcher inside ``salloc``; the server and the clients (2 ranks
    each, started by the step, no mpiexec in the script) as job steps."""
    study = sobol_study(tmp_path / "a", {"scheduler": "slurm-allocation"},
                        client_processes=2)
    part = [f"--partition={slurm.partition}"] if slurm.partition else []
    cmd = ["salloc", "--ntasks=8", *part, f"--job-name={study_job_prefix(tmp_path / 'a/out')}",
           MELISSA, "run", str(study), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=slurm_env(slurm), start_new_session=True, cwd=study.parent)
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        kill_group(proc)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert_same_as_local(study, local_reference)
    client = (study.parent / "out" / "client_scripts" / "client.0.sh").read_text()
    assert "mpiexec" not in client
    assert_nothing_left(study, slurm)


# ---------------------------------------------------------------------------
# faults


def start_launcher(study: Path, slurm, *args) -> subprocess.Popen:  # noqa: F811
    log = open(study.parent / "launcher.out", "ab")
    try:
        return subprocess.Popen([MELISSA, "run", str(study), "--no-progress", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=slurm_env(slurm),
                                start_new_session=True, cwd=study.parent)
    finally:
        log.close()


def finish(proc: subprocess.Popen, study: Path, timeout: float = 400) -> str:
    try:
        proc.wait(timeout)
    finally:
        kill_group(proc)
    text = (study.parent / "launcher.out").read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text


def running_job(study: Path, slurm, suffix: str, timeout: float = 120) -> str:  # noqa: F811
    """The Slurm id of the study's job ``<prefix>-<suffix>`` once RUNNING."""
    def find():
        for job, name, state in study_jobs(study, slurm):
            if name.endswith("-" + suffix) and state == "RUNNING":
                return job
        return None
    return wait_for(find, timeout, f"job {suffix} of the study running", interval=0.3)


@pytest.mark.slow
def test_scancel_of_a_client_job_and_of_the_server_job(slurm, tmp_path,  # noqa: F811
                                                       local_reference):
    """A client job scancel'ed (rerun), then the server job scancel'ed
    (relaunched from its checkpoint): the results are the fault-free ones."""
    study = sobol_study(tmp_path / "f", {"scheduler": "slurm", "fault_tolerance": True},
                        checkpoint_interval=1, partition=slurm.partition)
    env_delay = {"TEST_STEP_DELAY": "0.3"}
    os.environ.update(env_delay)
    try:
        proc = start_launcher(study, slurm)
    finally:
        os.environ.pop("TEST_STEP_DELAY")
    slurm.run("scancel", running_job(study, slurm, "1"))
    manifest = study.parent / "out" / "checkpoint" / "manifest.json"
    wait_for(manifest.is_file, 300, "a first checkpoint", interval=0.5)
    slurm.run("scancel", running_job(study, slurm, "server"))
    text = finish(proc, study)
    assert "CANCELLED" in text and "from the checkpoint" in text, text[-3000:]
    assert_same_as_local(study, local_reference)
    assert_nothing_left(study, slurm)


@pytest.mark.slow
def test_launcher_killed_then_resume(slurm, tmp_path, local_reference):  # noqa: F811
    """SIGKILL the launcher: its server and client jobs stay in Slurm; the
    ``--resume`` launcher cancels them (orphans) and finishes the study."""
    study = sobol_study(tmp_path / "r", {"scheduler": "slurm"}, checkpoint_interval=1,
                        partition=slurm.partition)
    os.environ["TEST_STEP_DELAY"] = "0.3"
    try:
        proc = start_launcher(study, slurm)
    finally:
        os.environ.pop("TEST_STEP_DELAY")
    manifest = study.parent / "out" / "checkpoint" / "manifest.json"
    wait_for(manifest.is_file, 300, "a first checkpoint", interval=0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    orphans = study_jobs(study, slurm)
    assert any(name.endswith("-server") for _, name, _ in orphans), orphans
    resumed = start_launcher(study, slurm, "--resume")
    text = finish(resumed, study)
    assert "left by a previous launcher" in text, text[-3000:]
    for job, _, _ in orphans:  # the orphans were cancelled, not waited for
        assert job not in {j for j, _, _ in study_jobs(study, slurm)}
    assert_same_as_local(study, local_reference)
    assert_nothing_left(study, slurm)


# ---------------------------------------------------------------------------
# a peer without the secret (no Slurm needed)


def test_peer_without_the_secret_is_refused_and_counted(tmp_path, local_reference):
    """During a local study (authenticated: the launcher creates OUT/secret),
    an intruder sends a hello and data without the secret, and with a wrong
    one: refused and counted in results.h5, the results exact."""
    data_port = free_port()
    study = sobol_study(tmp_path / "p", {"scheduler": "local"})
    config = json.loads(study.read_text())
    config["server_config"]["data_puller_port"] = data_port
    study.write_text(json.dumps(config))
    scripts = study.parent / "out" / "client_scripts"
    stop = threading.Event()
    sent = []

    def intrude():
        wait_for(lambda: scripts.is_dir() and any(scripts.glob("client.*.sh")), 120,
                 "a client script")
        text = next(scripts.glob("client.*.sh")).read_text()
        address = text.split("MELISSA_SERVER_ADDRESS=")[1].split()[0]
        ctx = zmq.Context()
        socks = []
        for password in (None, b"not-the-secret"):
            req = ctx.socket(zmq.REQ)
            pushes = [ctx.socket(zmq.PUSH) for _ in range(2)]
            for sock in (req, *pushes):
                sock.linger = 0
                if password is not None:
                    sock.plain_username, sock.plain_password = b"melissa-sa", password
            req.connect(address)
            req.send(encode_hello(ClientHello(0, "f", N_CELLS)))
            for rank, push in enumerate(pushes):
                push.connect(f"tcp://127.0.0.1:{data_port + rank}")
                try:
                    push.send(b"\x00" * 64, zmq.NOBLOCK)
                except zmq.Again:
                    pass  # no connection accepted: nothing can be queued
            socks += [req, *pushes]
            sent.append(address)
        stop.wait(5)
        for sock in socks:
            sock.close(0)
        ctx.term()

    thread = threading.Thread(target=intrude, daemon=True)
    thread.start()
    os.environ["TEST_STEP_DELAY"] = "0.2"
    try:
        done = run_study(study, timeout=300)
    finally:
        os.environ.pop("TEST_STEP_DELAY")
        stop.set()
        thread.join(10)
    assert done.returncode == 0, done.stdout[-3000:]
    assert len(sent) == 2
    with open_results(study.parent / "out" / "results.h5") as r:
        attrs = r.h5.attrs
        refused = int(attrs["refused_peers"])
        dropped = json.loads(attrs["dropped_messages"])
    assert refused >= 2, refused  # each intruder is refused at every (re)connection
    assert dropped == {}, dropped  # nothing of the intruder reached the server's code
    assert_same_as_local(study, local_reference)
    assert "refused a peer" in (study.parent / "out" / "logs" / "server.log").read_text()


# ---------------------------------------------------------------------------
# a hanging group member (what a walltime looks like before it strikes)


def test_siblings_of_a_hanging_member_are_not_rerun(tmp_path, local_reference):
    """Sim 1 hangs before its step 1; its siblings (sims 0, 2, 3) send every
    step and exit: their data waits in the group assembler for sim 1. They
    have completed: only sim 1 is killed (simulation_timeout) and rerun,
    even though completion_grace (10 s) passes first."""
    study = sobol_study(tmp_path / "h", {"scheduler": "local"}, simulation_timeout=15)
    plan = {"1": {"mode": "hang", "step": 1}}
    plan.update({str(s): {"mode": "exit", "step": 10 ** 6, "times": 0} for s in (0, 2, 3)})
    env = child_env(TEST_FAULT_PLAN=json.dumps(plan), TEST_FAULT_DIR=str(tmp_path))
    done = run_study(study, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:]
    attempts = {s: (tmp_path / f"attempts.{s}").read_text() for s in range(4)}
    assert attempts == {0: "x", 1: "xx", 2: "x", 3: "x"}, attempts
    log = (study.parent / "out" / "logs" / "server.log").read_text()
    assert "exited before sending all its time steps" not in log
    assert "simulation 1 was silent" in log
    assert_same_as_local(study, local_reference)


# ---------------------------------------------------------------------------
# the launcher's control link (no Slurm needed)


def test_launcher_link_accepts_only_the_study_secret():
    import io

    from melissa_sa.launcher.progress import Console
    from melissa_sa.launcher.server_link import ServerLink
    from melissa_sa.messages import Ping, encode

    stream = io.StringIO()
    link = ServerLink(Console(stream))
    address = link.bind("127.0.0.1", "s3cret")
    ctx = zmq.Context()
    try:
        intruder, server = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        intruder.linger = server.linger = 0
        intruder.plain_username, intruder.plain_password = b"melissa-sa", b"wrong"
        server.plain_username, server.plain_password = b"melissa-sa", b"s3cret"
        intruder.connect(address)
        # queued, never delivered; once the handshake failed the DEALER may
        # have no pipe left, and a blocking send would then wait for ever
        try:
            intruder.send(encode(Ping()), zmq.NOBLOCK)
        except zmq.Again:
            pass
        got = []
        deadline = time.monotonic() + 10
        while link.refused < 1 and time.monotonic() < deadline:
            got += link.receive(0.1)
        assert got == [] and link.refused >= 1 and not link.connected
        server.connect(address)
        server.send(encode(Ping()))
        got = wait_for(lambda: link.receive(0.1), 10, "the server's ping")
        assert got == [Ping()] and link.connected
        assert "refused a peer" in stream.getvalue()
    finally:
        ctx.destroy(0)
        link.close()


# ---------------------------------------------------------------------------
# Ctrl-C on Slurm


def test_ctrl_c_cancels_every_job_of_the_study_and_no_other(slurm, tmp_path):  # noqa: F811
    part = [f"--partition={slurm.partition}"] if slurm.partition else []
    other = slurm.run("sbatch", "--parsable", *part, "--job-name=not-melissa",
                      f"--output={tmp_path}/other.log", "--wrap=sleep 120").stdout.strip()
    try:
        study = sobol_study(tmp_path / "c", {"scheduler": "slurm"}, partition=slurm.partition)
        os.environ["TEST_STEP_DELAY"] = "2"
        try:
            proc = start_launcher(study, slurm)
        finally:
            os.environ.pop("TEST_STEP_DELAY")
        running_job(study, slurm, "server")
        running_job(study, slurm, "0")
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(120)
        finally:
            kill_group(proc)
        text = (study.parent / "launcher.out").read_text(errors="replace")
        assert proc.returncode == 130, text[-3000:]
        assert study_jobs(study, slurm) == [], text[-3000:]
        state = slurm.run("squeue", "--noheader", f"--jobs={other}", "--format=%T").stdout
        assert state.strip() in ("RUNNING", "PENDING"), state
    finally:
        slurm.run("scancel", other)
