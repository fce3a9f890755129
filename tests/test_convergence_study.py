"""Convergence-driven stopping through `melissa-sa run` (launcher, 2 server ranks).

The config refuses ``min_groups`` below 200 (coverage, see
docs/statistics.md), and 200 groups of p + 2 client processes are too slow
for CI on two cores. So the studies here run a server subclass (the
``server_filename`` / ``server_class`` hook) whose ``convergence_rule()``
returns a rule built directly, with a small ``min_groups``: the server
path (two-round check over ranks, stop, in-flight groups finished, results
attributes) is the one a config rule takes.
"""

import json
import subprocess

import h5py
import numpy as np
from conftest import write_study
from studyutil import MELISSA, NB_STEPS, copy_client, offline, run_study

from melissa_sa.results import open_results

N_CELLS, P, SWEEP = 11, 2, 40


def fail_after_stop(marker) -> str:
    """Server subclass code: once the rule stopped the draws, the first finished
    group fails the study (with a checkpoint), once; ``marker`` records the state."""
    return (
        "    def on_group_finished(self, group_id):\n"
        "        super().on_group_finished(group_id)\n"
        "        import json, os\n"
        f"        if self.study.converged is not None and not os.path.exists({str(marker)!r}):\n"
        f"            with open({str(marker)!r}, 'w') as f:\n"
        "                json.dump({'submitted': self.nb_submitted_groups,\n"
        "                           **self.study.converged}, f)\n"
        "            self._fail('test: failing once after the convergence stop')\n")


def small_rule_study(tmp_path, ci_width: float, min_groups: int, extra: str = ""):
    copy_client(tmp_path)
    (tmp_path / "small_rule.py").write_text(
        "from melissa_sa.convergence import ConvergenceRule\n"
        "from melissa_sa.server import SensitivityAnalysisServer\n\n"
        "class SmallRuleServer(SensitivityAnalysisServer):\n"
        "    def convergence_rule(self):\n"
        f"        return ConvergenceRule({ci_width!r}, {min_groups!r})\n" + extra)
    return write_study(
        tmp_path, server_filename="small_rule.py", server_class="SmallRuleServer",
        study_options={"field_names": ["f"], "nb_parameters": P,
                       "parameter_sweep_size": SWEEP, "nb_time_steps": NB_STEPS,
                       "l_bounds": [-3.0, -1.0], "u_bounds": [3.0, 2.0]},
        sa_config={"mean": True, "variance": True, "sobol_indices": True},
        server_config={"server_processes": 2},
        launcher_config={"job_limit": 6, "server_timeout": 60, "fault_tolerance": False},
        client_config={"executable_command": "python analytic_client.py"})


def check_offline(r):
    ref, n_groups = offline(r, N_CELLS, P)
    for name in ("mean", "variance", "sobol_first", "sobol_total"):
        np.testing.assert_allclose(r.get("f", name), ref[name], rtol=1e-10, atol=1e-10,
                                   err_msg=name)
    return n_groups


def test_a_converged_study_stops_early_and_matches_offline(tmp_path):
    study = small_rule_study(tmp_path, ci_width=100.0, min_groups=8)   # met at once
    done = run_study(study)
    assert done.returncode == 0, done.stdout[-4000:]
    with open_results(tmp_path / "out" / "results.h5") as r:
        n_groups = check_offline(r)
    with h5py.File(tmp_path / "out" / "results.h5", "r") as h5:
        attrs = dict(h5.attrs)
    assert attrs["stopped_by"] == "convergence"
    assert attrs["convergence_ci_width"] == 100.0 and attrs["convergence_min_groups"] == 8
    assert 8 <= attrs["convergence_groups_at_stop"] <= n_groups < SWEEP
    assert attrs["groups_finished"] == n_groups == attrs["groups_submitted"]
    assert 0 < attrs["convergence_width_reached"] <= 100.0
    info = subprocess.run([MELISSA, "info", str(tmp_path / "out" / "results.h5")],
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    at_stop = attrs["convergence_groups_at_stop"]
    assert f"stopped by: convergence after {at_stop} groups (CI width " in info.stdout
    assert "/ target 100)" in info.stdout


def test_an_unmet_target_runs_the_whole_sweep(tmp_path):
    study = small_rule_study(tmp_path, ci_width=1e-9, min_groups=30)
    done = run_study(study)
    assert done.returncode == 0, done.stdout[-4000:]
    with open_results(tmp_path / "out" / "results.h5") as r:
        assert check_offline(r) == SWEEP
    with h5py.File(tmp_path / "out" / "results.h5", "r") as h5:
        attrs = dict(h5.attrs)
    assert attrs["stopped_by"] == "sweep_size"
    assert attrs["convergence_groups_at_stop"] == -1
    assert attrs["convergence_width_reached"] > 1e-9   # the last check's width


def test_the_stop_survives_a_checkpoint_and_resume(tmp_path):
    marker = tmp_path / "failed.json"
    study = small_rule_study(tmp_path, ci_width=100.0, min_groups=8,
                             extra=fail_after_stop(marker))
    done = run_study(study)
    assert done.returncode == 1, done.stdout[-4000:]
    saved = json.loads(marker.read_text())
    assert saved["submitted"] < SWEEP
    done = run_study(study, args=["--resume"])
    assert done.returncode == 0, done.stdout[-4000:]
    with open_results(tmp_path / "out" / "results.h5") as r:
        n_groups = check_offline(r)
    with h5py.File(tmp_path / "out" / "results.h5", "r") as h5:
        attrs = dict(h5.attrs)
    assert attrs["stopped_by"] == "convergence"
    assert attrs["convergence_groups_at_stop"] == saved["groups_at_stop"]
    # no group was drawn after the resume: the in-flight ones finished
    assert attrs["groups_submitted"] == saved["submitted"] == n_groups
