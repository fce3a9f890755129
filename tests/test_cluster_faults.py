"""Node faults on the Slurm of network namespaces (tests/namespace_cluster.py):
each study must end with the fault-free results (the local scheduler's, to
1e-12) and nothing of it left in Slurm's queue. Every test gives the node it
breaks back (a new slurmd, links up) before the next one. All four run in
CI: with tests/test_cluster_nodes.py and tests/test_cluster_study.py they
took 6 min 57 s on 2 cores (5 Dec 2026, load about 2; the partition 119 s
of it, 133-138 s alone in 8 runs in a row).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
from conftest import child_env, kill_group, wait_for
from namespace_cluster import COMPUTE_NODES, LOGIN, address, ns_cluster  # noqa: F401
from studyutil import MELISSA, NB_STEPS
from test_cluster_study import (  # noqa: F401  (local_reference: the module fixture)
    assert_same_as_local,
    local_reference,
    sobol_study,
)

from melissa_sa.launcher.claim_rule import HEARTBEAT_PERIOD, STALE_PERIODS, read_launcher_state
from melissa_sa.launcher.slurm_commands import find_study_jobs, study_job_prefix
from melissa_sa.results import open_results

SERVER_NODE, CLIENT_NODES = COMPUTE_NODES[0], COMPUTE_NODES[1:]


def start_on(cluster, node: str, study, *args: str, **env) -> subprocess.Popen:
    log = open(study.parent / "launcher.out", "ab")
    try:
        return subprocess.Popen(
            cluster.on(node, [MELISSA, "run", str(study), "--no-progress", *args]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=study.parent,
            env=child_env(SLURM_CONF=cluster.state["conf"], **env))
    finally:
        log.close()


def finish(cluster, proc: subprocess.Popen, study, timeout: float = 400) -> str:
    try:
        proc.wait(timeout)
    finally:
        kill_group(proc)
    text = (study.parent / "launcher.out").read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:] + cluster.log_tail(10)
    return text


def running_on(cluster, study, nodes, server: bool = False, timeout: float = 120) -> str:
    """The node of one of ``nodes`` running a job of the study (the server's or a client's)."""
    prefix = study_job_prefix(study.parent / "out")

    def find():
        out = cluster.run("squeue", "--noheader", "--states=RUNNING",
                          "--format=%j %N").stdout.split("\n")
        for name, node in (line.split() for line in out if len(line.split()) == 2):
            if name.startswith(prefix + "-") and name.endswith("-server") == server \
                    and node in nodes:
                return node
        return None
    return wait_for(find, timeout, f"a job of the study running on {nodes}", interval=0.3)


def ss(node: str) -> str:
    """``ss -tni`` in ``node``'s namespace: its TCP sockets, for a failure message."""
    return subprocess.run(["nsenter", f"--net=/var/run/netns/{node}", "ss", "-tni"],
                          capture_output=True, text=True).stdout


def assert_nothing_left(cluster, study) -> None:
    prefix = study_job_prefix(study.parent / "out")
    left = find_study_jobs(prefix, env=cluster.env)
    assert left == [], f"jobs of the study left in squeue: {left}"


@pytest.fixture
def broken(ns_cluster):  # noqa: F811
    """The nodes a test breaks (append to the list); revived afterwards."""
    nodes: list[str] = []
    yield nodes
    for node in nodes:
        ns_cluster.revive(node)


def test_a_client_node_dies(ns_cluster, broken, tmp_path, local_reference):  # noqa: F811
    """Mid-study, a client node's links are cut and every process on it
    (slurmd, the job's processes) is SIGKILLed: Slurm declares the node DOWN
    (SlurmdTimeout=10) or the runs go silent; they are rerun on the other
    client node, and the results are the fault-free ones."""
    launcher = {"scheduler": "slurm",
                "scheduler_arg_server": [f"--nodelist={SERVER_NODE}", "--nodes=1"],
                "scheduler_arg_client": [f"--exclude={SERVER_NODE}"]}
    study = sobol_study(tmp_path / "c", launcher, simulation_timeout=20)
    proc = start_on(ns_cluster, LOGIN, study, TEST_STEP_DELAY="0.5")
    try:
        victim = running_on(ns_cluster, study, CLIENT_NODES)
        broken.append(victim)
        ns_cluster.kill_node(victim)
        time.sleep(1)
    finally:
        text = finish(ns_cluster, proc, study)
    log = (study.parent / "out" / "logs" / "server.log").read_text()
    assert "NODE_FAIL" in text or "was silent" in log, text[-3000:] + log[-3000:]
    assert_same_as_local(study, local_reference)
    assert_nothing_left(ns_cluster, study)


