"""A multi-node Slurm on one machine: each node a network namespace.

``python tests/namespace_cluster.py up`` starts it (as root), ``... down``
stops it, ``... status`` says what runs; the pytest fixture
:func:`ns_cluster` starts it for a test session and tears it down at the end,
also when a test fails.

What it makes, every name prefixed ``msa-`` and nothing else touched:

* a bridge ``msa-br0`` (10.213.7.1/24, the controller's address) and a second
  one, ``msa-br1`` (10.213.8.1/24), standing for a fast fabric;
* per node a network namespace ``msa-<node>`` with two veth links:
  ``eth0`` on the first bridge (10.213.7.x) and ``ib0`` on the second
  (10.213.8.x), and routes to the machine's own addresses (so that a
  launcher in the root namespace is reachable, as from a login node) and to
  nothing else (no default route);
* an ``/etc/hosts`` line per node (ending ``# msa-cluster``), so that each
  node's host name resolves to its ``eth0`` address, as on a real cluster;
* ``munged`` on a private socket (the system key), ``slurmctld`` in the root
  network namespace under the host name ``msa-ctl`` (a UTS namespace of its
  own) on a free port, and per compute node one ``slurmd -N <node>``
  started in its namespace with ``nsenter --net=... unshare --uts`` (its own
  host name; ``ip netns exec`` remounts /sys and slurmd then fails on
  cgroups), with ``%n`` spool, pid and log files. Job steps run in their
  node's namespace. The file system is shared, as a cluster's is.

The node ``msa-login`` is no compute node: it is where a test runs the
launcher (:meth:`NamespaceCluster.on`), like a cluster's login node. Its
state (pids, names) is kept in ``STATE_DIR/state.json``; ``up`` on a
running cluster reuses it, ``down`` stops by pid and deletes by name only
what that file and the prefix say this module made.

The names, subnets and ``/etc/hosts`` lines are the machine's, so one
cluster at a time: a test session (and ``up`` / ``down``) holds an
exclusive lock on ``STATE_DIR/lock`` (:mod:`cluster_lock`) while it
uses the cluster; a second session on the same machine skips its cluster
tests, naming the pid that holds it, instead of tearing down the other's
cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_lock import ClusterBusyError, cluster_lock  # noqa: E402
from conftest import free_port  # noqa: E402
from slurm_cluster import (  # noqa: E402
    SLURM_POLICY,
    UnavailableError,
    check_can_start,
    daemon_path,
    run_command,
    start_munged,
    wait_until,
)

__all__ = ["NamespaceCluster", "cluster_up", "cluster_down", "ns_cluster", "COMPUTE_NODES"]

PREFIX = "msa-"
STATE_DIR = Path("/tmp/msa-cluster")
HOSTS = Path("/etc/hosts")
HOSTS_MARK = "# msa-cluster"
CONTROLLER = "msa-ctl"
LOGIN = "msa-login"
COMPUTE_NODES = ("msa-n1", "msa-n2", "msa-n3")
NETS = {"eth0": ("msa-br0", "10.213.7"), "ib0": ("msa-br1", "10.213.8")}
HOST_NUMBER = {LOGIN: 10, "msa-n1": 11, "msa-n2": 12, "msa-n3": 13}
PARTITION = "nodes"
TCP_ESTABLISHED = 1  # the state of an established socket in /proc/net/tcp


def address(node: str, interface: str = "eth0") -> str:
    return f"{NETS[interface][1]}.{HOST_NUMBER[node]}"


def netns_path(node: str) -> str:
    return f"/var/run/netns/{node}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = run_command(["ip", *args])
    if check and res.returncode != 0:
        raise UnavailableError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class NamespaceCluster:
    """The running cluster, as recorded in its state file."""

    def __init__(self, state: dict) -> None:
        self.state = state
        self.workdir = Path(state["workdir"])
        self.env = {**os.environ, "SLURM_CONF": state["conf"]}
        self.nodes = COMPUTE_NODES
        self.partition = PARTITION
        self.started = True  # False: it ran already (``up``), and stays up
        self.admin = True

    def run(self, *cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return run_command(list(cmd), env=self.env, timeout=timeout)

    def on(self, node: str, argv: list[str]) -> list[str]:
        """``argv`` run in ``node``'s network namespace under its host name."""
        return ["nsenter", f"--net={netns_path(node)}", "unshare", "--uts", "sh", "-c",
                f'hostname {node}; exec "$@"', "sh", *argv]

    def node_states(self) -> dict[str, str]:
        out = self.run("sinfo", "--noheader", "-N", "-o", "%N %T", timeout=15)
        pairs = (line.split() for line in out.stdout.splitlines() if line.strip())
        return {p[0]: p[1].rstrip("*~#") for p in pairs if len(p) == 2}

    def node_pids(self, node: str) -> list[int]:
        """Every process in ``node``'s network namespace (all started by this cluster)."""
        out = run_command(["ip", "netns", "pids", node]).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def tcp_sockets(self, node: str) -> list[tuple[str, int, str, int, int, int]]:
        """``(local address, port, remote address, port, state, unacknowledged
        bytes)`` of every IPv4 TCP socket in ``node``'s namespace (read from
        its slurmd's ``/proc/<pid>/net/tcp``; state 1 is established; the
        last field is the kernel's ``tx_queue``: bytes sent and not yet
        acknowledged by the peer)."""
        try:
            lines = Path(f"/proc/{self.state['pids'][node]}/net/tcp").read_text().splitlines()
        except OSError:
            return []

        def end(field: str) -> tuple[str, int]:
            addr, port = field.split(":")
            return ".".join(str(b) for b in reversed(bytes.fromhex(addr))), int(port, 16)

        return [(*end(f[1]), *end(f[2]), int(f[3], 16), int(f[4].split(":")[0], 16))
                for f in (line.split() for line in lines[1:]) if len(f) > 4]

    def tcp_connections(self, node: str) -> list[tuple[str, int, str, int]]:
        """``(local address, port, remote address, port)`` of the established
        TCP connections in ``node``'s namespace."""
        return [s[:4] for s in self.tcp_sockets(node) if s[4] == TCP_ESTABLISHED]

    def tcp_peers(self, node: str) -> set[tuple[str, str]]:
        """``(local, remote)`` IPv4 addresses of the established TCP connections
        in ``node``'s namespace."""
        return {(local, remote) for local, _, remote, _ in self.tcp_connections(node)}

    def kill_node(self, node: str) -> None:
        """The node dies: its link cut, its slurmd and every process on it SIGKILLed."""
        for interface in NETS:
            _ip("link", "set", f"{node}-{interface}", "down", check=False)
        for pid in self.node_pids(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def cut(self, node: str) -> None:
        """A partition: the node's links down, its processes left running."""
        for interface in NETS:
            _ip("link", "set", f"{node}-{interface}", "down")

    def heal(self, node: str) -> None:
        for interface in NETS:
            _ip("link", "set", f"{node}-{interface}", "up")

    def hide_controller(self, node: str) -> None:
        """``node`` cannot talk to slurmctld (blackhole routes to the
        controller's addresses in its namespace), whatever its links: a
        partition can then heal for the other nodes first, before Slurm
        hears from ``node`` again (and kills there the jobs it gave up)."""
        for _, net in NETS.values():
            _ip("-n", node, "route", "replace", "blackhole", f"{net}.1/32")

    def show_controller(self, node: str) -> None:
        """Undo :meth:`hide_controller` (nothing to do if it was not hidden)."""
        for _, net in NETS.values():
            _ip("-n", node, "route", "del", "blackhole", f"{net}.1/32", check=False)

    def revive(self, node: str, timeout: float = 60.0) -> None:
        """Links up, the controller reachable, a new slurmd on ``node`` if its
        own died, wait until Slurm says it is idle."""
        self.heal(node)
        self.show_controller(node)
        if not _alive(self.state["pids"].get(node)):
            self.state["pids"][node] = _start_slurmd(self.state, node)
            _save(self.state)
        self.run("scontrol", "update", f"NodeName={node}", "State=RESUME")
        wait_until(f"{node} idle again", lambda: self.node_states().get(node) == "idle",
                   timeout)

    def log_tail(self, n: int = 30) -> str:
        out = []
        for path in sorted(self.workdir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-n:]
            out.append(f"--- {path}\n" + "\n".join(lines))
        return "\n".join(out)


def _save(state: dict) -> None:
    tmp = STATE_DIR / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, STATE_DIR / "state.json")


