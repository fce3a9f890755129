"""End to end through `melissa-sa run`: launcher, 2 server ranks, 2-rank clients.

The results must equal an offline NumPy/SciPy computation over the design
recorded in results.h5, to 1e-10.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_study
from studyutil import NB_STEPS, copy_client, offline, run_study

from melissa_sa.results import open_results


def test_two_server_ranks_uneven_mpi_clients_match_offline(tmp_path):
    n_cells, p, groups = 11, 2, 4  # 8 independent runs: quantiles are still exact
    copy_client(tmp_path)
    study = write_study(
        tmp_path,
        study_options={"field_names": ["f"], "nb_parameters": p,
                       "parameter_sweep_size": groups, "nb_time_steps": NB_STEPS,
                       "l_bounds": [-3.0, -1.0], "u_bounds": [3.0, 2.0]},
        sa_config={"mean": True, "variance": True, "skewness": True, "kurtosis": True,
                   "min": True, "max": True, "threshold_exceedance": [5.0],
                   "quantiles": [0.25, 0.5], "sobol_indices": True},
        server_config={"server_processes": 2},
        launcher_config={"job_limit": 4, "server_timeout": 60, "fault_tolerance": False},
        client_config={"executable_command": "python analytic_client.py --split 3,8",
                       "client_processes": 2},
    )
    done = run_study(study)
    assert done.returncode == 0, done.stdout[-4000:]
    with open_results(tmp_path / "out" / "results.h5") as r:
        assert r.fields == ("f",)
        ref, n_groups = offline(r, n_cells, p)
        assert n_groups == groups
        np.testing.assert_array_equal(r.n_samples("f"), [2 * groups] * NB_STEPS)
        for name, expected in ref.items():
            got = r.get("f", name)
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10, err_msg=name)
        cfg = r.config
        dropped = json.loads(r.h5.attrs["dropped_messages"])
    assert cfg["server_config"]["server_processes"] == 2
    assert dropped == {}, dropped


ISHIGAMI = Path(__file__).resolve().parent.parent / "examples" / "ishigami"
Z999_OVER_Z95 = 3.2905 / 1.9600  # widen the stored 95% interval to 99.9%


def run_ishigami(tmp_path, groups: int, cells: int = 20, steps: int = 2,
                 sampler: str | None = None):
    for name in ("ishigami.py", "analytic.py"):
        (tmp_path / name).write_text((ISHIGAMI / name).read_text())
    config = json.loads((ISHIGAMI / "study.json").read_text())
    config["output_dir"] = "out"
    config["study_options"].update(parameter_sweep_size=groups, nb_time_steps=steps)
    if sampler:
        config["study_options"]["sampler"] = sampler
    config["client_config"]["executable_command"] = (
        f"python ishigami.py --cells {cells} --steps {steps}")
    ports = json.loads(write_study(tmp_path).read_text())["server_config"]  # free ports
    config["server_config"].update(ports, server_processes=2)
    study = tmp_path / "study.json"
    study.write_text(json.dumps(config))
    done = run_study(study, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:]
    sys.path.insert(0, str(tmp_path))
    try:
        import analytic
    finally:
        sys.path.remove(str(tmp_path))
    a, b = analytic.cell_coefficients(cells)
    first, total = (np.array(v) for v in analytic.analytic_indices(a, b))
    return tmp_path / "out" / "results.h5", first, total


def check_near_analytic(r, first, total, widen: float) -> None:
    for name, exact in (("sobol_first", first), ("sobol_total", total)):
        est = r.get("y", name)                      # (3, steps, cells)
        half = (r.get("y", name + "_high") - r.get("y", name + "_low")) / 2
        err = np.abs(est - exact[:, None, :])
        assert np.all(err <= widen * half), (
            f"{name}: worst error {err.max():.3f}, allowed {(widen * half).min():.3f}")


def test_ishigami_field_indices_near_analytic(tmp_path):
    """The whole chain on a field with known indices (32 groups: a chain check;
    each estimate must lie within its own interval widened to 99.9%)."""
    path, first, total = run_ishigami(tmp_path, groups=32)
    with open_results(path) as r:
        np.testing.assert_array_equal(r.n_groups("y"), [32, 32])
        check_near_analytic(r, first, total, Z999_OVER_Z95)


def ishigami_two_pass(results, cells: int, ishigami):
    """First and total indices recomputed two-pass from the design ``results``
    records and the Ishigami formula: ``(3, cells)`` each, for time step 0."""
    params = results.parameters
    keep = params.folded
    order = np.lexsort((params.member[keep], params.group_id[keep]))
    x = params.values[keep][order].reshape(-1, 5, 3)           # (groups, A B C1 C2 C3, p)
    a, b = ishigami.cell_coefficients(cells)
    y = ishigami.ishigami(x[..., 0, None], x[..., 1, None], x[..., 2, None],
                          np.asarray(a), np.asarray(b))         # (groups, 5, cells)
    first = np.array([[np.corrcoef(y[:, 1, c], y[:, 2 + k, c])[0, 1] for c in range(cells)]
                      for k in range(3)])
    total = np.array([[1 - np.corrcoef(y[:, 0, c], y[:, 2 + k, c])[0, 1]
                       for c in range(cells)] for k in range(3)])
    return first, total


@pytest.mark.slow
def test_ishigami_512_groups_exact_on_its_design_and_mostly_near_analytic(tmp_path):
    """512 groups of independent draws through the whole chain.

    Exact: the indices equal the two-pass estimate on the study's own design
    to 1e-10 (the one-pass fold does not drift over many groups). Near the
    closed form: at least 95 % of the 300 (index, parameter, cell) estimates
    lie within their interval widened to 99.9 %, and every one at the classic
    Ishigami cell (a = 7, b = 0.1); with 300 estimates at 99.9 %, about 0.3
    would fall outside by chance. Independent draws (``random_uniform``), not
    the example's Sobol' sequence: the interval is built for independent
    groups, and on one 512-point Sobol' design it can miss
    (docs/statistics.md, *Coverage on a quasi-random design*: with the
    example's seed 0, S3 of the last cell is off by 0.33 against a 95 %
    half-width of 0.06).
    """
    cells = 50
    path, first, total = run_ishigami(tmp_path, groups=512, cells=cells, steps=1,
                                      sampler="random_uniform")
    sys.path.insert(0, str(tmp_path))
    try:
        import analytic
    finally:
        sys.path.remove(str(tmp_path))
    with open_results(path) as r:
        np.testing.assert_array_equal(r.n_groups("y"), [512])
        two_pass = ishigami_two_pass(r, cells, analytic)
        inside = []
        for name, exact, offline_estimate in zip(("sobol_first", "sobol_total"),
                                                 (first, total), two_pass, strict=True):
            est = r.get("y", name)[:, 0]                        # (3, cells)
            np.testing.assert_allclose(est, offline_estimate, rtol=0, atol=1e-10,
                                       err_msg=name)
            half = (r.get("y", name + "_high") - r.get("y", name + "_low"))[:, 0] / 2
            ok = np.abs(est - exact) <= Z999_OVER_Z95 * half
            assert ok[:, 0].all(), f"{name} at the classic cell: {est[:, 0]} vs {exact[:, 0]}"
            inside.append(ok)
    share = np.mean(inside)
    assert share >= 0.95, f"only {share:.1%} of the estimates within their widened interval"


def test_user_server_subclass_is_loaded(tmp_path):
    copy_client(tmp_path)
    (tmp_path / "my_server.py").write_text(
        "from melissa_sa.server import SensitivityAnalysisServer\n\n"
        "class MyServer(SensitivityAnalysisServer):\n"
        "    def on_group_finished(self, group_id):\n"
        "        super().on_group_finished(group_id)\n"
        "        with open('groups_seen.txt', 'a') as f:\n"
        "            f.write(f'{group_id}\\n')\n")
    study = write_study(
        tmp_path, server_filename="my_server.py", server_class="MyServer",
        study_options={"nb_time_steps": NB_STEPS, "parameter_sweep_size": 3},
        client_config={"executable_command": "python analytic_client.py"})
    done = run_study(study)
    assert done.returncode == 0, done.stdout[-4000:]
    seen = sorted(int(v) for v in (tmp_path / "groups_seen.txt").read_text().split())
    assert seen == [0, 1, 2]


def test_failed_client_without_fault_tolerance_ends_the_study(tmp_path):
    (tmp_path / "crash.py").write_text("import sys; sys.exit(3)\n")
    study = write_study(
        tmp_path, study_options={"parameter_sweep_size": 2},
        launcher_config={"fault_tolerance": False, "job_limit": 1},
        client_config={"executable_command": "python crash.py"})
    done = run_study(study, timeout=120)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "exited with code 3 and fault tolerance is off" in done.stdout


def test_offline_study_runs_the_design_without_streaming(tmp_path):
    """make_study_offline: clients run without a server address; each exit 0
    completes its simulation; the results hold the design and no samples."""
    copy_client(tmp_path)
    (tmp_path / "offline_server.py").write_text(
        "from melissa_sa.server import SensitivityAnalysisServer\n\n"
        "class OfflineServer(SensitivityAnalysisServer):\n"
        "    def setup_environment(self):\n"
        "        self.make_study_offline()\n")
    study = write_study(
        tmp_path, server_filename="offline_server.py", server_class="OfflineServer",
        study_options={"nb_time_steps": NB_STEPS, "parameter_sweep_size": 3},
        client_config={"executable_command": "python analytic_client.py"})
    done = run_study(study, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:]
    with open_results(tmp_path / "out" / "results.h5") as r:
        assert r.parameters.n_runs == 3 and r.parameters.folded.all()
        np.testing.assert_array_equal(r.n_samples("f"), [0] * NB_STEPS)