def test_the_server_node_dies(ns_cluster, broken, tmp_path, local_reference):  # noqa: F811
    """After a first checkpoint the server's node dies: Slurm declares it DOWN,
    the launcher relaunches the server on another node from the checkpoint in
    the shared output directory, listening at that node's address; the
    clients started afterwards find it, the old ones are restarted."""
    study = sobol_study(tmp_path / "s", {"scheduler": "slurm"}, checkpoint_interval=1,
                        simulation_timeout=20)
    proc = start_on(ns_cluster, LOGIN, study, TEST_STEP_DELAY="0.5")
    try:
        victim = running_on(ns_cluster, study, COMPUTE_NODES, server=True)
        manifest = study.parent / "out" / "checkpoint" / "manifest.json"
        wait_for(manifest.is_file, 300, "a first checkpoint", interval=0.5)
        broken.append(victim)
        ns_cluster.kill_node(victim)
    finally:
        text = finish(ns_cluster, proc, study)
    assert "from the checkpoint" in text and "ended NODE_FAIL" in text, text[-3000:]
    assert "server silent" not in text, text[-3000:]  # Slurm said it, not the timeout
    log = (study.parent / "out" / "logs" / "server.log").read_text()
    addresses = [line.split("connection socket tcp://")[1].split(":")[0]
                 for line in log.splitlines() if "connection socket tcp://" in line]
    assert addresses[0] == address(victim) and addresses[-1] != address(victim), addresses
    assert_same_as_local(study, local_reference)
    assert_nothing_left(ns_cluster, study)


def client_jobs(out) -> dict[str, int]:
    """``{Slurm job id: sim_id}`` of the client jobs ``OUT/launcher.json`` lists now."""
    state = read_launcher_state(out / "launcher.json") or {}
    return {c["job_id"]: c["sim_id"] for c in (state.get("slurm") or {}).get(
        "client_job_ids", [])}


def wait_until_rerun(out, sims: set[int], old_jobs: set[str], timeout: float = 240) -> None:
    """Until every one of ``sims`` has been run again to its end: a job of
    it other than ``old_jobs`` listed in ``OUT/launcher.json``, then gone."""
    started: set[int] = set()

    def rerun():
        now = {sim for job, sim in client_jobs(out).items() if sim in sims
               and job not in old_jobs}
        started.update(now)
        return started == sims and not now
    wait_for(rerun, timeout, f"simulations {sorted(sims)} run again", interval=0.2)


def data_endpoints(out) -> set[tuple[str, int]]:
    """``(address, port)`` of the server ranks' data sockets, from its log."""
    found: set[tuple[str, int]] = set()
    for line in (out / "logs" / "server.log").read_text(errors="replace").splitlines():
        if "data endpoints " in line:
            found = {(a, int(port)) for a, port in
                     re.findall(r"tcp://([0-9.]+):([0-9]+)", line.split("data endpoints ")[1])}
    return found


def streaming_runs(cluster, node: str, out, endpoints, job_limit: int) -> dict[str, int] | None:
    """``{Slurm job id: sim_id}`` of the study's client jobs running on
    ``node``, once ``job_limit`` client jobs of the study run (so that none
    starts before one of them ends) and every one of them on ``node``
    streams data (a connection established to each server rank's data
    socket: its hello was answered); None until then."""
    prefix = study_job_prefix(out)
    listed = cluster.run("squeue", "--noheader", "--states=RUNNING",
                         "--format=%i %j %N").stdout.split("\n")
    running = {f[0]: f[2] for f in (line.split() for line in listed)
               if len(f) == 3 and f[1].startswith(prefix + "-") and not f[1].endswith("-server")}
    on_node = {job for job, where in running.items() if where == node}
    links = [c for c in cluster.tcp_connections(node) if c[2:] in endpoints]
    sims = client_jobs(out)
    if len(running) < job_limit or not running.keys() <= sims.keys() or not on_node \
            or len(links) != len(endpoints) * len(on_node):
        return None
    return {job: sims[job] for job in on_node}