def _load() -> dict | None:
    try:
        return json.loads((STATE_DIR / "state.json").read_text())
    except (OSError, ValueError):
        return None


def _write_conf(workdir: Path, munge_socket: str) -> Path:
    nodes = "\n".join(f"NodeName={n} NodeAddr={address(n)} CPUs=8 RealMemory=2048 State=UNKNOWN"
                      for n in COMPUTE_NODES)
    conf = workdir / "slurm.conf"
    conf.write_text(f"""\
# a Slurm of {len(COMPUTE_NODES)} nodes in network namespaces (tests/namespace_cluster.py)
ClusterName=msacluster
SlurmctldHost={CONTROLLER}({NETS['eth0'][1]}.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={workdir}/state
SlurmdSpoolDir={workdir}/spool-%n
SlurmctldPidFile={workdir}/slurmctld.pid
SlurmdPidFile={workdir}/slurmd-%n.pid
SlurmctldLogFile={workdir}/slurmctld.log
SlurmdLogFile={workdir}/slurmd-%n.log
{SLURM_POLICY}SlurmdTimeout=10
SlurmdParameters=config_overrides
{nodes}
PartitionName={PARTITION} Nodes={','.join(COMPUTE_NODES)} Default=YES MaxTime=INFINITE State=UP \
OverSubscribe=FORCE:8
""")
    return conf


