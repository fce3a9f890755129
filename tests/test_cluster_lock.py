"""One namespace cluster per machine (tests/namespace_cluster.py): its names,
subnets and /etc/hosts lines are the machine's, so a test session holds an
exclusive lock while it uses the cluster, and a second one is told who holds
it instead of tearing the first one's cluster down. Needs no root: the lock
is taken on a file of the test's own."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster_lock import ClusterBusyError, cluster_lock
from slurm_cluster import UnavailableError

HERE = Path(__file__).resolve().parent


def test_a_second_process_is_told_who_holds_the_cluster(tmp_path):
    lock = tmp_path / "state" / "lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
         "from pathlib import Path; from cluster_lock import cluster_lock\n"
         "with cluster_lock(Path(sys.argv[2])):\n"
         "    print('held', flush=True); time.sleep(60)", str(HERE), str(lock)],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ClusterBusyError, match=rf"pid {holder.pid} holds {lock}"), \
                cluster_lock(lock):
            pass
        assert issubclass(ClusterBusyError, UnavailableError)  # the fixture skips on it
    finally:
        holder.kill()
        holder.wait(10)
    deadline = time.monotonic() + 10  # the kernel drops the lock of a dead process
    while True:
        try:
            with cluster_lock(lock):
                break
        except ClusterBusyError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_the_lock_is_reentrant_within_a_process_and_released_at_the_end(tmp_path):
    lock = tmp_path / "lock"
    with cluster_lock(lock), cluster_lock(lock):  # one fixture per test module
        assert lock.read_text().strip().isdigit()
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
         "from pathlib import Path; from cluster_lock import cluster_lock\n"
         "with cluster_lock(Path(sys.argv[2])): print('free')", str(HERE), str(lock)],
        capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "free", probe.stderr
