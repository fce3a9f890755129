"""Node faults on the Slurm of network namespaces (tests/namespace_cluster.py):
each study must end with the fault-free results (the local scheduler's, to
1e-12) and nothing of it left in Slurm's queue. Every test gives the node it
breaks back (a new slurmd, links up) before the next one.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from conftest import child_env, kill_group, wait_for
from namespace_cluster import COMPUTE_NODES, LOGIN, address, ns_cluster  # noqa: F401
from studyutil import MELISSA
from test_cluster_study import (  # noqa: F401  (local_reference: the module fixture)
    assert_same_as_local,
    local_reference,
    sobol_study,
)

from melissa_sa.launcher.slurm_commands import find_study_jobs, study_job_prefix

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
