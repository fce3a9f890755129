"""Injected faults, real processes, bounded time: nothing lost, nothing twice.

Every study here runs the same design (same seed) as a fault-free baseline;
the final results must equal the baseline's to 1e-12 relative, per-time-step
sample counts included. Clients inject their faults themselves
(tests/clients/analytic_client.py: SIGKILL of themselves, a hang, an exit 1)
on their first attempts; server and launcher are killed by pid from here.
"""

import json
import os
import signal
import time
from pathlib import Path

import checkpoint_pause
import numpy as np
import pytest
from conftest import child_env, kill_group, wait_for, write_study
from studyutil import MELISSA, NB_STEPS, copy_client, offline, run_study

from melissa_sa.results import open_results

P, GROUPS, N_CELLS = 2, 4, 11  # 8 independent runs: quantiles exact as well
STATS = ["mean", "variance", "skewness", "kurtosis", "min", "max",
         "threshold_exceedance", "quantiles", "sobol_first", "sobol_total",
         "sobol_first_low", "sobol_first_high", "sobol_total_low", "sobol_total_high"]


def make_study(tmp_path: Path, **overrides) -> Path:
    copy_client(tmp_path)
    (tmp_path / "faults").mkdir(exist_ok=True)
    sections = dict(
        study_options={"field_names": ["f"], "nb_parameters": P,
                       "parameter_sweep_size": GROUPS, "nb_time_steps": NB_STEPS,
                       "l_bounds": [-3.0, -1.0], "u_bounds": [3.0, 2.0],
                       "simulation_timeout": 30, "crashes_before_redraw": 3},
        sa_config={"mean": True, "variance": True, "skewness": True, "kurtosis": True,
                   "min": True, "max": True, "threshold_exceedance": [5.0],
                   "quantiles": [0.25, 0.5], "sobol_indices": True,
                   "checkpoint_interval": 4},
        server_config={"server_processes": 2},
        launcher_config={"job_limit": 4, "server_timeout": 20, "timer_delay": 0.5},
        client_config={"executable_command": "python analytic_client.py"},
    )
    for key, value in overrides.items():
        sections[key] = {**sections.get(key, {}), **value}
    return write_study(tmp_path, **sections)


def fault_env(tmp_path: Path, plan: dict, **extra) -> dict:
    return child_env(TEST_FAULT_PLAN=json.dumps({str(k): v for k, v in plan.items()}),
                     TEST_FAULT_DIR=tmp_path / "faults", **extra)


def read(path: Path) -> dict:
    with open_results(path) as r:
        out = {name: r.get("f", name) for name in STATS}
        out["n_samples"] = r.n_samples("f")
        out["n_groups"] = r.n_groups("f")
        table = r.parameters
        out["design"] = table.values[np.lexsort((table.member, table.group_id))][table.folded]
    return out