def unacknowledged(cluster, node: str, endpoints) -> int:
    """Bytes that ``node``'s sockets sent to the server's data sockets and
    the server's node has not acknowledged yet."""
    return sum(s[5] for s in cluster.tcp_sockets(node) if s[2:4] in endpoints)


def test_a_partition_longer_than_simulation_timeout(  # noqa: F811
        ns_cluster, broken, tmp_path, local_reference):  # noqa: F811
    """A client node cut off (its links down, its processes running) while
    the runs on it stream data (their hellos answered, their first step
    sent), for longer than ``simulation_timeout``; healed once the runs it
    held have been run again elsewhere to their end. What the old runs sent
    into the partition then arrives (TCP retransmits, within a second of the
    heal in these namespaces) and must be dropped and counted as
    ``old_attempt`` (its attempt token is no longer the run's), never folded;
    the rerun's copy of the first step, folded before the cut, is a
    ``duplicate``: the results are the fault-free ones, and every message of
    every old run is counted.

    What the old runs sent must outlive the partition, and a socket's data
    dies with its process: the kernel drops a closed socket's unsent data at
    once when the peer was found unreachable (a cut link says so) and its
    retransmission timeout is at the bound. So the first attempts of the
    first two runs pause before ``melissa_finalize`` until the test says
    (file ``healed``), and the heal reaches the server's node first: the
    victim's slurmd cannot talk to slurmctld (which kills the jobs it gave
    up on as soon as it hears from the node) until the server's node has
    acknowledged every byte the old runs sent."""
    if not ns_cluster.state.get("fast_retransmit"):
        pytest.skip("the partition test needs net.ipv4.tcp_rto_max_ms (Linux 6.15 or later): "
                    "without it TCP backs off up to 120 s and what the old runs sent into "
                    "the partition may arrive after the study's end")
    job_limit = 2
    launcher = {"scheduler": "slurm", "job_limit": job_limit,
                "scheduler_arg_server": [f"--nodelist={SERVER_NODE}", "--nodes=1"],
                "scheduler_arg_client": [f"--exclude={SERVER_NODE}"]}
    study = sobol_study(tmp_path / "p", launcher, simulation_timeout=20)
    out = study.parent / "out"
    healed = tmp_path / "healed"
    pause = {"mode": "pause", "step": NB_STEPS, "seconds": 400, "until": healed.name,
             "times": 1}
    proc = start_on(ns_cluster, LOGIN, study, TEST_STEP_DELAY="4",
                    TEST_FAULT_PLAN=json.dumps({"0": pause, "1": pause}),
                    TEST_FAULT_DIR=str(tmp_path))
    sockets = in_partition = ""
    try:
        victim = running_on(ns_cluster, study, CLIENT_NODES)
        endpoints = wait_for(lambda: data_endpoints(out), 60,
                             "the server's data endpoints in its log")
        old = wait_for(lambda: streaming_runs(ns_cluster, victim, out, endpoints, job_limit),
                       120, f"{job_limit} runs started, every one on {victim} sending data "
                       "to each server rank", interval=0.2)
        time.sleep(2)  # their first time step is through; the next one comes 4 s later
        sockets = ss(victim)  # for a failure
        broken.append(victim)
        ns_cluster.cut(victim)
        old_jobs, sims, streaming = set(old), set(old.values()), len(old)
        assert sims <= {0, 1}, (old, client_jobs(out))
        wait_until_rerun(out, sims, old_jobs)
        assert not (out / "results.h5").exists()  # the heal comes before the study's end
        in_partition = ss(victim)
        pending = unacknowledged(ns_cluster, victim, endpoints)
        assert pending > 0, ("nothing the old runs sent waits in the partition", in_partition)
        ns_cluster.hide_controller(victim)
        ns_cluster.heal(victim)
        wait_for(lambda: unacknowledged(ns_cluster, victim, endpoints) == 0, 30,
                 "the server's node to acknowledge what the old runs sent into the partition")
        ns_cluster.show_controller(victim)
    finally:
        healed.touch()  # the paused old runs may end
        text = finish(ns_cluster, proc, study)
    log = (out / "logs" / "server.log").read_text()
    assert "was silent" in log or "NODE_FAIL" in text, text[-3000:] + log[-3000:]
    assert_same_as_local(study, local_reference)
    with open_results(out / "results.h5") as r:
        dropped = json.loads(r.h5.attrs["dropped_messages"])
    # every run sends NB_STEPS messages to each of the 2 server ranks; an old
    # run's first step is folded before the cut (its rerun's copy is a
    # duplicate), and what it sent into the partition (the other steps)
    # carries its old attempt token
    why = (dropped, streaming, sims, old_jobs, sockets, in_partition, text[-2000:],
           log[-3000:])
    assert dropped.get("old_attempt", 0) == streaming * 2 * (NB_STEPS - 1), why
    assert dropped.get("duplicate", 0) == streaming * 2, why
    assert_nothing_left(ns_cluster, study)


