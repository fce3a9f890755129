"""Whole studies whose output directory fills up, on a small tmpfs the test
mounts (root only) and fills with a file of its own.

* Space comes back after the first checkpoint failed: the study ends as if
  nothing had happened (exact results, the server started once, every run
  executed once, no partial file, one warning line, no traceback).
* Only results.h5 finds no room (its reservation fails, injected:
  ``tests/results_fail.py``; a checkpoint set needs more room than the
  results, so on a real disk both fail): the results write waits, writing a
  checkpoint set holding every run; room found meanwhile ends the study as
  if nothing had happened, no room ever leaves that set, from which
  ``--resume`` writes the results without running anything again. These two
  run without root.
* Space never comes back: the results write waits ``server_config.results_wait``
  seconds, the study ends by itself with exit code 1 and one message naming
  the checkpoint kept and the ``--resume`` command; that command, once space
  is freed, finishes the study with exact results.
"""

import errno
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import results_fail
from conftest import child_env, wait_for, write_study
from small_tmpfs import mounted_tmpfs
from studyutil import MELISSA, NB_STEPS, copy_client, offline, run_study

from melissa_sa.checkpoint import find_latest_checkpoint
from melissa_sa.results import open_results

P, GROUPS, N_CELLS = 2, 4, 11
RUNS = GROUPS * (P + 2)
STATS = ["mean", "variance", "sobol_first", "sobol_total"]
#: bytes left free when the disk is "full": room for logs and scripts (a few
#: kB each), not for a checkpoint set (256 kB reserved per rank at least) nor
#: for results.h5 (about 400 kB reserved)
LEFT = 192 * 1024


@pytest.fixture
def tmpfs(tmp_path):
    """A 16 MB tmpfs mounted for the test (root only), unmounted at the end."""
    with mounted_tmpfs(tmp_path, "16m") as d:
        yield d


