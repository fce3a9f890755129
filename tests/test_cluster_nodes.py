"""Studies across the nodes of a Slurm made of network namespaces
(tests/namespace_cluster.py): the launcher on the login node, the server on
``msa-n1``, the clients on ``msa-n2`` and ``msa-n3``, data over the
namespaces' network. Results must equal the local scheduler's to 1e-12.
Needs root, iproute2, util-linux and Debian's slurm-wlm and munge; skips
naming what is missing.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import child_env, kill_group
from namespace_cluster import COMPUTE_NODES, LOGIN, address, ns_cluster  # noqa: F401
from studyutil import MELISSA
from test_cluster_study import (  # noqa: F401  (local_reference: the module fixture)
    assert_same_as_local,
    local_reference,
    sobol_study,
)

from melissa_sa.launcher.slurm_commands import study_job_prefix

SERVER_NODE, CLIENT_NODES = COMPUTE_NODES[0], COMPUTE_NODES[1:]


def test_each_node_has_its_name_and_addresses(ns_cluster):  # noqa: F811
    out = ns_cluster.run("srun", f"--nodes={len(COMPUTE_NODES)}",
                         f"--ntasks={len(COMPUTE_NODES)}", "sh", "-c",
                         "echo $(hostname) $(hostname -i)", timeout=60)
    assert out.returncode == 0, out.stderr
    seen = dict(line.split() for line in out.stdout.splitlines())
    assert seen == {n: address(n) for n in COMPUTE_NODES}
    assert set(ns_cluster.node_states()) == set(COMPUTE_NODES)


class PeerWatch:
    """Samples the established TCP connections on the server's node."""

    def __init__(self, cluster, node: str) -> None:
        self.cluster, self.node = cluster, node
        self.peers: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peers |= self.cluster.tcp_peers(self.node)

    def stop(self) -> set[tuple[str, str]]:
        self._stop.set()
        self._thread.join(5)
        return self.peers


def study_nodes(cluster, study: Path) -> dict[str, str]:
    """``{job name: node}`` of the study's jobs Slurm still remembers (MinJobAge)."""
    prefix = study_job_prefix(study.parent / "out")
    out = cluster.run("squeue", "--noheader", "--states=all", "--format=%j %N")
    return {name: node for name, node in (line.split() for line in out.stdout.splitlines()
                                          if len(line.split()) == 2)
            if name.startswith(prefix)}


def run_on_login(cluster, argv: list[str], cwd: Path, timeout: float = 400,
                 **env) -> str:  # noqa: F811
    proc = subprocess.Popen(cluster.on(LOGIN, argv), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd,
                            env=child_env(SLURM_CONF=cluster.state["conf"], **env))
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:] + cluster.log_tail(10)
    return text


def assert_across_nodes(cluster, study: Path, peers: set[tuple[str, str]],
                        interface: str = "eth0") -> None:
    server = address(SERVER_NODE, interface)
    client = (study.parent / "out" / "client_scripts" / "client.0.sh").read_text()
    assert f"MELISSA_SERVER_ADDRESS=tcp://{server}:" in client, client
    from_clients = {remote for local, remote in peers if local == server}
    assert from_clients & {address(n, interface) for n in CLIENT_NODES}, peers
    assert not any(local.startswith("127.") and remote != local for local, remote in peers
                   if remote in {address(n) for n in CLIENT_NODES}), peers


@pytest.mark.parametrize("mode", ["slurm", "slurm-allocation"])
def test_study_across_nodes_equals_local(ns_cluster, tmp_path, local_reference,  # noqa: F811
                                         mode):
    """Server on msa-n1 (``bind`` unset: its node's address), clients on the
    other nodes, connected through the namespaces' network."""
    launcher = {"scheduler": mode,
                "scheduler_arg_server": [f"--nodelist={SERVER_NODE}", "--nodes=1"],
                "scheduler_arg_client": [f"--exclude={SERVER_NODE}"]}
    study = sobol_study(tmp_path / "s", launcher)
    argv = [MELISSA, "run", str(study), "--no-progress"]
    if mode == "slurm-allocation":
        prefix = study_job_prefix(study.parent / "out")
        argv = ["salloc", f"--nodes={len(COMPUTE_NODES)}", "--ntasks-per-node=4",
                f"--job-name={prefix}", *argv]
    watch = PeerWatch(ns_cluster, SERVER_NODE)
    try:
        run_on_login(ns_cluster, argv, study.parent, TEST_STEP_DELAY="0.1")
    finally:
        peers = watch.stop()
    assert_same_as_local(study, local_reference)
    assert_across_nodes(ns_cluster, study, peers)
    if mode == "slurm":
        nodes = study_nodes(ns_cluster, study)
        servers = {node for name, node in nodes.items() if name.endswith("-server")}
        clients = {node for name, node in nodes.items() if not name.endswith("-server")}
        assert servers == {SERVER_NODE} and clients <= set(CLIENT_NODES), nodes


# ---------------------------------------------------------------------------
# server_config.interface: the data network


