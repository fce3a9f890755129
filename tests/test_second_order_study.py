"""A study with ``sa_config.second_order: true``, end to end.

Groups of 2p + 2 runs (A, B, C_k, D_k) go through the sampler, the launcher,
two server ranks, checkpoints, fault tolerance and the results file. The
second-order datasets must equal an offline recomputation from the design
stored in ``/parameters`` and the client's formula, and the first- and
total-order indices must be those of the same study without second order.

Fold order and the second-order interval: a server folds the groups in the
order their runs finish. The indices (and the first- and total-order
intervals, built from co-moments) do not depend on that order beyond
rounding, and are compared to 1e-10 whatever the order. The second-order
interval uses prequential influence-function sums
(``melissa_sa/kernels/sobol_second.py``), which do: at 40 groups its width
moves by up to a factor 2 from one fold order to another (measured: 20
random orders of this design, relative spread 1.96, 0.77, 0.77 per pair;
0.24 at 400 groups). So the studies whose intervals are compared exactly
run one client at a time (``job_limit: 1``): groups then finish, and fold,
in group order, the order of the offline object. Where a restart or a
redraw reorders the groups, the interval is checked for containing its
index and for a positive width only.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_study
from studyutil import NB_STEPS, copy_client, folded_groups, offline, run_study

from melissa_sa import exit_codes
from melissa_sa.cli import main as cli_main
from melissa_sa.config import config_from_dict, load_config
from melissa_sa.design import GroupLayout
from melissa_sa.results import open_results
from melissa_sa.server.field_stats import (
    SECOND_NAMES,
    SOBOL_NAMES,
    LocalField,
    StepStatistics,
    collect_results,
)
from melissa_sa.server.snapshot import RankSnapshot, SnapshotError, load_rank, save_rank
from melissa_sa.stats import SobolMartinez

P, GROUPS, N_CELLS = 3, 16, 6
NAMES = ["x1", "x2", "x3"]
PAIRS = ["x1:x2", "x1:x3", "x2:x3"]
SIZE = 2 * P + 2
FIRST = ["sobol_first", "sobol_total", "sobol_first_low", "sobol_first_high",
         "sobol_total_low", "sobol_total_high"]


def make_study(tmp_path: Path, *, groups: int = GROUPS, second_order: bool = True,
               **overrides) -> Path:
    copy_client(tmp_path)
    (tmp_path / "faults").mkdir(exist_ok=True)
    sections = dict(
        study_options={"field_names": ["f"], "nb_parameters": P, "parameter_names": NAMES,
                       "parameter_sweep_size": groups, "nb_time_steps": NB_STEPS,
                       "l_bounds": [-3.0, -1.0, 0.0], "u_bounds": [3.0, 2.0, 1.0],
                       "simulation_timeout": 30, "crashes_before_redraw": 3, "seed": 7},
        sa_config={"mean": True, "variance": True, "sobol_indices": True,
                   "second_order": second_order, "checkpoint_interval": 16},
        server_config={"server_processes": 2},
        launcher_config={"job_limit": 1, "server_timeout": 30, "timer_delay": 0.5},
        client_config={"executable_command": f"python analytic_client.py --split {N_CELLS}"},
    )
    for key, value in overrides.items():
        sections[key] = {**sections.get(key, {}), **value}
    return write_study(tmp_path, **sections)


def fault_env(tmp_path: Path, plan: dict) -> dict:
    from conftest import child_env
    return child_env(TEST_FAULT_PLAN=json.dumps({str(k): v for k, v in plan.items()}),
                     TEST_FAULT_DIR=tmp_path / "faults")


def offline_sobol(r, p: int = P) -> list[SobolMartinez]:
    """One SobolMartinez(second_order=True) per time step, fed the folded groups in
    group order, rebuilt from /parameters and the client's formula."""
    y = folded_groups(r, N_CELLS, p)                        # (groups, 2p+2, steps, cells)
    out = []
    for t in range(NB_STEPS):
        s = SobolMartinez(N_CELLS, p, second_order=True)
        for g in y[:, :, t, :]:
            s.update(g)
        out.append(s)
    return out


