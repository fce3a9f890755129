"""A one-node Slurm for the tests: munged, slurmctld and slurmd on this machine.

:func:`slurm_cluster`, and the session fixture :func:`slurm` built on it (import
it into a test module: ``from slurm_cluster import slurm``), give a
:class:`SlurmCluster` whose :attr:`~SlurmCluster.env` makes the Slurm
commands (``sbatch``, ``squeue``, ...) talk to it.

* If a Slurm already answers (``sinfo`` succeeds with the caller's
  environment), it is used as it is and nothing is started or stopped.
* Otherwise a private cluster is started: its ``slurm.conf``, state, spool,
  logs and munge socket live in a fresh temporary directory, its ports are
  free ports, so two test sessions on one machine do not meet. The daemons run
  in the foreground as children of the test process and are stopped by pid at
  the end (:meth:`SlurmCluster.stop`).
* When that is impossible (not root, Debian's ``slurm-wlm`` / ``munge`` not
  installed, no munge key, a daemon that does not come up), :class:`UnavailableError`
  says what is missing; the fixture turns it into a skip.

The configuration is the one measured to work on a small machine:
``select/cons_tres``, ``proctrack/linuxproc``, ``task/none``, no accounting
(``sacct`` fails, as on many clusters) and one partition with
``OverSubscribe=FORCE:8`` so that 2 cores run several jobs at once; the node
declares at least 8 CPUs (``SlurmdParameters=config_overrides``), so that one
allocation holds a 2-rank server step beside client steps. A second
partition, ``gate``, exists for tests that need sbatch to refuse a
submission (``scontrol update PartitionName=gate State=INACTIVE``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["SlurmCluster", "UnavailableError", "slurm_cluster", "slurm_answers", "shared_cluster",
           "slurm", "check_can_start", "daemon_path", "run_command", "start_munged", "wait_until"]

CLIENT_COMMANDS = ("sbatch", "squeue", "scancel", "scontrol", "srun", "sinfo", "salloc")
DAEMONS = {"slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "munged": "munge"}
MUNGE_KEY = Path("/etc/munge/munge.key")
PARTITION = "debug"
GATE_PARTITION = "gate"


class UnavailableError(RuntimeError):
    """Slurm cannot be started here; the message says what is missing."""


def run_command(cmd: list[str], env: dict | None = None, timeout: float = 20.0):
    return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def slurm_answers(env: dict | None = None) -> bool:
    """True if ``sinfo`` reaches a controller with ``env``."""
    if shutil.which("sinfo") is None:
        return False
    try:
        return run_command(["sinfo", "--noheader", "-o", "%P"], env=env, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _real_memory_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return max(1, int(line.split()[1]) // 1024 - 512)
    return 1024


class SlurmCluster:
    """A Slurm the tests can use. ``started`` is True if this object started it
    (and :meth:`stop` will stop it); ``admin`` is True if ``scontrol update``
    works (root on a cluster of our own)."""

    def __init__(self, env: dict[str, str], started: bool, workdir: Path | None = None,
                 procs: dict[str, subprocess.Popen] | None = None) -> None:
        self.env = env
        self.started = started
        self.workdir = workdir
        self.procs = procs if procs is not None else {}
        self.admin = started

    # -- helpers for tests -------------------------------------------------------
    @property
    def partition(self) -> str | None:
        """The partition to submit to (None: the cluster's default)."""
        return PARTITION if self.started else None

    @property
    def gate_partition(self) -> str | None:
        """A partition a test may switch INACTIVE / UP, or None."""
        return GATE_PARTITION if self.started else None

    def run(self, *cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return run_command(list(cmd), env=self.env, timeout=timeout)

    def log_tail(self, n: int = 30) -> str:
        if self.workdir is None:
            return ""
        out = []
        for path in sorted([*self.workdir.glob("*.out"), *self.workdir.glob("*.log"),
                            *self.workdir.glob("munge/*.log")]):
            if path.stat().st_size:
                lines = path.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- {path}\n" + "\n".join(lines))
        return "\n".join(out)

    # -- life cycle --------------------------------------------------------------
    def stop(self, timeout: float = 15.0) -> None:
        """Stop the daemons this object started (by pid): slurmd, slurmctld, munged."""
        if not self.started:
            return
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            # a private cluster: every job in it is a test's; let slurmd end them
            # (its slurmstepd processes would outlive it otherwise)
            self.run("scancel", f"--user={os.getuid()}", timeout=20)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                out = self.run("squeue", "--noheader", "--format=%i", timeout=10)
                if out.returncode != 0 or not out.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def check_can_start() -> None:
    missing = []
    if os.geteuid() != 0:
        raise UnavailableError("a private Slurm needs root (slurmd runs as root); "
                          "run as root or point SLURM_CONF at a running Slurm")
    for cmd in (*DAEMONS, *CLIENT_COMMANDS):
        if shutil.which(cmd) is None and not Path("/usr/sbin", cmd).exists():
            pkg = DAEMONS.get(cmd, "slurm-client")
            missing.append(f"{cmd} (Debian package {pkg})")
    if missing:
        raise UnavailableError("Slurm is not installed: missing " + ", ".join(missing) +
                          "; install with `apt-get install slurm-wlm munge` as root")
    if not MUNGE_KEY.exists():
        raise UnavailableError(f"no munge key at {MUNGE_KEY} (created by the munge package; "
                          f"or run `mungekey`/`create-munge-key`)")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        raise UnavailableError("no `munge` user (created by the munge package)") from None


def daemon_path(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def wait_until(what: str, ok, timeout: float, interval: float = 0.3) -> None:
    """Wait until ``ok()``; :class:`UnavailableError` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(interval)
    raise UnavailableError(f"timed out after {timeout:g} s waiting for {what}")


def _wait(what: str, ok, timeout: float, procs: dict, workdir: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise UnavailableError(f"{name} exited with code {proc.returncode} while waiting "
                                  f"for {what}; logs in {workdir}")
        if ok():
            return
        time.sleep(0.2)
    raise UnavailableError(f"timed out after {timeout:g} s waiting for {what}; logs in {workdir}")


#: the scheduling and timing lines of slurm.conf that this one-node cluster
#: and the namespace cluster (tests/namespace_cluster.py) share
SLURM_POLICY = """\
SlurmctldDebug=info
SlurmdDebug=info
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=300
KillWait=2
OverTimeLimit=0
InactiveLimit=0
SlurmctldTimeout=30
"""


def _write_conf(workdir: Path, host: str, munge_socket: Path) -> Path:
    cpus = os.cpu_count() or 1
    partition = "MaxTime=INFINITE State=UP OverSubscribe=FORCE:8"
    conf = workdir / "slurm.conf"
    conf.write_text(f"""\
# one-node Slurm for melissa-sa's tests (tests/slurm_cluster.py)
ClusterName=melissatest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={workdir}/state
SlurmdSpoolDir={workdir}/spool
SlurmctldPidFile={workdir}/slurmctld.pid
SlurmdPidFile={workdir}/slurmd.pid
SlurmctldLogFile={workdir}/slurmctld.log
SlurmdLogFile={workdir}/slurmd.log
{SLURM_POLICY}SlurmdTimeout=60
SlurmdParameters=config_overrides
NodeName={host} CPUs={max(cpus, 8)} RealMemory={_real_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES {partition}
PartitionName={GATE_PARTITION} Nodes={host} Default=NO {partition}
""")
    return conf


def start_munged(workdir: Path, procs: dict) -> Path:
    """munged as the munge user with the system key, on a private socket."""
    mdir = workdir / "munge"
    mdir.mkdir()
    os.chmod(mdir, 0o755)  # munged wants the socket reachable by all
    user = pwd.getpwnam("munge")
    os.chown(mdir, user.pw_uid, user.pw_gid)
    sock = mdir / "munge.socket"
    log = open(workdir / "munged.out", "ab")
    try:
        procs["munged"] = subprocess.Popen(
            [daemon_path("munged"), "--foreground", f"--socket={sock}",
             f"--log-file={mdir}/munged.log", f"--pid-file={mdir}/munged.pid",
             f"--seed-file={mdir}/munged.seed", f"--key-file={MUNGE_KEY}"],
            user=user.pw_uid, group=user.pw_gid, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=mdir)
    finally:
        log.close()

    def munge_works() -> bool:
        if not sock.exists():
            return False
        enc = run_command(["munge", f"--socket={sock}", "-n"], timeout=10)
        if enc.returncode != 0:
            return False
        return subprocess.run(["unmunge", f"--socket={sock}"], input=enc.stdout,
                              capture_output=True, text=True, timeout=10).returncode == 0

    _wait("munged to answer", munge_works, 20, procs, workdir)
    return sock


def slurm_cluster(base_env: dict[str, str] | None = None,
                  timeout: float = 60.0) -> SlurmCluster:
    """A Slurm to test against: the running one, or a private one started here.

    Raises :class:`UnavailableError` (message: what is missing) when there is none
    and one cannot be started.
    """
    env = dict(os.environ if base_env is None else base_env)
    if slurm_answers(env):
        return SlurmCluster(env, started=False)
    check_can_start()
    workdir = Path(tempfile.mkdtemp(prefix="melissa-slurm-"))
    os.chmod(workdir, 0o755)
    procs: dict[str, subprocess.Popen] = {}
    cluster = SlurmCluster(env, started=True, workdir=workdir, procs=procs)
    try:
        for sub in ("state", "spool"):
            (workdir / sub).mkdir()
        sock = start_munged(workdir, procs)
        host = socket.gethostname().split(".")[0]
        conf = _write_conf(workdir, host, sock)
        env["SLURM_CONF"] = str(conf)
        cluster.env = env
        for name, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D"])):
            log = open(workdir / f"{name}.out", "ab")
            try:
                procs[name] = subprocess.Popen(
                    [daemon_path(name), *args, "-f", str(conf)], env=env,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, cwd=workdir)
            finally:
                log.close()
            if name == "slurmctld":
                _wait("slurmctld to answer sinfo", lambda: slurm_answers(env), timeout,
                      procs, workdir)

        def node_ready() -> bool:
            out = run_command(["sinfo", "--noheader", "-N", "-o", "%T"], env=env, timeout=10)
            states = out.stdout.split()
            return out.returncode == 0 and bool(states) and all(
                s.rstrip("*") in ("idle", "mixed", "allocated") for s in states)

        _wait("the node to be idle", node_ready, timeout, procs, workdir)
    except BaseException as exc:
        tail = cluster.log_tail()
        cluster.stop()
        if isinstance(exc, UnavailableError):
            raise UnavailableError(f"{exc}\n{tail}") from None
        raise
    return cluster


_SHARED: list[SlurmCluster] = []


def shared_cluster() -> SlurmCluster:
    """One cluster per test session, whichever module asks first."""
    if not _SHARED:
        _SHARED.append(slurm_cluster())
    return _SHARED[0]


@pytest.fixture(scope="session")
def slurm():
    """The Slurm of the test session (skips, naming what is missing, if none).

    ``SLURM_CONF`` is set in ``os.environ`` while it lives, so that every
    process a test starts finds the cluster."""
    try:
        cluster = shared_cluster()
    except UnavailableError as exc:
        pytest.skip(f"no Slurm to test with: {exc}")
    old = os.environ.get("SLURM_CONF")
    if "SLURM_CONF" in cluster.env:
        os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    yield cluster
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    cluster.stop()


if __name__ == "__main__":  # start one by hand: python tests/slurm_cluster.py
    c = slurm_cluster()
    print(f"export SLURM_CONF={c.env.get('SLURM_CONF', '')}  (started: {c.started}); "
          f"Ctrl-C stops it")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        c.stop()