def assert_none_cancelled(cluster, jobs, study) -> None:
    """None of ``jobs`` (``find_study_jobs`` rows) was cancelled: each is
    still queued or running, or ended by itself (a client job of the killed
    launcher may finish meanwhile; slurmctld keeps an ended job's state for
    ``MinJobAge``, 300 s)."""
    left = {j for j, _, _ in find_study_jobs(study_job_prefix(study.parent / "out"),
                                            env=cluster.env)}
    for job, name, _ in jobs:
        if job not in left:
            shown = cluster.run("scontrol", "--oneliner", "show", "job", job).stdout
            state = re.search(r"JobState=(\S+)", shown)
            assert state and state.group(1) != "CANCELLED", (job, name, shown)


def test_launcher_killed_then_resumed_on_another_node(ns_cluster, tmp_path,  # noqa: F811
                                                      local_reference):  # noqa: F811
    """The launcher's node is not special: SIGKILL the launcher's whole process
    group on the login node; ``--resume`` on a compute node is refused while
    the dead launcher's heartbeat in ``OUT/launcher.json`` is fresh (naming
    its host, pid and the heartbeat's age), and takes the study over once it
    is older than the staleness bound: it cancels the jobs the first one left
    (found by their names) and finishes the study from the checkpoint."""
    study = sobol_study(tmp_path / "r", {"scheduler": "slurm"}, checkpoint_interval=1)
    proc = start_on(ns_cluster, LOGIN, study, TEST_STEP_DELAY="0.3")
    try:
        manifest = study.parent / "out" / "checkpoint" / "manifest.json"
        wait_for(manifest.is_file, 300, "a first checkpoint", interval=0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    killed_at = time.time()
    orphans = find_study_jobs(study_job_prefix(study.parent / "out"), env=ns_cluster.env)
    assert any(name.endswith("-server") for _, name, _ in orphans), orphans
    state = read_launcher_state(study.parent / "out" / "launcher.json")
    assert state["state"] == "running" and state["host"] == LOGIN, state
    pid, beat = state["launcher"]["pid"], state["heartbeat"]
    assert pid == proc.pid and killed_at - beat <= HEARTBEAT_PERIOD + 2, (killed_at, beat)
    bound = STALE_PERIODS * HEARTBEAT_PERIOD
    # another host cannot check the first launcher's pid: its heartbeat is fresh
    refused = subprocess.run(
        ns_cluster.on(COMPUTE_NODES[2], [MELISSA, "run", str(study), "--no-progress",
                                         "--resume"]),
        capture_output=True, text=True, timeout=120, cwd=study.parent,
        env=child_env(SLURM_CONF=ns_cluster.state["conf"]))
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0, said
    assert f"a launcher (pid {pid}) on host {LOGIN} is running this study" in said, said
    assert f"presumed gone after {bound:.0f} s" in said, said
    assert read_launcher_state(study.parent / "out" / "launcher.json") == state  # untouched
    assert_none_cancelled(ns_cluster, orphans, study)
    time.sleep(max(0.0, beat + bound + 1 - time.time()))
    (study.parent / "launcher.out").write_text("")
    resumed = start_on(ns_cluster, COMPUTE_NODES[2], study, "--resume")
    text = finish(ns_cluster, resumed, study)
    assert f"on host {LOGIN} runs this study, but its heartbeat is" in text, text[-3000:]
    assert "taking the study over" in text and "left by a previous launcher" in text, \
        text[-3000:]
    assert "from the checkpoint" in text, text[-3000:]
    final = read_launcher_state(study.parent / "out" / "launcher.json")
    assert final["state"] == "finished" and final["host"] == COMPUTE_NODES[2], final
    assert not list((study.parent / "out").glob("launcher.takeover.*"))  # removed at the end
    assert_same_as_local(study, local_reference)  # every group folded once (results_of)
    assert_nothing_left(ns_cluster, study)