def check_against_offline(r, p: int = P, *, in_group_order: bool = True) -> int:
    """Every dataset of ``r`` against the two offline recomputations; returns groups.

    ``in_group_order``: the study folded its groups in group order (one client
    at a time, no restart), so the second-order interval is compared too.
    """
    ref, n_groups = offline(r, N_CELLS, p)
    present = r.statistics("f")
    assert {"mean", "variance", "sobol_first", "sobol_total", "sobol_second"} <= set(present)
    for name, expected in ref.items():
        if name not in present:
            continue
        np.testing.assert_allclose(r.get("f", name), expected, rtol=1e-10, atol=1e-10,
                                   err_msg=name)
    np.testing.assert_array_equal(r.n_groups("f"), [n_groups] * NB_STEPS)
    np.testing.assert_array_equal(r.n_samples("f"), [2 * n_groups] * NB_STEPS)
    level = r.confidence("f")[0]
    for t, s in enumerate(offline_sobol(r, p)):
        first, total = s.indices
        (f_lo, f_hi), (t_lo, t_hi), (s_lo, s_hi) = s.confidence_interval(level)
        for name, value in (("sobol_first", first), ("sobol_total", total),
                            ("sobol_first_low", f_lo), ("sobol_first_high", f_hi),
                            ("sobol_total_low", t_lo), ("sobol_total_high", t_hi),
                            ("sobol_second", s.second_order)):
            np.testing.assert_allclose(r.get("f", name, t), value, rtol=1e-10, atol=1e-10,
                                       err_msg=f"{name} at step {t}")
        got_lo, got_hi = r.get("f", "sobol_second_low", t), r.get("f", "sobol_second_high", t)
        got = r.get("f", "sobol_second", t)
        # every non-constant cell: a proper interval around its index
        assert np.all(got_lo[:, 1:] < got[:, 1:]) and np.all(got[:, 1:] < got_hi[:, 1:])
        if in_group_order:
            for name, got_b, want in (("sobol_second_low", got_lo, s_lo),
                                      ("sobol_second_high", got_hi, s_hi)):
                np.testing.assert_allclose(got_b, want, rtol=1e-10, atol=1e-10,
                                           err_msg=f"{name} at step {t}")
        # the constant cell 0: index 0, degenerate interval
        assert np.all(got[:, 0] == 0) and np.all(got_lo[:, 0] == 0) and np.all(got_hi[:, 0] == 0)
    return n_groups


def check_design(table, n_groups: int) -> None:
    """/parameters holds whole groups of 2p + 2 rows laid out by GroupLayout."""
    layout = GroupLayout(P, second_order=True)
    keep = table.folded
    assert keep.sum() == n_groups * SIZE
    order = np.lexsort((table.member[keep], table.group_id[keep]))
    groups = table.values[keep][order].reshape(n_groups, SIZE, P)
    np.testing.assert_array_equal(groups, layout.build(groups[:, 0], groups[:, 1]))
    np.testing.assert_array_equal(table.sim_id, layout.sim_id(table.group_id, table.member))


# -- unit level: the server's statistics and checkpoint of one slice ------------------------

def small_config(**sa):
    return config_from_dict({
        "study_options": {"field_names": ["f"], "nb_parameters": P, "parameter_names": NAMES,
                          "parameter_sweep_size": 8, "nb_time_steps": 2},
        "sa_config": {"sobol_indices": True, "second_order": True, **sa},
        "client_config": {"executable_command": "true"}})