def assert_same_results(got: dict, expected: dict) -> None:
    np.testing.assert_array_equal(got["n_samples"], expected["n_samples"])
    np.testing.assert_array_equal(got["n_groups"], expected["n_groups"])
    for name in STATS:
        scale = np.nanmax(np.abs(expected[name])) or 1.0
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12,
                                   atol=1e-12 * scale, err_msg=name)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The fault-free run of the design every test below runs."""
    tmp = tmp_path_factory.mktemp("baseline")
    study = make_study(tmp)
    done = run_study(study)
    assert done.returncode == 0, done.stdout[-3000:]
    results = read(tmp / "out" / "results.h5")
    with open_results(tmp / "out" / "results.h5") as r:
        ref, _ = offline(r, N_CELLS, P)
    for name, value in ref.items():  # the baseline itself is right
        np.testing.assert_allclose(results[name], value, rtol=1e-10, atol=1e-10)
    return results


def test_clients_killed_9_are_restarted(tmp_path, baseline):
    plan = {1: {"mode": "kill", "step": 1}, 6: {"mode": "kill", "step": 2, "times": 2},
            11: {"mode": "kill", "step": 0}}
    done = run_study(make_study(tmp_path), env=fault_env(tmp_path, plan))
    assert done.returncode == 0, done.stdout[-3000:]
    assert_same_results(read(tmp_path / "out" / "results.h5"), baseline)
    log = (tmp_path / "out" / "logs" / "server.log").read_text()
    assert log.count("restarting it") == 4, log[-3000:]


def test_client_hanging_past_simulation_timeout_is_restarted(tmp_path, baseline):
    plan = {5: {"mode": "hang", "step": 1}}
    study = make_study(tmp_path, study_options={"simulation_timeout": 3})
    done = run_study(study, env=fault_env(tmp_path, plan))
    assert done.returncode == 0, done.stdout[-3000:]
    assert_same_results(read(tmp_path / "out" / "results.h5"), baseline)
    log = (tmp_path / "out" / "logs" / "server.log").read_text()
    assert "was silent for more than 3 s (simulation_timeout)" in log


def test_redraw_after_crashes_before_redraw_records_the_design(tmp_path):
    plan = {6: {"mode": "exit", "step": 0, "times": 5}}  # group 1 never completes
    study = make_study(tmp_path, study_options={"crashes_before_redraw": 2})
    done = run_study(study, env=fault_env(tmp_path, plan))
    assert done.returncode == 0, done.stdout[-3000:]
    path = tmp_path / "out" / "results.h5"
    with open_results(path) as r:
        table = r.parameters
        abandoned = table.group_id == 1
        assert not table.folded[abandoned].any()
        replacement = table.redrawn & table.folded
        assert replacement.sum() == P + 2 and set(table.group_id[replacement]) == {GROUPS}
        assert table.folded.sum() == GROUPS * (P + 2)
        ref, n_groups = offline(r, N_CELLS, P)
        assert n_groups == GROUPS
        for name, value in ref.items():
            np.testing.assert_allclose(r.get("f", name), value, rtol=1e-10, atol=1e-10,
                                       err_msg=name)
        np.testing.assert_array_equal(r.n_samples("f"), [2 * GROUPS] * NB_STEPS)
    log = (tmp_path / "out" / "logs" / "server.log").read_text()
    assert "group 1 abandoned, its parameters redrawn as group 4" in log


def test_failure_without_fault_tolerance_leaves_a_checkpoint_to_resume(tmp_path, baseline):
    """Fault tolerance off: the study stops with a message and a checkpoint;
    --resume then finishes it (the failed client succeeds the second time)."""
    plan = {9: {"mode": "exit", "step": 1}}
    study = make_study(tmp_path, launcher_config={"fault_tolerance": False, "job_limit": 2})
    env = fault_env(tmp_path, plan)
    done = run_study(study, env=env)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "simulation 9 exited with code 1 and fault tolerance is off" in done.stdout
    manifest = json.loads((tmp_path / "out" / "checkpoint" / "manifest.json").read_text())
    assert manifest["sets"], manifest
    done = run_study(study, env=env, args=["--resume"])
    assert done.returncode == 0, done.stdout[-3000:]
    assert_same_results(read(tmp_path / "out" / "results.h5"), baseline)


def test_truncated_checkpoint_is_detected_and_the_previous_set_used(tmp_path, baseline):
    plan = {13: {"mode": "exit", "step": 2}}
    study = make_study(tmp_path, launcher_config={"fault_tolerance": False, "job_limit": 1},
                       sa_config={"checkpoint_interval": 2})
    env = fault_env(tmp_path, plan)
    done = run_study(study, env=env)
    assert done.returncode == 1, done.stdout[-3000:]
    ckpt = tmp_path / "out" / "checkpoint"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert len(manifest["sets"]) == 2, manifest
    newest = ckpt / manifest["sets"][0]["files"][1]["name"]
    size = newest.stat().st_size
    with open(newest, "r+b") as f:
        f.truncate(size // 2)
    done = run_study(study, env=env, args=["--resume"])
    assert done.returncode == 0, done.stdout[-3000:]
    log = (tmp_path / "out" / "logs" / "server.log").read_text()
    assert f"{newest}: truncated" in log, log[-3000:]
    assert f"restarted from checkpoint set {manifest['sets'][1]['set_id']}" in log
    assert_same_results(read(tmp_path / "out" / "results.h5"), baseline)


# -- server and launcher faults: the launcher runs in the background ----------------------
def start_launcher(processes, study: Path, env: dict, args=()):
    return processes.start([MELISSA, "run", str(study), "--no-progress", *args],
                           log_path=study.parent / f"launcher{len(processes.started)}.log",
                           cwd=study.parent, env=env)


def server_rank0_pid(out: Path) -> int:
    text = (out / "server.lock").read_text().strip()
    return int(text)


def wait_exit(proc, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except Exception:  # noqa: BLE001 - report the log below
        kill_group(proc)
        raise


def launcher_log(study: Path, index: int = 0) -> str:
    return (study.parent / f"launcher{index}.log").read_text(errors="replace")


def test_server_killed_9_mid_study_is_relaunched(tmp_path, baseline, processes):
    study = make_study(tmp_path, launcher_config={"job_limit": 2})
    proc = start_launcher(processes, study, fault_env(tmp_path, {}, TEST_STEP_DELAY=0.3))
    out = tmp_path / "out"
    wait_for(lambda: (out / "checkpoint" / "manifest.json").exists(), 120, "a checkpoint")
    os.kill(server_rank0_pid(out), signal.SIGKILL)
    assert wait_exit(proc, 300) == 0, launcher_log(study)[-3000:]
    log = (out / "logs" / "server.log").read_text()
    assert "restarted from checkpoint set" in log, log[-3000:]
    assert_same_results(read(out / "results.h5"), baseline)


def test_server_killed_9_while_writing_a_checkpoint(tmp_path, baseline, processes):
    study = make_study(tmp_path, launcher_config={"job_limit": 2},
                       sa_config={"checkpoint_interval": 3})
    env = fault_env(tmp_path, {}, TEST_STEP_DELAY=0.2, **checkpoint_pause.env("partial:120@2"))
    proc = start_launcher(processes, study, env)
    out = tmp_path / "out"
    log_path = out / "logs" / "server.log"
    pausing = wait_for(lambda: log_path.exists() and "checkpoint: pausing" in log_path.read_text()
                       and log_path.read_text(), 180, "the server to pause inside set 2")
    assert "(set 2," in pausing
    os.kill(server_rank0_pid(out), signal.SIGKILL)
    assert wait_exit(proc, 300) == 0, launcher_log(study)[-3000:]
    log = log_path.read_text()
    assert "restarted from checkpoint set 1" in log, log[-3000:]
    assert_same_results(read(out / "results.h5"), baseline)


def test_a_full_disk_fails_checkpoints_without_a_restart(tmp_path, baseline):
    """Rank 1's disk is full for the first two checkpoint sets: the server
    keeps going (never restarted, no run executed twice), rank 0 and the
    launcher say so in one line each, the third set is written, and the
    results are exact."""
    study = make_study(tmp_path, sa_config={"checkpoint_interval": 4})
    env = fault_env(tmp_path, {}, **checkpoint_pause.env("", "partial@1/1,partial@2/1"))
    done = run_study(study, env=env)
    out = tmp_path / "out"
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Traceback" not in done.stdout
    warned = [ln for ln in done.stdout.splitlines() if "checkpoint failed in" in ln]
    assert len(warned) == 1, done.stdout[-3000:]
    assert warned[0].startswith(f"[melissa-sa] warning: checkpoint failed in {out}/checkpoint: "
                                "rank 1: OSError: [Errno 28] No space left on device; ")
    assert " free, about " in warned[0] and " needed; " in warned[0]
    assert "checkpoints work again" in done.stdout
    assert done.stdout.count("server started") == 1
    log = (out / "logs" / "server.log").read_text()
    assert log.count("checkpoint failed in") == 1 and "checkpoint failed again" in log
    assert "Traceback" not in log
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert manifest["latest"] >= 3
    assert not list((out / "checkpoint").glob("*.tmp"))
    for client_log in (out / "logs").glob("client.*.log"):  # one attempt each
        assert client_log.read_text().count("=== melissa-sa: job") == 1, client_log
    assert_same_results(read(out / "results.h5"), baseline)


def test_launcher_killed_9_then_resume(tmp_path, baseline, processes):
    study = make_study(tmp_path, launcher_config={"job_limit": 2, "server_timeout": 4})
    env = fault_env(tmp_path, {}, TEST_STEP_DELAY=0.3)
    proc = start_launcher(processes, study, env)
    out = tmp_path / "out"
    wait_for(lambda: (out / "checkpoint" / "manifest.json").exists(), 120, "a checkpoint")
    proc.send_signal(signal.SIGKILL)  # the launcher only, not its process group
    proc.wait(10)
    second = start_launcher(processes, study, env, args=["--resume"])
    assert wait_exit(second, 300) == 0, launcher_log(study, 1)[-3000:]
    assert_same_results(read(out / "results.h5"), baseline)


@pytest.mark.slow
def test_soak_many_random_kills(tmp_path, processes):
    """A larger study under many random client kills and several server
    kills; the result must equal the offline computation over the recorded
    design. Size: SOAK_GROUPS groups (default 80), a quarter of the runs
    killed once or twice, SOAK_SERVER_KILLS server kills (default 3)."""
    rng = np.random.default_rng(int(os.environ.get("SOAK_SEED", "7")))
    groups = int(os.environ.get("SOAK_GROUPS", "80"))
    server_kills = int(os.environ.get("SOAK_SERVER_KILLS", "3"))
    runs = groups * (P + 2)
    plan = {int(s): {"mode": "kill", "step": int(rng.integers(0, NB_STEPS)),
                     "times": int(rng.integers(1, 3))}
            for s in rng.choice(runs, size=runs // 4, replace=False)}
    study = make_study(tmp_path, study_options={"parameter_sweep_size": groups,
                                                "crashes_before_redraw": 5},
                       sa_config={"quantiles": False, "checkpoint_interval": 10},
                       launcher_config={"max_server_restarts": server_kills + 1})
    t0 = time.monotonic()
    proc = start_launcher(processes, study, fault_env(tmp_path, plan, TEST_STEP_DELAY=0.05))
    out = tmp_path / "out"
    manifest = out / "checkpoint" / "manifest.json"
    for k in range(server_kills):
        wait_for(lambda: manifest.exists(), 600, "a checkpoint")
        time.sleep(3 + 4 * k)
        if proc.poll() is not None:
            break
        os.kill(server_rank0_pid(out), signal.SIGKILL)
        time.sleep(5)
    assert wait_exit(proc, 1800) == 0, launcher_log(study)[-3000:]
    log = (out / "logs" / "server.log").read_text()
    print(f"soak: {groups} groups, {runs} runs, {len(plan)} runs with injected kills "
          f"({sum(p['times'] for p in plan.values())} kills), "
          f"{log.count('restarting it')} client restarts logged, "
          f"{log.count('restarted from checkpoint set')} server restarts from a checkpoint, "
          f"{time.monotonic() - t0:.0f} s")
    with open_results(out / "results.h5") as r:
        ref, n_groups = offline(r, N_CELLS, P)
        assert n_groups == groups
        np.testing.assert_array_equal(r.n_samples("f"), [2 * groups] * NB_STEPS)
        np.testing.assert_array_equal(r.n_groups("f"), [groups] * NB_STEPS)
        for name, value in ref.items():
            if name == "quantiles":
                continue
            np.testing.assert_allclose(r.get("f", name), value, rtol=1e-10, atol=1e-10,
                                       err_msg=name)


def test_a_client_command_that_always_fails_stops_the_study(tmp_path):
    """A typo in the client's path ends the study (exit 1) with the reason,
    instead of redrawing groups without end."""
    study = make_study(tmp_path, study_options={"max_consecutive_failures": 6},
                       client_config={"executable_command": "python no_such_client.py"})
    t0 = time.monotonic()
    done = run_study(study)
    assert done.returncode == 1, done.stdout[-3000:]
    assert time.monotonic() - t0 < 120
    assert "6 runs failed in a row with no run completing" in done.stdout, done.stdout[-3000:]
    assert "study_options.max_consecutive_failures = 6" in done.stdout
    scripts = list((tmp_path / "out" / "client_scripts").glob("client.*.sh"))
    assert len(scripts) <= 2 * (P + 2) + 4           # no endless redraws
    # the checkpoint left behind resumes (and fails the same way: the command is wrong)
    assert (tmp_path / "out" / "checkpoint" / "manifest.json").exists()


def test_late_messages_of_a_restarted_run_are_dropped_as_old_attempts(tmp_path, baseline):
    """Run 3's first attempt keeps the messages of its steps 1 and 2 (values far
    off) and exits 1; its rerun, restarted by the launcher, replays them right
    after its own step 0, through its own sockets: late messages of the old run
    for steps the rerun has not sent yet, after the old run's late hello
    (submission 0), refused (``bad_hello``) since the rerun's (submission 1)
    was accepted.
    Every data message is dropped as ``old_attempt`` (2 steps x 2 server
    ranks), the rerun's step 0 is a duplicate (2 ranks), and the results equal
    the fault-free run's."""
    plan = {3: {"mode": "late", "step": 1}}
    done = run_study(make_study(tmp_path), env=fault_env(tmp_path, plan))
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "faults" / "late.3.npz.replayed").exists()
    assert (tmp_path / "faults" / "late.3.npz.hello").read_text() == (
        "refused: simulation 3: this run is submission 0 (MELISSA_RUN_SUBMISSION), the "
        "server already accepted submission 1: a resubmitted run's late hello, refused")
    results = tmp_path / "out" / "results.h5"
    assert_same_results(read(results), baseline)
    with open_results(results) as r:
        dropped = json.loads(r.h5.attrs["dropped_messages"])
    assert dropped == {"old_attempt": 2 * 2, "duplicate": 2, "bad_hello": 1}, dropped