def fill(directory: Path, left: int) -> Path:
    """Fill ``directory``'s file system but ``left`` bytes; the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * (1 << 20))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    os.ftruncate(fd, max(0, os.fstat(fd).st_size - left))
    os.close(fd)
    return filler


def make_study(tmp_path: Path, out: Path, results_wait: float = 4, **launcher) -> Path:
    copy_client(tmp_path)
    return write_study(
        tmp_path, output_dir=str(out),
        study_options={"field_names": ["f"], "nb_parameters": P, "parameter_sweep_size": GROUPS,
                       "nb_time_steps": NB_STEPS, "l_bounds": [-3.0, -1.0],
                       "u_bounds": [3.0, 2.0], "simulation_timeout": 30},
        sa_config={"mean": True, "variance": True, "sobol_indices": True,
                   "checkpoint_interval": 4},
        server_config={"server_processes": 2, "results_wait": results_wait},
        launcher_config={"job_limit": 4, "server_timeout": 20, "timer_delay": 0.5, **launcher},
        client_config={"executable_command": "python analytic_client.py"})


def assert_exact(results: Path) -> None:
    with open_results(results) as r:
        ref, n_groups = offline(r, N_CELLS, P)
        assert n_groups == GROUPS
        np.testing.assert_array_equal(r.n_samples("f"), [2 * GROUPS] * NB_STEPS)
        for name in STATS:
            np.testing.assert_allclose(r.get("f", name), ref[name], rtol=1e-10, atol=1e-10,
                                       err_msg=name)


def job_starts(out: Path) -> dict[str, int]:
    """Client log -> how many times its run was started."""
    return {p.name: p.read_text().count("=== melissa-sa: job")
            for p in (out / "logs").glob("client.*.log")}


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.rglob("*.tmp")]


def test_space_freed_after_the_first_failed_checkpoint(tmpfs, tmp_path, processes):
    out = tmpfs / "out"
    study = make_study(tmp_path, out)
    filler = fill(tmpfs, LEFT)
    log_path = tmp_path / "launcher.out"
    started = time.monotonic()
    proc = processes.start([MELISSA, "run", study, "--no-progress"], log_path=log_path,
                           cwd=tmp_path, env=child_env(TEST_STEP_DELAY=0.3))
    wait_for(lambda: "checkpoint failed in" in log_path.read_text() or proc.poll() is not None,
             120, "the first failed checkpoint")
    filler.unlink()                             # space comes back
    rc = proc.wait(120)
    text = log_path.read_text()
    assert rc == 0, text[-3000:]
    warned = [ln for ln in text.splitlines() if "checkpoint failed in" in ln]  # no log tail
    assert len(warned) == 1, text[-3000:]
    assert warned[0].startswith(f"[melissa-sa] warning: checkpoint failed in {out}/checkpoint:")
    assert "No space left on device" in warned[0] and " needed; " in warned[0]
    assert "checkpoints work again" in text
    assert "Traceback" not in text
    assert text.count("server started") == 1, text[-3000:]
    assert "Traceback" not in (out / "logs" / "server.log").read_text()
    starts = job_starts(out)
    assert len(starts) == RUNS and set(starts.values()) == {1}, starts  # each run once
    assert leftovers(out) == []
    assert_exact(out / "results.h5")
    assert time.monotonic() - started < 120


def test_space_never_freed_ends_with_a_checkpoint_that_resume_completes(tmpfs, tmp_path):
    out = tmpfs / "out"
    study = make_study(tmp_path, out)
    env = child_env(TEST_STEP_DELAY=0.3)
    proc = subprocess.Popen([MELISSA, "run", str(study), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=tmp_path)
    try:
        wait_for(lambda: (out / "checkpoint" / "manifest.json").exists()
                 or proc.poll() is not None, 120, "the first checkpoint")
        filler = fill(tmpfs, LEFT)              # full from now on
        text = proc.communicate(timeout=150)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 1, text[-3000:]
    assert "Traceback" not in text
    said = [ln for ln in text.splitlines() if ln.startswith("[melissa-sa]")]  # not the log tail
    waiting = [ln for ln in said if "cannot write results.h5 in" in ln]
    assert len(waiting) == 1, text[-3000:]
    assert waiting[0].startswith(f"[melissa-sa] warning: cannot write results.h5 in {out}: ")
    assert "No space left on device" in waiting[0] and " needed; " in waiting[0]
    assert "every 1 s for 4 s (server_config.results_wait)" in waiting[0]
    (gave_up,) = [ln for ln in said if "could not be written in" in ln]
    assert gave_up.startswith("[melissa-sa] error: study failed: results.h5 could not be "
                              f"written in {out} for 4 s (server_config.results_wait): ")
    assert f"melissa-sa run {study} --resume" in gave_up
    assert not (out / "results.h5").exists() and leftovers(out) == []
    found = find_latest_checkpoint(out / "checkpoint", 2)   # the newest set is intact
    assert found is not None and f"set {found.set_id} in" in gave_up
    filler.unlink()                             # space comes back: finish the study
    done = run_study(study, args=["--resume"], env=env, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:]
    assert_exact(out / "results.h5")



def start(processes, study: Path, log_path: Path, tmp_path: Path, failures: int):
    return processes.start([MELISSA, "run", study, "--no-progress"], log_path=log_path,
                           cwd=tmp_path, env=child_env(TEST_STEP_DELAY=0.2,
                                                       **results_fail.env(failures)))


def test_results_that_find_room_during_the_wait_are_written(tmp_path, processes):
    out = tmp_path / "out"
    study = make_study(tmp_path, out, results_wait=30)
    log_path = tmp_path / "launcher.out"
    rc = start(processes, study, log_path, tmp_path, failures=2).wait(120)
    text = log_path.read_text()
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text and "checkpoint failed" not in text
    said = [ln for ln in text.splitlines() if "cannot write results.h5" in ln]
    assert len(said) == 1 and said[0].startswith(
        f"[melissa-sa] warning: cannot write results.h5 in {out}: rank 0: OSError: [Errno 28] "
        f"No space left on device; "), text[-3000:]
    assert "the write that waited for room is done" in text
    assert text.count("server started") == 1, text[-3000:]
    starts = job_starts(out)
    assert len(starts) == RUNS and set(starts.values()) == {1}, starts
    assert leftovers(out) == []
    assert_exact(out / "results.h5")
    log = (out / "logs" / "server.log").read_text()
    assert "results written after waiting" in log and "Traceback" not in log
    assert log.count("results.h5 still cannot be written") == 1


def test_results_without_room_leave_a_checkpoint_of_every_run(tmp_path, processes):
    out = tmp_path / "out"
    study = make_study(tmp_path, out, results_wait=2)
    log_path = tmp_path / "launcher.out"
    rc = start(processes, study, log_path, tmp_path, failures=1000).wait(120)
    text = log_path.read_text()
    assert rc == 1, text[-3000:]
    (gave_up,) = [ln for ln in text.splitlines() if ln.startswith("[melissa-sa] error:")]
    found = find_latest_checkpoint(out / "checkpoint", 2)
    assert (f"checkpoint set {found.set_id} in {out}/checkpoint holds every run folded: "
            f"melissa-sa run {study} --resume writes the results once there is room, "
            f"without running anything again") in gave_up
    assert leftovers(out) == [] and not (out / "results.h5").exists()
    before = job_starts(out)
    assert len(before) == RUNS and set(before.values()) == {1}, before
    done = run_study(study, args=["--resume"], env=child_env(), timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert job_starts(out) == before            # nothing ran again
    assert_exact(out / "results.h5")


def test_a_disk_full_for_a_while_from_the_start(tmpfs, tmp_path, processes):
    """Full, to the last byte, for a few seconds, once the first runs have
    started (and at the server's start: its lock file): client scripts,
    client logs, the launcher's state file and the checkpoints all find no
    room; each waits, and the study ends as if nothing had happened."""
    out = tmpfs / "out"
    study = make_study(tmp_path, out)
    log_path = tmp_path / "launcher.out"
    proc = processes.start([MELISSA, "run", study, "--no-progress"], log_path=log_path,
                           cwd=tmp_path, env=child_env(TEST_STEP_DELAY=0.3))
    wait_for(lambda: "server started" in log_path.read_text() or proc.poll() is not None,
             60, "the server's start")
    filler = fill(tmpfs, 0)                     # the server's lock file, the study's start
    time.sleep(2)
    filler.unlink()
    wait_for(lambda: (out / "logs" / "client.1.log").exists() or proc.poll() is not None,
             60, "the first runs")
    filler = fill(tmpfs, 0)                     # the study in full flow
    time.sleep(4)
    filler.unlink()
    rc = proc.wait(120)
    text = log_path.read_text()
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text
    assert text.count("server started") == 1, text[-3000:]
    starts = job_starts(out)
    assert len(starts) == RUNS and set(starts.values()) == {1}, starts
    assert leftovers(out) == []
    assert_exact(out / "results.h5")
    warnings = [ln for ln in text.splitlines() if ln.startswith("[melissa-sa] warning: ")]
    # at most once per time the disk was full (the launcher's state file: once)
    for what, most in (("launcher.json", 1), ("checkpoint failed", 1), ("client scripts", 2),
                       ("cannot start", 2)):
        assert sum(what in ln for ln in warnings) <= most, text[-3000:]
    assert any("No space left on device" in ln for ln in warnings), text[-3000:]