def test_step_statistics_fold_2p_plus_2_rows_and_collect_the_second_order():
    cfg = small_config()
    rng = np.random.default_rng(3)
    lf = LocalField("f", 0, 10, 15, [StepStatistics(5, cfg) for _ in range(2)])
    ref = [SobolMartinez(5, P, second_order=True) for _ in range(2)]
    for g in range(30):
        for t in range(2):
            rows = rng.normal(size=(SIZE, 5))
            lf.steps[t].fold_group(rows, g)
            ref[t].update(rows)
    assert lf.steps[0].sobol.has_second_order and lf.steps[0].n_samples == 60
    out = collect_results(lf, cfg)
    key = SOBOL_NAMES + SECOND_NAMES
    assert key in out and SOBOL_NAMES not in out
    for t in range(2):
        arrays = out[key](t)
        (f_lo, f_hi), (t_lo, t_hi), (s_lo, s_hi) = ref[t].confidence_interval(0.95)
        expected = (*ref[t].indices, f_lo, f_hi, t_lo, t_hi, ref[t].second_order, s_lo, s_hi)
        assert len(arrays) == 9
        for name, got, want in zip(key, arrays, expected, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=name)
    # without second order: the six datasets under their own key, groups of p + 2
    cfg1 = small_config(second_order=False)
    step = StepStatistics(5, cfg1)
    assert not step.sobol.has_second_order and step.layout.size == P + 2
    out1 = collect_results(LocalField("f", 0, 0, 5, [step, StepStatistics(5, cfg1)]), cfg1)
    assert SOBOL_NAMES in out1 and SOBOL_NAMES + SECOND_NAMES not in out1


def test_checkpoint_of_a_second_order_slice_round_trips_and_refuses_another_layout(tmp_path):
    cfg = small_config()
    rng = np.random.default_rng(4)
    lf = LocalField("f", 0, 0, 4, [StepStatistics(4, cfg) for _ in range(2)])
    for g in range(12):
        for step in lf.steps:
            step.fold_group(rng.normal(size=(SIZE, 4)), g)
    path = tmp_path / "rank.h5"
    with h5py.File(path, "w") as f:
        save_rank(f, RankSnapshot({"f": lf}, {"f": 4}, {}), cfg, 1, 2)
    with h5py.File(path, "r") as f:
        snap = load_rank(f, cfg, ["f"], lambda n: [(0, n)], 0)
    for before, after in zip(lf.steps, snap.fields["f"].steps, strict=True):
        assert after.sobol.has_second_order
        np.testing.assert_array_equal(after.sobol.second_order, before.sobol.second_order)
        after.sobol.update(np.ones((SIZE, 4)), 12)  # still takes groups of 2p + 2
    for patch, key in (({"second_order": False}, "sa_config.second_order"),
                       ({"sobol_indices": False, "second_order": False},
                        "sa_config.sobol_indices")):
        other = small_config(**patch)
        with h5py.File(path, "r") as f, pytest.raises(SnapshotError, match=key) as info:
            load_rank(f, other, ["f"], lambda n: [(0, n)], 0)
        assert "groups have 8 runs" in str(info.value)


def test_warm_up_of_a_one_parameter_study():
    """The server warms the kernels with its nb_parameters: 1 (no Sobol') must work
    although second-order objects need a pair."""
    from melissa_sa.warmup import warm_up

    assert warm_up(1) >= 0.0


def test_convergence_rule_counts_first_and_total_order_only():
    """With second order on, the stopping rule sees the same widths as without:
    second-order intervals do not count (docs/statistics.md, "The rule")."""
    from melissa_sa.convergence import local_summary

    rng = np.random.default_rng(5)
    with_second = [SobolMartinez(7, P, second_order=True) for _ in range(2)]
    without = [SobolMartinez(7, P) for _ in range(2)]
    for _ in range(40):
        for a, b in zip(with_second, without, strict=True):
            rows = rng.normal(size=(SIZE, 7)) + rng.normal(size=7)
            a.update(rows)
            b.update(rows[:P + 2])
    variances = [np.ones(7), np.ones(7)]
    got = local_summary(with_second, variances, [0.0, 0.0], 0.95)
    assert got == local_summary(without, variances, [0.0, 0.0], 0.95)
    assert got.kind in ("first", "total") and got.n_counted == 14
    cfg = config_from_dict({
        "study_options": {"field_names": ["f"], "nb_parameters": P,
                          "parameter_sweep_size": 400, "nb_time_steps": 2},
        "sa_config": {"sobol_indices": True, "second_order": True,
                      "convergence": {"ci_width": 0.1, "min_groups": 200}},
        "client_config": {"executable_command": "true"}})
    assert cfg.layout.second_order and cfg.sa_config.convergence.ci_width == 0.1