def _make_network(state: dict) -> None:
    for bridge, net in NETS.values():
        if _ip("link", "show", bridge, check=False).returncode != 0:
            _ip("link", "add", bridge, "type", "bridge")
            state["links"].append(bridge)
            _save(state)
        _ip("addr", "replace", f"{net}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
    for node in (LOGIN, *COMPUTE_NODES):
        if not Path(netns_path(node)).exists():
            _ip("netns", "add", node)
        state["namespaces"].append(node)
        _save(state)
        _ip("-n", node, "link", "set", "lo", "up")
        for interface, (bridge, _) in NETS.items():
            outside = f"{node}-{interface}"[:15]
            if _ip("link", "show", outside, check=False).returncode != 0:
                _ip("link", "add", outside, "type", "veth", "peer", "name", interface,
                    "netns", node)
                state["links"].append(outside)
                _save(state)
            _ip("link", "set", outside, "master", bridge, "up")
            _ip("-n", node, "addr", "replace", f"{address(node, interface)}/24", "dev",
                interface)
            _ip("-n", node, "link", "set", interface, "up")
        for host_address in _root_addresses():  # the machine itself is a login node too
            _ip("-n", node, "route", "replace", f"{host_address}/32", "via",
                f"{NETS['eth0'][1]}.1")
        state["fast_retransmit"] = _set_retransmits(node) and state.get("fast_retransmit", True)
        _save(state)


def _set_retransmits(node: str) -> bool:
    """TCP in ``node``'s namespace retransmits at least every second (Linux
    6.15 and later have ``tcp_rto_max_ms``; the default backs off up to
    120 s), and keeps a connection (and a closed socket's unsent data) for
    about 150 retransmissions instead of 15 and 8: what a client sent into
    a partition of up to about 2 min arrives within a second of its
    healing, as the partition test needs. False if the kernel lacks it."""
    sysctl = "/proc/sys/net/ipv4"
    done = run_command(["nsenter", f"--net={netns_path(node)}", "sh", "-c",
                        f"test -w {sysctl}/tcp_rto_max_ms && echo 1000 > "
                        f"{sysctl}/tcp_rto_max_ms && echo 150 > {sysctl}/tcp_retries2 && "
                        f"echo 150 > {sysctl}/tcp_orphan_retries"])
    return done.returncode == 0


def _root_addresses() -> list[str]:
    """IPv4 addresses of the root namespace but loopback and our bridges'."""
    out = run_command(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines()
    fields = [line.split() for line in out]
    return [f[3].split("/")[0] for f in fields
            if len(f) > 3 and f[1] != "lo" and not f[1].startswith(PREFIX)]


def _edit_hosts(add: bool) -> None:
    lines = [line for line in HOSTS.read_text().splitlines() if not line.endswith(HOSTS_MARK)]
    if add:
        lines += [f"{address(n)} {n} {HOSTS_MARK}" for n in (LOGIN, *COMPUTE_NODES)]
        lines.append(f"{NETS['eth0'][1]}.1 {CONTROLLER} {HOSTS_MARK}")
    with open(HOSTS, "w") as fh:  # in place: /etc/hosts may be a bind mount
        fh.write("\n".join(lines) + "\n")


def _spawn(argv: list[str], log: Path, env: dict | None = None) -> int:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=env, cwd=log.parent).pid


def _start_slurmd(state: dict, node: str) -> int:
    workdir = Path(state["workdir"])
    (workdir / f"spool-{node}").mkdir(exist_ok=True)
    return _spawn(["nsenter", f"--net={netns_path(node)}", "unshare", "--uts", "sh", "-c",
                   f"hostname {node}; exec {daemon_path('slurmd')} -D -f {state['conf']} "
                   f"-N {node}"], workdir / f"slurmd-{node}.out")


def cluster_up(timeout: float = 90.0) -> NamespaceCluster:
    """Start the cluster, or return the one already running (idempotent)."""
    state = _load()
    if state is not None:
        cluster = NamespaceCluster(state)
        if all(_alive(p) for p in state["pids"].values()) and cluster.node_states() and all(
                s in ("idle", "mixed", "allocated") for s in cluster.node_states().values()):
            cluster.started = False  # someone else's: left running
            return cluster
        cluster_down()
    check_can_start()
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            raise UnavailableError(f"{tool} is missing (Debian packages iproute2, util-linux)")
    STATE_DIR.mkdir(mode=0o755, exist_ok=True)
    workdir = STATE_DIR / f"run-{os.getpid()}"
    workdir.mkdir(mode=0o755)
    (workdir / "state").mkdir()
    state = {"workdir": str(workdir), "conf": "", "pids": {}, "namespaces": [], "links": []}
    _save(state)
    try:
        _make_network(state)
        _edit_hosts(add=True)
        procs: dict = {}
        sock = start_munged(workdir, procs)
        state["pids"]["munged"] = procs["munged"].pid
        state["conf"] = str(_write_conf(workdir, str(sock)))
        _save(state)
        state["pids"]["slurmctld"] = _spawn(
            ["unshare", "--uts", "sh", "-c", f"hostname {CONTROLLER}; exec "
             f"{daemon_path('slurmctld')} -D -i -f {state['conf']}"], workdir / "slurmctld.out")
        _save(state)
        cluster = NamespaceCluster(state)
        wait_until("slurmctld to answer", lambda: bool(cluster.node_states()), timeout)
        for node in COMPUTE_NODES:
            state["pids"][node] = _start_slurmd(state, node)
            _save(state)

        def all_idle() -> bool:
            for name, pid in state["pids"].items():
                if not _alive(pid):
                    raise UnavailableError(f"{name} (pid {pid}) exited; logs in {workdir}")
            states = cluster.node_states()
            return len(states) == len(COMPUTE_NODES) and all(
                s == "idle" for s in states.values())

        wait_until("every node idle", all_idle, timeout)
    except BaseException as exc:
        tail = NamespaceCluster(state).log_tail()
        cluster_down()
        if isinstance(exc, (UnavailableError, OSError)):  # e.g. no CAP_NET_ADMIN
            raise UnavailableError(f"{exc}\n{tail}") from None
        raise
    return cluster


def cluster_down(timeout: float = 20.0) -> None:
    """Stop what :func:`cluster_up` made: jobs, daemons (by pid), processes left
    in its namespaces, namespaces, links and host lines (by the names it chose)."""
    state = _load()
    if state is None:
        return
    pids = state.get("pids", {})
    if _alive(pids.get("slurmctld")) and state.get("conf"):
        cluster = NamespaceCluster(state)
        cluster.run("scancel", "--full", f"--user={os.getuid()}", timeout=15)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = cluster.run("squeue", "--noheader", "--format=%i", timeout=10)
            if out.returncode != 0 or not out.stdout.strip():
                break
            time.sleep(0.5)
    order = [*[n for n in pids if n not in ("slurmctld", "munged")], "slurmctld", "munged"]
    for name in order:
        pid = pids.get(name)
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
    for node in state.get("namespaces", []):
        if not node.startswith(PREFIX):
            continue
        for pid in run_command(["ip", "netns", "pids", node]).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "delete", node, check=False)
    for link in state.get("links", []):
        if link.startswith(PREFIX):
            _ip("link", "delete", link, check=False)
    _edit_hosts(add=False)
    shutil.rmtree(state["workdir"], ignore_errors=True)
    (STATE_DIR / "state.json").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def ns_cluster():
    """The namespace cluster for a test session (skips, naming what is missing)."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(cluster_lock(STATE_DIR / "lock"))
            cluster = cluster_up()
        except UnavailableError as exc:
            pytest.skip(f"no multi-node Slurm in namespaces: {exc}")
        try:
            yield cluster
        finally:
            if cluster.started:
                cluster_down()


def main(argv: list[str]) -> int:
    what = argv[1] if len(argv) > 1 else "status"
    if what in ("up", "down"):
        try:
            with cluster_lock(STATE_DIR / "lock"):
                if what == "up":
                    cluster = cluster_up()
                    print(f"export SLURM_CONF={cluster.state['conf']}\n"
                          f"nodes: {cluster.node_states()}")
                else:
                    cluster_down()
                    print("stopped")
        except ClusterBusyError as exc:
            print(f"{argv[0]} {what}: {exc}", file=sys.stderr)
            return 1
    elif what == "status":
        state = _load()
        print("not running" if state is None else json.dumps(state, indent=1))
    else:
        print(f"usage: {argv[0]} up|down|status", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