def test_interface_address_names_the_node_and_its_interfaces():
    import socket

    from melissa_sa.hosts import HostAddressError, interface_address

    assert interface_address("lo") == "127.0.0.1"
    with pytest.raises(HostAddressError) as err:
        interface_address("msa-none0")
    message = str(err.value)
    assert "server_config.interface 'msa-none0'" in message
    assert f"on node {socket.gethostname()}" in message and "lo (127.0.0.1)" in message


def test_interface_config_binds_node_and_conflicts_with_an_address(tmp_path):
    from melissa_sa.config.checks import ConfigError
    from melissa_sa.config.loader import load_config

    study = sobol_study(tmp_path / "i", {"scheduler": "local"})
    config = json.loads(study.read_text())
    config["server_config"]["interface"] = "ib0"
    study.write_text(json.dumps(config))
    assert load_config(study).server_config.bind == "node"
    assert load_config(study).server_config.interface == "ib0"
    config["server_config"]["bind"] = "*"
    study.write_text(json.dumps(config))
    assert load_config(study).server_config.bind == "*"
    config["server_config"]["bind"] = "10.1.2.3"
    study.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"server_config\.interface: 'ib0' picks the address "
                                          r"to bind; server_config\.bind '10\.1\.2\.3'"):
        load_config(study)


def test_study_over_the_fabric_interface(ns_cluster, tmp_path, local_reference):  # noqa: F811
    """``interface: "ib0"``: the server binds its node's second interface and the
    clients reach it through the second bridge."""
    launcher = {"scheduler": "slurm",
                "scheduler_arg_server": [f"--nodelist={SERVER_NODE}", "--nodes=1"],
                "scheduler_arg_client": [f"--exclude={SERVER_NODE}"]}
    study = sobol_study(tmp_path / "ib", launcher)
    config = json.loads(study.read_text())
    config["server_config"]["interface"] = "ib0"
    study.write_text(json.dumps(config))
    watch = PeerWatch(ns_cluster, SERVER_NODE)
    try:
        run_on_login(ns_cluster, [MELISSA, "run", str(study), "--no-progress"], study.parent,
                     TEST_STEP_DELAY="0.1")
    finally:
        peers = watch.stop()
    assert_same_as_local(study, local_reference)
    assert_across_nodes(ns_cluster, study, peers, interface="ib0")


def test_missing_interface_is_an_error_naming_the_node(ns_cluster, tmp_path):  # noqa: F811
    launcher = {"scheduler": "slurm", "max_server_restarts": 0,
                "scheduler_arg_server": [f"--nodelist={SERVER_NODE}", "--nodes=1"]}
    study = sobol_study(tmp_path / "no", launcher)
    config = json.loads(study.read_text())
    config["server_config"]["interface"] = "ib7"
    study.write_text(json.dumps(config))
    proc = subprocess.run(ns_cluster.on(LOGIN, [MELISSA, "run", str(study), "--no-progress"]),
                          capture_output=True, text=True, timeout=300, cwd=study.parent,
                          env=child_env(SLURM_CONF=ns_cluster.state["conf"]))
    assert proc.returncode != 0
    log = (study.parent / "out" / "logs" / "server.log").read_text()
    assert (f"server_config.interface 'ib7': on node {SERVER_NODE} that interface does not "
            f"exist; the node's interfaces: eth0 ({address(SERVER_NODE)}), ib0 "
            f"({address(SERVER_NODE, 'ib0')}), lo (127.0.0.1)") in log, log[-3000:]


# ---------------------------------------------------------------------------
# server ranks on two nodes


@pytest.mark.parametrize("mode", ["slurm", "slurm-allocation"])
def test_server_ranks_on_two_nodes(ns_cluster, tmp_path, local_reference, mode):  # noqa: F811
    """``server_processes: 2``, one rank per node: one communicator (the
    default launch of each mode), each rank's data endpoint on its own node."""
    server_nodes = COMPUTE_NODES[:2]
    launcher = {"scheduler": mode,
                "scheduler_arg_server": [f"--nodelist={','.join(server_nodes)}", "--nodes=2",
                                         "--ntasks-per-node=1"],
                "scheduler_arg_client": [f"--nodelist={COMPUTE_NODES[2]}"]}
    study = sobol_study(tmp_path / "two", launcher)
    argv = [MELISSA, "run", str(study), "--no-progress"]
    if mode == "slurm-allocation":
        prefix = study_job_prefix(study.parent / "out")
        argv = ["salloc", f"--nodes={len(COMPUTE_NODES)}", "--ntasks-per-node=4",
                f"--job-name={prefix}", *argv]
    run_on_login(ns_cluster, argv, study.parent)
    assert_same_as_local(study, local_reference)
    log = (study.parent / "out" / "logs" / "server.log").read_text()
    endpoints = log.split("data endpoints ", 1)[1].splitlines()[0].split(", ")
    assert [e.rsplit(":", 1)[0] for e in endpoints] == [
        f"tcp://{address(n)}" for n in server_nodes], endpoints