# -- whole studies through the launcher ------------------------------------------------------

@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The second-order study and the same study without second order."""
    out = {}
    for second in (True, False):
        tmp = tmp_path_factory.mktemp("second" if second else "first")
        # the study without second order compares order-free numbers only
        extra = {} if second else {"launcher_config": {"job_limit": 4}}
        done = run_study(make_study(tmp, second_order=second, **extra), timeout=900)
        assert done.returncode == 0, done.stdout[-4000:]
        out[second] = tmp / "out" / "results.h5"
    return out


def test_second_order_study_matches_offline_recomputation(studies):
    with open_results(studies[True]) as r:
        assert r.pair_names("f") == tuple(PAIRS)
        pairs = r.pair_names("f")                  # the calls docs/results.md shows
        s12 = r.get("f", "sobol_second", time_step=-1)[pairs.index("x1:x2")]
        np.testing.assert_array_equal(s12, r.h5["f"]["sobol_second"][0, -1, :])
        assert r.h5["f"]["sobol_second"].shape == (len(PAIRS), NB_STEPS, N_CELLS)
        dims = r.h5["f"]["sobol_second"].dims
        assert [dims[i][0].name for i in range(3)] == ["/f/pair", "/f/time_step", "/f/cell"]
        assert list(combinations(range(P), 2)) == [(0, 1), (0, 2), (1, 2)]
        assert r.config["sa_config"]["second_order"] is True
        assert check_against_offline(r) == GROUPS
        check_design(r.parameters, GROUPS)


def test_first_and_total_order_equal_the_study_without_second_order(studies):
    with open_results(studies[True]) as second, open_results(studies[False]) as first:
        assert "sobol_second" not in first.statistics("f") and "pair" not in first.h5["f"]
        for r in (first, second):  # the field group's interval attributes, with Sobol'
            assert r.h5["f"].attrs["confidence_level"] == 0.95
            assert r.h5["f"].attrs["ci_method"] == "delta"
        t2, t1 = second.parameters, first.parameters
        rows2 = t2.values[np.lexsort((t2.member, t2.group_id))].reshape(GROUPS, SIZE, P)
        rows1 = t1.values[np.lexsort((t1.member, t1.group_id))].reshape(GROUPS, P + 2, P)
        np.testing.assert_array_equal(rows2[:, :P + 2], rows1)   # same draws, same C_k
        for name in [*FIRST, "mean", "variance"]:
            np.testing.assert_allclose(second.get("f", name), first.get("f", name),
                                       rtol=1e-10, atol=1e-12, err_msg=name)
        np.testing.assert_array_equal(second.n_samples("f"), first.n_samples("f"))
        np.testing.assert_array_equal(second.n_groups("f"), first.n_groups("f"))


def test_info_prints_the_second_order_indices_per_pair(studies, capsys):
    assert cli_main(["info", str(studies[True])]) == exit_codes.OK
    text = capsys.readouterr().out
    last = NB_STEPS - 1
    assert f"second-order Sobol' indices at the last time step ({last}), over cells:" in text
    with open_results(studies[True]) as r:
        s = r.get("f", "sobol_second", last)
        width = r.get("f", "sobol_second_high", last) - r.get("f", "sobol_second_low", last)
    for q, pair in enumerate(PAIRS):
        line = next(x for x in text.splitlines() if x.strip().startswith(pair + " "))
        assert f"mean {s[q].mean():.3g}" in line and f"max {s[q].max():.3g}" in line
        assert f"mean 95% CI width {width[q].mean():.3g}" in line
    assert cli_main(["info", str(studies[False])]) == exit_codes.OK
    assert "second-order" not in capsys.readouterr().out


def test_plot_second_order_bars_and_maps(studies, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = str(studies[True])
    for args in (["--stat", "second"], ["--stat", "second", "--cell", "3", "--time-step", "0"],
                 ["--stat", "sobol_second", "--index", "2"]):
        png = tmp_path / f"{len(args)}.png"
        assert cli_main(["plot", path, *args, "-o", str(png)]) == exit_codes.OK, args
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["plot", path, "--stat", "sobol_second", "--index", "3",
                     "-o", str(tmp_path / "x.png")]) == exit_codes.FAILED
    assert "--index 3 out of range for sobol_second (0..2)" in capsys.readouterr().err
    assert cli_main(["plot", str(studies[False]), "--stat", "second",
                     "-o", str(tmp_path / "y.png")]) == exit_codes.FAILED
    assert "has no 'sobol_second'" in capsys.readouterr().err


def test_dry_run_names_the_d_rows(tmp_path, capsys):
    study = make_study(tmp_path, groups=2)
    assert cli_main(["run", str(study), "--dry-run"]) == exit_codes.OK
    err = capsys.readouterr().err
    assert f"2 pick-freeze groups of {SIZE} runs (A, B, C_1..C_3, D_1..D_3) -> 16 " in err
    assert "group 0 D_3 " in err and "sim 7 " in err


def test_client_killed_and_group_redrawn_with_second_order(tmp_path):
    """A D-row client killed once (restarted), a group whose C-row client always
    fails (abandoned, redrawn as a new group of 2p + 2 runs): the results are
    those of the groups folded."""
    groups = 10
    plan = {1 * SIZE + GroupLayout(P, second_order=True).D(0): {"mode": "kill", "step": 1},
            2 * SIZE + 3: {"mode": "exit", "step": 0, "times": 5}}
    study = make_study(tmp_path, groups=groups, study_options={"crashes_before_redraw": 2},
                       launcher_config={"job_limit": 4})
    done = run_study(study, env=fault_env(tmp_path, plan), timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    with open_results(tmp_path / "out" / "results.h5") as r:
        table = r.parameters
        assert not table.folded[table.group_id == 2].any()
        replacement = table.redrawn & table.folded
        assert replacement.sum() == SIZE and set(table.group_id[replacement]) == {groups}
        assert check_against_offline(r, in_group_order=False) == groups
        check_design(r.parameters, groups)
    log = (tmp_path / "out" / "logs" / "server.log").read_text()
    assert f"group 2 abandoned, its parameters redrawn as group {groups}" in log
    assert "restarting it" in log


def test_checkpoint_and_resume_with_second_order(tmp_path):
    """Fault tolerance off: a failed client stops the study with a checkpoint;
    --resume finishes it with the same results as the offline recomputation. The
    checkpoint refuses a config whose groups have another size."""
    from melissa_sa.checkpoint import find_latest_checkpoint
    from melissa_sa.server.intake import partition

    groups = 8
    plan = {4 * SIZE + 6: {"mode": "exit", "step": 1}}
    study = make_study(tmp_path, groups=groups, sa_config={"checkpoint_interval": 8},
                       launcher_config={"fault_tolerance": False})
    env = fault_env(tmp_path, plan)
    done = run_study(study, env=env, timeout=600)
    assert done.returncode == 1, done.stdout[-4000:]
    assert f"simulation {4 * SIZE + 6} exited with code 1" in done.stdout
    ckpt = tmp_path / "out" / "checkpoint"
    found = find_latest_checkpoint(ckpt, 2)
    assert found is not None
    cfg = load_config(study)
    flipped = cfg.updated({"sa_config": {"second_order": False}})
    with found.open_rank(0) as f:
        completion = json.loads(f.attrs["completion"])
        assert completion["sampler"]["second_order"] is True
        snap = load_rank(f, cfg, ["f"], lambda n: partition(n, 2), 0)
        assert snap.fields["f"].steps[0].sobol.has_second_order
        with pytest.raises(SnapshotError, match="sa_config.second_order = true, the config "
                                                "says false: its groups have 8 runs, not 5"):
            load_rank(f, flipped, ["f"], lambda n: partition(n, 2), 0)
    done = run_study(study, env=env, args=["--resume"], timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    log = (tmp_path / "out" / "logs" / "server.log").read_text()
    assert "restarted from checkpoint set" in log
    with open_results(tmp_path / "out" / "results.h5") as r:
        assert check_against_offline(r) == groups
        check_design(r.parameters, groups)
