"""Tests of melissa_sa.sampling: samplers, resumability, pick-freeze, laws."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from melissa_sa.sampling import (
    SAMPLER_NAMES,
    HaltonSampler,
    LHSSampler,
    ParameterSampler,
    ParameterSamplerType,
    PickFreezeDesign,
    RandomUniformSampler,
    SobolSampler,
    make_sampler,
    pick_freeze_groups,
    restore_sampler,
)

TYPES = list(ParameterSamplerType)
L = [-1.0, 0.0, 10.0]
U = [1.0, 0.5, 20.0]


def new(t, seed=3, **kw):
    kw.setdefault("nb_parameters", 3)
    if kw["nb_parameters"] == 3:
        kw.setdefault("l_bounds", L)
        kw.setdefault("u_bounds", U)
    return make_sampler(t, seed=seed, **kw)


@pytest.mark.parametrize("t", TYPES)
def test_shape_dtype_and_bounds(t):
    x = new(t).draw(300)
    assert x.shape == (300, 3) and x.dtype == np.float64
    assert np.all(x >= L) and np.all(x < U)
    # fills the box (not stuck in a corner)
    assert np.all(x.min(axis=0) < np.add(L, 0.05 * np.subtract(U, L)))
    assert np.all(x.max(axis=0) > np.subtract(U, 0.05 * np.subtract(U, L)))


@pytest.mark.parametrize("t", TYPES)
def test_reproducible_by_seed(t):
    assert np.array_equal(new(t, seed=7).draw(50), new(t, seed=7).draw(50))
    assert not np.array_equal(new(t, seed=7).draw(50), new(t, seed=8).draw(50))


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("n, m", [(1, 1), (3, 5), (7, 64), (64, 65), (100, 29)])
def test_split_draws_equal_one_draw(t, n, m):
    s = new(t)
    first, second = s.draw(n), s.draw(m)
    assert s.position == n + m
    whole = new(t).draw(n + m)
    assert np.array_equal(np.vstack([first, second]), whole)
    # successive draws never repeat points
    assert len(np.unique(whole, axis=0)) == n + m


@settings(max_examples=30, deadline=None)
@given(t=st.sampled_from(TYPES), cuts=st.lists(st.integers(0, 40), min_size=1, max_size=5))
def test_any_sequence_of_draws_is_one_stream(t, cuts):
    s = new(t)
    parts = [s.draw(c) for c in cuts]
    assert np.array_equal(np.vstack(parts), new(t).draw(sum(cuts)))


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("k", [0, 1, 13, 64, 200])
def test_restore_from_position(t, k):
    s = new(t)
    s.draw(k)
    expected = s.draw(9)
    # fast_forward / seek on a fresh sampler
    f = new(t)
    f.fast_forward(k)
    assert f.position == k
    assert np.array_equal(f.draw(9), expected)
    g = new(t)
    g.draw(k + 20)
    g.seek(k)  # backwards
    assert np.array_equal(g.draw(9), expected)
    # draw_at does not move the sampler
    assert np.array_equal(s.draw_at(k, 9), expected)
    assert s.position == k + 9


@pytest.mark.parametrize("t", TYPES)
def test_state_dict_round_trip(t):
    s = new(t)
    s.draw(37)
    state = json.loads(json.dumps(s.state_dict()))  # as a checkpoint would store it
    assert state["position"] == 37 and state["sampler"] == t.value
    r = restore_sampler(state)
    assert type(r) is type(s) and r.position == 37
    assert np.array_equal(r.draw(11), s.draw(11))
    # load_state into a sampler built from the config again
    fresh = new(t)
    fresh.load_state(state)
    assert np.array_equal(fresh.draw(5), new(t).draw_at(37, 5))
    assert ParameterSampler.from_state(state).position == 37


def test_load_state_refuses_other_seed_or_sampler():
    state = new("sobol", seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        new("sobol", seed=2).load_state(state)
    with pytest.raises(ValueError, match="halton"):
        new("halton", seed=1).load_state(state)


def test_names_and_enum_resolution():
    assert SAMPLER_NAMES == ("random_uniform", "lhs", "halton", "sobol")
    classes = [RandomUniformSampler, LHSSampler, HaltonSampler, SobolSampler]
    for t, cls in zip(TYPES, classes, strict=True):
        assert type(make_sampler(t, nb_parameters=2)) is cls
        assert type(make_sampler(t.value, nb_parameters=2)) is cls
        assert type(make_sampler(t.name, nb_parameters=2)) is cls  # "SOBOL"
        assert type(make_sampler(cls, nb_parameters=2)) is cls


def test_bad_sampler_name():
    with pytest.raises(ValueError, match=r"unknown sampler 'sobl'; did you mean 'sobol'\?"):
        make_sampler("sobl", nb_parameters=2)
    with pytest.raises(TypeError):
        make_sampler(42, nb_parameters=2)
    with pytest.raises(TypeError):
        make_sampler(dict, nb_parameters=2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="l_bounds"):
        make_sampler("sobol", nb_parameters=2, l_bounds=[0, 1], u_bounds=[1, 1])
    with pytest.raises(ValueError, match="3 values"):
        make_sampler("sobol", nb_parameters=3, l_bounds=[0, 0])
    with pytest.raises(ValueError, match="seed"):
        make_sampler("sobol", nb_parameters=2, seed=-1)
    with pytest.raises(TypeError):
        make_sampler("sobol", nb_parameters=2, not_a_kwarg=1)
    with pytest.raises(ValueError, match="second_order=True needs apply_pick_freeze"):
        make_sampler("sobol", nb_parameters=2, second_order=True)
    with pytest.raises(ValueError, match="second_order: .* at least 2 parameters"):
        make_sampler("sobol", nb_parameters=1, apply_pick_freeze=True, second_order=True)


def test_sobol_power_of_two_warning_suppressed():
    s = new("sobol")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.draw(3)
        s.draw(5)
        make_sampler("sobol", nb_parameters=2, apply_pick_freeze=True).draw_groups(7)


def test_sobol_is_low_discrepancy():
    from scipy.stats import qmc

    sob = make_sampler("sobol", nb_parameters=2, seed=0).draw(256)
    rnd = make_sampler("random_uniform", nb_parameters=2, seed=0).draw(256)
    assert qmc.discrepancy(sob) < qmc.discrepancy(rnd) / 5


def test_lhs_blocks_are_latin_hypercubes():
    s = make_sampler("lhs", nb_parameters=3, seed=5, block_size=20)
    x = s.draw(60)
    for b in range(3):
        block = x[20 * b:20 * (b + 1)]
        for k in range(3):
            strata = np.sort(np.floor(block[:, k] * 20).astype(int))
            assert np.array_equal(strata, np.arange(20))
    assert s.state_dict()["params"]["block_size"] == 20


# --------------------------------------------------------------------------- pick-freeze


@pytest.mark.parametrize("t", TYPES)
def test_pick_freeze_structure(t):
    p = 4
    design = make_sampler(t, nb_parameters=p, seed=2, apply_pick_freeze=True,
                          l_bounds=[0, 1, 2, 3], u_bounds=[1, 2, 3, 4])
    assert isinstance(design, PickFreezeDesign)
    assert design.group_size == p + 2 and design.nb_parameters == p
    g = design.draw_groups(16)
    assert g.shape == (16, p + 2, p)
    a, b = g[:, 0], g[:, 1]
    for k in range(p):
        c = g[:, 2 + k]
        others = [j for j in range(p) if j != k]
        assert np.array_equal(c[:, others], a[:, others])
        assert np.array_equal(c[:, k], b[:, k])
    assert not np.any(a == b)
    assert np.all(g >= [0, 1, 2, 3]) and np.all(g < [1, 2, 3, 4])


def test_pick_freeze_a_and_b_come_from_one_2p_sequence():
    p = 3
    design = make_sampler("sobol", nb_parameters=p, seed=4, apply_pick_freeze=True)
    g = design.draw_groups(8)
    joint = make_sampler("sobol", nb_parameters=2 * p, seed=4).draw(8)
    assert np.array_equal(g[:, 0], joint[:, :p])
    assert np.array_equal(g[:, 1], joint[:, p:])
    # same thing through the function on a 2p sampler
    g2 = pick_freeze_groups(make_sampler("sobol", nb_parameters=2 * p, seed=4), 8)
    assert np.array_equal(g, g2)
    with pytest.raises(ValueError, match="even"):
        pick_freeze_groups(make_sampler("sobol", nb_parameters=3), 2)


def test_pick_freeze_rows_are_the_group_layouts():
    """The design asks melissa_sa.design.GroupLayout for its rows: one home."""
    from melissa_sa.design import GroupLayout

    p = 3
    design = make_sampler("halton", nb_parameters=p, seed=1, apply_pick_freeze=True)
    assert design.layout == GroupLayout(p) and design.group_size == GroupLayout(p).size
    g = design.draw_groups(6)
    joint = make_sampler("halton", nb_parameters=2 * p, seed=1).draw(6)
    assert np.array_equal(g, GroupLayout(p).build(joint[:, :p], joint[:, p:]))


def test_pick_freeze_a_b_independent():
    g = make_sampler("sobol", nb_parameters=3, seed=0, apply_pick_freeze=True).draw_groups(1024)
    corr = np.corrcoef(np.hstack([g[:, 0], g[:, 1]]).T)[:3, 3:]
    assert np.max(np.abs(corr)) < 0.05


@pytest.mark.parametrize("t", TYPES)
def test_pick_freeze_restore_and_redraw(t):
    design = make_sampler(t, nb_parameters=2, seed=9, apply_pick_freeze=True)
    first = design.draw_groups(5)
    replacement = design.redraw()  # a fresh group continuing the sequence
    assert design.position == 6 and design.n_redraws == 1
    assert not any(np.array_equal(replacement, g) for g in first)
    state = json.loads(json.dumps(design.state_dict()))
    assert state["pick_freeze"] is True and state["position"] == 6
    restored = restore_sampler(state)
    assert isinstance(restored, PickFreezeDesign) and restored.n_redraws == 1
    nxt = design.next_group()
    assert np.array_equal(restored.next_group(), nxt)
    # the stream is the same whether a group was a redraw or not
    whole = make_sampler(t, nb_parameters=2, seed=9, apply_pick_freeze=True).draw_groups(7)
    assert np.array_equal(whole[5], replacement) and np.array_equal(whole[6], nxt)
    assert np.array_equal(design.draw_groups_at(0, 5), first)
    fresh = make_sampler(t, nb_parameters=2, seed=9, apply_pick_freeze=True)
    fresh.load_state(state)
    assert fresh.position == 6
    with pytest.raises(ValueError, match="pick-freeze"):
        fresh.load_state(make_sampler(t, nb_parameters=4, seed=9).state_dict())


def test_plain_sampler_group_interface():
    s = new("halton")
    g = s.draw_groups(4)
    assert g.shape == (4, 1, 3) and s.group_size == 1
    assert s.next_group().shape == (1, 3)
    assert s.redraw().shape == (1, 3) and s.n_redraws == 1 and s.position == 6


# --------------------------------------------------------------------------- laws


DISTS = [
    {"law": "normal", "mean": 2.0, "std": 0.5},
    {"law": "lognormal", "mean": 0.1, "sigma": 0.4},
    {"law": "truncnorm", "mean": 0.0, "std": 1.0, "low": -0.5, "high": 2.0},
    {"law": "uniform"},
]
FROZEN = [
    stats.norm(2.0, 0.5),
    stats.lognorm(s=0.4, scale=np.exp(0.1)),
    stats.truncnorm(-0.5, 2.0),
    stats.uniform(3.0, 2.0),
]


@pytest.mark.parametrize("t", TYPES)
def test_marginal_laws_ks(t):
    s = make_sampler(t, nb_parameters=4, seed=11, distributions=DISTS,
                     l_bounds=[0, 0, 0, 3], u_bounds=[1, 1, 1, 5])
    x = s.draw(2048)
    assert np.all(np.isfinite(x))
    for k, frozen in enumerate(FROZEN):
        res = stats.kstest(x[:, k], frozen.cdf)
        assert res.statistic < 0.04, (k, res)
    assert np.all((x[:, 2] >= -0.5) & (x[:, 2] <= 2.0))
    assert np.all(x[:, 1] > 0)


def test_truncnorm_defaults_to_bounds_and_pick_freeze_with_laws():
    design = make_sampler("sobol", nb_parameters=2, seed=1, apply_pick_freeze=True,
                          l_bounds=[1, 0], u_bounds=[2, 1],
                          distributions=[{"law": "truncnorm", "mean": 1.5, "std": 3},
                                         {"law": "normal", "mean": 0, "std": 1}])
    g = design.draw_groups(512)
    assert np.all((g[..., 0] >= 1) & (g[..., 0] <= 2))
    assert stats.kstest(g[:, 1, 1], stats.norm().cdf).statistic < 0.05
    assert restore_sampler(design.state_dict()).position == 512


@pytest.mark.parametrize("dists, match", [
    ([{"law": "gaussian"}, {"law": "uniform"}], "unknown law"),
    ([{"law": "normal", "mean": 0}, {"law": "uniform"}], "needs 'std'"),
    ([{"law": "normal", "mean": 0, "std": -1}, {"law": "uniform"}], "std"),
    ([{"law": "uniform"}], "2 entries"),
    ([{"law": "truncnorm", "mean": 0, "std": 1, "low": 1, "high": 0}, {"law": "uniform"}],
     "low < high"),
])
def test_bad_distributions(dists, match):
    with pytest.raises(ValueError, match=match):
        make_sampler("sobol", nb_parameters=2, distributions=dists)


# --------------------------------------------------------------------------- user samplers


class GridSampler(ParameterSampler):
    """A user sampler: a deterministic shifted 1-D lattice with its own option."""

    name = "grid"

    def __init__(self, nb_parameters, *, step=0.1, **kwargs):
        self.step = step
        super().__init__(nb_parameters, **kwargs)

    def _reset(self):
        self._i = 0

    def _unit(self, n):
        i = self._i + np.arange(n)
        self._i += n
        u = (self.seed * 0.01 + i[:, None] * self.step * np.arange(1, self.dim + 1)) % 1.0
        return u


def test_user_subclass_gets_kwargs_and_resumes():
    s = make_sampler(GridSampler, nb_parameters=2, step=0.25, seed=0, l_bounds=[0, 0],
                     u_bounds=[4, 8])
    assert isinstance(s, GridSampler) and s.step == 0.25
    x = s.draw(3)
    assert np.allclose(x, [[0, 0], [1, 4], [2, 0]])
    state = json.loads(json.dumps(s.state_dict()))
    assert state["params"]["step"] == 0.25 and state["sampler"] == "grid"
    with pytest.raises(ValueError, match="user sampler"):
        restore_sampler(state)
    r = restore_sampler(state, GridSampler)
    assert r.step == 0.25 and np.array_equal(r.draw(4), s.draw(4))
    assert GridSampler.from_state(state).position == 3


def test_user_subclass_pick_freeze():
    design = make_sampler(GridSampler, nb_parameters=2, step=0.125, apply_pick_freeze=True)
    assert isinstance(design, PickFreezeDesign) and design.sampler.nb_parameters == 4
    g = design.draw_groups(3)
    assert g.shape == (3, 4, 2)
    restored = restore_sampler(design.state_dict(), GridSampler)
    assert np.array_equal(restored.next_group(), design.next_group())


def test_abstract_base_refused():
    with pytest.raises(TypeError):
        make_sampler(ParameterSampler, nb_parameters=2)


# --------------------------------------------------------------------------- second order


@pytest.mark.parametrize("t", TYPES)
def test_second_order_groups_are_2p_plus_2_rows(t):
    """Rows A, B, C_1..C_p, D_1..D_p: D_k is B with column k taken from A."""
    p = 3
    design = make_sampler(t, nb_parameters=p, seed=3, apply_pick_freeze=True,
                          second_order=True, l_bounds=[0, 1, 2], u_bounds=[1, 2, 3])
    assert design.layout.second_order and design.group_size == 2 * p + 2
    g = design.draw_groups(12)
    assert g.shape == (12, 2 * p + 2, p)
    a, b = g[:, 0], g[:, 1]
    for k in range(p):
        others = [j for j in range(p) if j != k]
        c, d = g[:, 2 + k], g[:, 2 + p + k]
        assert np.array_equal(c[:, others], a[:, others]) and np.array_equal(c[:, k], b[:, k])
        assert np.array_equal(d[:, others], b[:, others]) and np.array_equal(d[:, k], a[:, k])
    # C_i and D_j share exactly the columns i and j when i != j (the closed index of {i, j})
    for i in range(p):
        for j in range(p):
            same = np.all(g[:, 2 + i] == g[:, 2 + p + j], axis=0)
            assert list(np.flatnonzero(same)) == ([] if i == j else sorted({i, j}))
    assert np.all(g >= [0, 1, 2]) and np.all(g < [1, 2, 3])


@pytest.mark.parametrize("t", TYPES)
def test_second_order_keeps_the_first_order_rows(t):
    """The same draws as without second order: rows A, B, C_k identical, so first-
    and total-order indices of the two designs are the same numbers."""
    p = 4
    first = make_sampler(t, nb_parameters=p, seed=8, apply_pick_freeze=True).draw_groups(9)
    second = make_sampler(t, nb_parameters=p, seed=8, apply_pick_freeze=True,
                          second_order=True).draw_groups(9)
    assert np.array_equal(second[:, :p + 2], first)


def test_second_order_rows_are_the_group_layouts():
    from melissa_sa.design import GroupLayout

    p = 3
    layout = GroupLayout(p, second_order=True)
    design = make_sampler("sobol", nb_parameters=p, seed=1, apply_pick_freeze=True,
                          second_order=True)
    assert design.layout == layout
    joint = make_sampler("sobol", nb_parameters=2 * p, seed=1).draw(5)
    assert np.array_equal(design.draw_groups(5), layout.build(joint[:, :p], joint[:, p:]))
    g2 = pick_freeze_groups(make_sampler("sobol", nb_parameters=2 * p, seed=1), 5,
                            second_order=True)
    assert np.array_equal(g2, layout.build(joint[:, :p], joint[:, p:]))


@pytest.mark.parametrize("t", TYPES)
def test_second_order_restore_and_redraw(t):
    design = make_sampler(t, nb_parameters=3, seed=5, apply_pick_freeze=True, second_order=True)
    design.draw_groups(4)
    replacement = design.redraw()
    assert replacement.shape == (8, 3)
    state = json.loads(json.dumps(design.state_dict()))
    assert state["second_order"] is True and state["position"] == 5
    restored = restore_sampler(state)
    assert restored.layout.second_order and restored.group_size == 8 and restored.n_redraws == 1
    assert np.array_equal(restored.next_group(), design.next_group())
    whole = make_sampler(t, nb_parameters=3, seed=5, apply_pick_freeze=True,
                         second_order=True).draw_groups(5)
    assert np.array_equal(whole[4], replacement)
    # a first-order state does not load into a second-order design, nor the reverse
    plain = make_sampler(t, nb_parameters=3, seed=5, apply_pick_freeze=True)
    with pytest.raises(ValueError, match="second_order = True, this design second_order "
                                         "= False: its groups have 8 runs, not 5"):
        plain.load_state(state)
    with pytest.raises(ValueError, match="second_order = False"):
        design.load_state(plain.state_dict())
    # a state saved before the key existed is a first-order one
    old = plain.state_dict()
    del old["second_order"]
    assert not restore_sampler(old).layout.second_order


def test_second_order_from_config(tmp_path):
    from melissa_sa.config import config_from_dict
    from melissa_sa.sampling import sampler_from_config

    base = {"study_options": {"field_names": ["f"], "nb_parameters": 3,
                              "parameter_sweep_size": 4, "nb_time_steps": 1},
            "sa_config": {"sobol_indices": True, "second_order": True},
            "client_config": {"executable_command": "true"}}
    cfg = config_from_dict(base)
    design = sampler_from_config(cfg)
    assert design.layout.second_order and design.group_size == cfg.group_size == 8


def test_from_state_without_the_factory():
    """Each product rebuilds itself from its state (the registry of pre-defined
    samplers finds the class by name); a plain sampler refuses a design's state."""
    design = make_sampler("halton", nb_parameters=2, seed=4, apply_pick_freeze=True,
                          second_order=True)
    design.draw_groups(3)
    state = json.loads(json.dumps(design.state_dict()))
    again = PickFreezeDesign.from_state(state)
    assert again.layout.second_order and again.position == 3
    assert np.array_equal(again.next_group(), design.next_group())
    with pytest.raises(ValueError, match="pick-freeze"):
        ParameterSampler.from_state(state)
    with pytest.raises(ValueError, match="user sampler"):
        ParameterSampler.from_state({**new("sobol").state_dict(), "sampler": "grid"})
