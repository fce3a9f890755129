"""melissa_sa.convergence: the stopping rule, its reduction over ranks, its config."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melissa_sa.convergence import (
    MIN_GROUPS_FLOOR,
    CheckSchedule,
    ConvergenceConfigError,
    ConvergenceRule,
    ConvergenceSummary,
    combine,
    combine_variance_totals,
    decide,
    local_summary,
    next_check,
    parse_rule,
    progress_text,
    step_summary,
    variance_totals,
)
from melissa_sa.stats import Moments, SobolMartinez

P = 3
LEVEL = 0.95


# many tiny kernel calls: one Numba thread (conftest.one_numba_thread)
pytestmark = pytest.mark.usefixtures("one_numba_thread")


def field_groups(rng, n_groups, n_cells):
    """Pick-freeze-like groups of a field with varied cells: (n_groups, p + 2, n_cells).

    Columns 0-1 are constant, column 2 has a variance 1e-14 of the others,
    column 3 is small (1e-2 in amplitude) but counts, the rest vary in
    sensitivity from cell to cell.
    """
    a = rng.uniform(-1, 1, size=(n_groups, P, n_cells))
    b = rng.uniform(-1, 1, size=(n_groups, P, n_cells))
    w = rng.uniform(0.1, 2.0, size=(P, n_cells))

    def model(x):
        return (w * x).sum(axis=1) + 0.5 * x[:, 0] * x[:, 2] ** 2

    rows = [model(a), model(b)]
    for k in range(P):
        c = a.copy()
        c[:, k] = b[:, k]
        rows.append(model(c))
    data = np.stack(rows, axis=1)
    data[:, :, 0] = 3.0
    data[:, :, 1] = -1.0
    data[:, :, 2] *= 1e-7
    data[:, :, 3] *= 1e-2
    return data


def field_state(rng, n_groups=40, n_cells=60, n_steps=3):
    """Per step a SobolMartinez and a Moments (rows A, B) over the whole field."""
    sobols, moments = [], []
    for _ in range(n_steps):
        s, m = SobolMartinez(n_cells, P), Moments(n_cells, order=2)
        for group in field_groups(rng, n_groups, n_cells):
            s.update(group)
            m.update(group[0])
            m.update(group[1])
        sobols.append(s)
        moments.append(m)
    return sobols, moments


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(11)
    sobols, moments = field_state(rng)
    intervals = [s.confidence_interval(LEVEL) for s in sobols]
    variances = [m.variance for m in moments]
    return intervals, variances


def sliced(ci_pair, lo, hi):
    (f_lo, f_hi), (t_lo, t_hi) = ci_pair
    return (f_lo[:, lo:hi], f_hi[:, lo:hi]), (t_lo[:, lo:hi], t_hi[:, lo:hi])


def summary_of_split(intervals, variances, bounds, negligible=1e-6):
    """The two-round reduction with ranks owning [bounds[i], bounds[i+1])."""
    ranges = list(zip(bounds[:-1], bounds[1:]))
    totals = combine_variance_totals(
        variance_totals(v[lo:hi] for v in variances) for lo, hi in ranges)
    floors = totals.floors(negligible)
    per_rank = []
    for lo, hi in ranges:
        per_rank.append(combine(
            step_summary(*sliced(ci, lo, hi), v[lo:hi], floors[t], step=t, cell_offset=lo)
            for t, (ci, v) in enumerate(zip(intervals, variances))))
    return combine(per_rank)


def brute_force(intervals, variances, negligible=1e-6):
    """Straight from the definition, over the whole field at once."""
    best, counted, negligible_n, undefined = (0.0, None), 0, 0, 0
    for t, (((f_lo, f_hi), (t_lo, t_hi)), v) in enumerate(zip(intervals, variances)):
        finite_v = v[np.isfinite(v)]
        floor = negligible * finite_v.mean()
        for c in range(v.size):
            w = np.concatenate([f_hi[:, c] - f_lo[:, c], t_hi[:, c] - t_lo[:, c]])
            if not (np.isfinite(v[c]) and np.isfinite(w).all()):
                undefined += 1
            elif v[c] > floor:
                counted += 1
                k = int(np.argmax(w))
                if w[k] > best[0]:
                    best = (w[k], ("first" if k < P else "total", k % P, t, c))
            else:
                negligible_n += 1
    return best, counted, negligible_n, undefined


# -- the reduction ---------------------------------------------------------------


def test_whole_field_matches_the_definition(field):
    intervals, variances = field
    whole = summary_of_split(intervals, variances, [0, variances[0].size])
    (width, (kind, param, step, cell)), counted, negl, undef = brute_force(intervals, variances)
    assert whole.width == width
    assert (whole.kind, whole.param, whole.step, whole.cell) == (kind, param, step, cell)
    assert (whole.n_counted, whole.n_negligible, whole.n_undefined) == (counted, negl, undef)
    assert negl == 3 * 3 and undef == 0          # columns 0, 1, 2 at each of 3 steps
    assert whole.width > 0.3                      # 40 groups: a real, wide interval


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=7))
def test_any_split_over_ranks_gives_the_whole_field(field, cuts):
    intervals, variances = field
    bounds = [0, *sorted(cuts), variances[0].size]     # empty slices allowed
    assert summary_of_split(intervals, variances, bounds) == \
        summary_of_split(intervals, variances, [0, variances[0].size])


def test_rank_local_objects_equal_the_sliced_field():
    """Ranks holding their own SobolMartinez / Moments (local_summary) agree."""
    rng = np.random.default_rng(5)
    n_cells, bounds = 30, [0, 7, 8, 30]
    data = [field_groups(rng, 25, n_cells) for _ in range(2)]       # 2 time steps
    rank_states = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sobols, variances = [], []
        for step_data in data:
            s, m = SobolMartinez(hi - lo, P), Moments(hi - lo, order=2)
            for group in step_data[:, :, lo:hi]:
                s.update(group)
                m.update(group[0])
                m.update(group[1])
            sobols.append(s)
            variances.append(m.variance)
        rank_states.append((lo, sobols, variances))
    totals = combine_variance_totals(variance_totals(v) for _, _, v in rank_states)
    floors = totals.floors(1e-6)
    reduced = combine(local_summary(s, v, floors, LEVEL, cell_offset=lo)
                      for lo, s, v in rank_states)
    whole_sobols, whole_vars = [], []
    for step_data in data:
        s, m = SobolMartinez(n_cells, P), Moments(n_cells, order=2)
        for group in step_data:
            s.update(group)
            m.update(group[0])
            m.update(group[1])
        whole_sobols.append(s)
        whole_vars.append(m.variance)
    whole = local_summary(whole_sobols, whole_vars,
                          variance_totals(whole_vars).floors(1e-6), LEVEL)
    assert reduced == whole
    assert whole.n_counted == 2 * (n_cells - 3)


def test_ties_resolve_the_same_way_whatever_the_split():
    """Cell 0's ST ties cell 1's S: the lowest cell wins, split or not."""
    lo = np.zeros((P, 3))
    f_hi = np.array([[0.1, 0.5, 0.2]] * P)
    t_hi = np.array([[0.5, 0.1, 0.5]] * P)
    intervals, variances = [((lo, f_hi), (lo, t_hi))], [np.ones(3)]
    whole = summary_of_split(intervals, variances, [0, 3])
    assert (whole.width, whole.cell, whole.kind, whole.param) == (0.5, 0, "total", 0)
    for bounds in ([0, 1, 3], [0, 2, 3], [0, 1, 2, 3]):
        assert summary_of_split(intervals, variances, bounds) == whole
    # whole-range intervals before 4 groups: every width ties
    s = SobolMartinez(6, P)
    for group in field_groups(np.random.default_rng(1), 3, 6):
        s.update(group)
    intervals, variances = [s.confidence_interval(LEVEL)], [np.ones(6)]
    whole = summary_of_split(intervals, variances, [0, 6])
    assert (whole.width, whole.cell, whole.kind, whole.param) == (2.0, 2, "first", 0)
    assert summary_of_split(intervals, variances, [0, 3, 4, 6]) == whole


def test_combine_is_order_independent_with_ties():
    a = ConvergenceSummary(width=0.2, kind="total", param=1, step=2, cell=9, n_counted=3)
    b = ConvergenceSummary(width=0.2, kind="first", param=0, step=0, cell=40, n_counted=1,
                           n_negligible=4)
    c = ConvergenceSummary(n_negligible=2, n_undefined=1)
    for order in ([a, b, c], [c, b, a], [b, c, a]):
        out = combine(order)
        assert (out.width, out.step, out.cell) == (0.2, 0, 40)
        assert (out.n_counted, out.n_negligible, out.n_undefined) == (4, 6, 1)
    assert combine([c]) == ConvergenceSummary(n_negligible=2, n_undefined=1)
    assert combine([]) == ConvergenceSummary()


def test_variance_totals_must_have_the_same_steps():
    with pytest.raises(ValueError, match="different numbers of time steps: 2, 1"):
        combine_variance_totals([variance_totals([np.ones(2)] * 2),
                                 variance_totals([np.ones(2)])])


# -- which cells count -------------------------------------------------------------


def synthetic(widths, variance):
    """Intervals [0.5 - w/2, 0.5 + w/2] for every index, per cell."""
    w = np.broadcast_to(np.asarray(widths, dtype=float), (P, len(widths)))
    ci = (0.5 - w / 2, 0.5 + w / 2)
    return ci, ci, np.asarray(variance, dtype=float)


def test_negligible_variance_cells_do_not_hold_the_study():
    first, total, var = synthetic([0.9, 0.1, 0.05, 0.0], [1e-9, 1.0, 2.0, 0.0])
    floor = variance_totals([var]).floors(1e-6)[0]      # 1e-6 * mean = 7.5e-7
    out = step_summary(first, total, var, floor)
    assert out.width == pytest.approx(0.1) and out.cell == 1
    assert (out.n_counted, out.n_negligible, out.n_undefined) == (2, 2, 0)
    # with no threshold the tiny cell counts; the constant cell (variance 0) never does
    out0 = step_summary(first, total, var, variance_totals([var]).floors(0.0)[0])
    assert out0.width == pytest.approx(0.9) and (out0.n_counted, out0.n_negligible) == (3, 1)


def test_cells_left_out_carry_less_than_r_of_the_variance():
    rng = np.random.default_rng(3)
    var = 10.0 ** rng.uniform(-12, 2, size=500)
    for r in (1e-6, 1e-3, 1e-1):
        floor = variance_totals([var]).floors(r)[0]
        left_out = var[var <= floor]
        assert left_out.sum() <= r * var.sum()
        first, total, _ = synthetic(np.full(var.size, 0.1), var)
        assert step_summary(first, total, var, floor).n_negligible == left_out.size


def test_undefined_cells_are_left_out_and_counted():
    first, total, var = synthetic([0.3, 0.1, 0.2], [1.0, np.nan, 1.0])
    first = (first[0].copy(), first[1].copy())
    first[1][2, 2] = np.nan                             # a NaN interval at cell 2
    out = step_summary(first, total, var, 0.0, step=4, cell_offset=100)
    assert (out.width, out.cell, out.step, out.n_counted, out.n_undefined) == \
        (pytest.approx(0.3), 100, 4, 1, 2)
    # the floor uses the finite variances only
    assert variance_totals([var]).count == (2,) and variance_totals([var]).total == (2.0,)


def test_step_summary_checks_shapes():
    first, total, _ = synthetic([0.1, 0.2], [1.0, 1.0])
    with pytest.raises(ValueError, match="2 cells"):
        step_summary(first, total, np.ones(3), 0.0)
    with pytest.raises(ValueError, match="one of each per time step"):
        local_summary([], [np.ones(2)], [0.0], LEVEL)


# -- the decision and the cadence -----------------------------------------------------------


RULE = ConvergenceRule(ci_width=0.1, min_groups=50)


def test_decide():
    narrow = ConvergenceSummary(width=0.08, kind="total", param=2, step=1, cell=7, n_counted=5)
    wide = ConvergenceSummary(width=0.12, kind="first", param=0, step=0, cell=3, n_counted=5)
    assert decide(narrow, 49, RULE).stop is False           # min_groups respected
    assert "min_groups = 50" in decide(narrow, 49, RULE).reason
    got = decide(narrow, 50, RULE)
    assert got.stop and got.width == 0.08 and "ST3, step 1, cell 7" in got.reason
    assert decide(wide, 10_000, RULE).stop is False
    assert "S1, step 0, cell 3" in decide(wide, 10_000, RULE).reason
    at = ConvergenceSummary(width=0.1, kind="first", param=0, step=0, cell=0, n_counted=1)
    assert decide(at, 50, RULE).stop                         # "at most W"
    nothing = ConvergenceSummary(n_negligible=10)
    assert decide(nothing, 49, RULE).stop is False
    assert decide(nothing, 50, RULE).stop


def test_next_check_is_geometric_from_min_groups():
    assert next_check(0, RULE) == 50
    assert next_check(49, RULE) == 50
    seq = [50]
    while seq[-1] < 1000:
        seq.append(next_check(seq[-1], RULE))
    assert seq[:4] == [50, 53, 56, 59]
    assert all(b > a and b <= math.ceil(1.05 * a) for a, b in zip(seq, seq[1:]))
    assert next_check(4, ConvergenceRule(0.1, 4)) == 5        # at least one more
    assert len(seq) < 70                                       # ~ ln(20) / ln(1.05)


def test_decide_on_a_real_stream_stops_when_the_intervals_are_narrow():
    """Linear field Y = X1 + 2 X2 per cell: every interval narrows like 1/sqrt(n)."""
    rng = np.random.default_rng(2)
    rule = ConvergenceRule(ci_width=0.15, min_groups=20)
    n_cells = 4
    s, m = SobolMartinez(n_cells, P), Moments(n_cells, order=2)
    n, check, stopped_at = 0, next_check(0, rule), None
    while stopped_at is None and n < 5000:
        a, b = rng.random((P, n_cells)), rng.random((P, n_cells))
        runs = [a, b] + [np.where((np.arange(P) == k)[:, None], b, a) for k in range(P)]
        group = np.array([x[0] + 2 * x[1] + 0.3 * x[2] * x[0] for x in runs])
        s.update(group)
        m.update(group[0])
        m.update(group[1])
        n += 1
        if n == check:
            floors = variance_totals([m.variance]).floors(rule.negligible_variance)
            summary = local_summary([s], [m.variance], floors, LEVEL)
            if decide(summary, n, rule).stop:
                stopped_at = n
            check = next_check(n, rule)
    assert stopped_at is not None and 20 <= stopped_at < 5000
    (f_lo, f_hi), (t_lo, t_hi) = s.confidence_interval(LEVEL)
    assert max((f_hi - f_lo).max(), (t_hi - t_lo).max()) <= 0.15


# -- config ------------------------------------------------------------------------------


def parse(value, sobol=True, sweep=1000):
    return parse_rule(value, sobol_indices=sobol, parameter_sweep_size=sweep)


def test_parse_rule_accepts_and_defaults():
    assert parse(None) is None
    assert parse(None, sobol=False) is None
    rule = parse({"ci_width": 0.05, "min_groups": 200})
    assert rule == ConvergenceRule(0.05, 200, 1e-6)
    assert MIN_GROUPS_FLOOR == 200
    assert parse({"ci_width": 1, "min_groups": 1000, "negligible_variance": 0}) == \
        ConvergenceRule(1.0, 1000, 0.0)
    assert ConvergenceRule(**rule.to_dict()) == rule


@pytest.mark.parametrize("value, sobol, path, words", [
    ({"ci_width": 0, "min_groups": 300}, True, "sa_config.convergence.ci_width", "> 0"),
    ({"ci_width": -0.1, "min_groups": 300}, True, "sa_config.convergence.ci_width", "> 0"),
    ({"ci_width": float("nan"), "min_groups": 300}, True, "sa_config.convergence.ci_width",
     "nan"),
    ({"ci_width": "0.1", "min_groups": 300}, True, "sa_config.convergence.ci_width", "'0.1'"),
    ({"ci_width": True, "min_groups": 300}, True, "sa_config.convergence.ci_width", "True"),
    ({"min_groups": 300}, True, "sa_config.convergence.ci_width", "missing"),
    ({"ci_width": 0.1, "min_groups": 1001}, True, "sa_config.convergence.min_groups",
     "larger than study_options.parameter_sweep_size = 1000"),
    ({"ci_width": 0.1, "min_groups": 199}, True, "sa_config.convergence.min_groups",
     "must be >= 200"),
    ({"ci_width": 0.1, "min_groups": 300.0}, True, "sa_config.convergence.min_groups",
     "integer"),
    ({"ci_width": 0.1}, True, "sa_config.convergence.min_groups", "missing"),
    ({"ci_width": 0.1, "min_groups": 300}, False, "sa_config.convergence",
     "sa_config.sobol_indices: true"),
    ({"ci_width": 0.1, "min_groups": 300, "width": 3}, True, "sa_config.convergence.width",
     "unknown key"),
    ({"ci_width": 0.1, "min_groups": 300, "negligible_variance": 1}, True,
     "sa_config.convergence.negligible_variance", "[0, 1)"),
    ([0.1, 10], True, "sa_config.convergence", "expected an object"),
])
def test_parse_rule_errors_name_the_key(value, sobol, path, words):
    with pytest.raises(ConvergenceConfigError) as info:
        parse(value, sobol=sobol)
    assert isinstance(info.value, ValueError)
    assert any(p == path and words in m for p, m in info.value.errors), info.value.errors
    assert f"{path}: " in str(info.value)


def test_parse_rule_lists_every_problem():
    with pytest.raises(ConvergenceConfigError) as info:
        parse({"ci_width": 0, "min_groups": 5000, "bogus": 1}, sobol=False)
    paths = [p for p, _ in info.value.errors]
    assert paths == ["sa_config.convergence", "sa_config.convergence.bogus",
                     "sa_config.convergence.ci_width", "sa_config.convergence.min_groups"]


def test_check_schedule_keeps_checks_within_the_time_budget():
    sched = CheckSchedule(RULE)
    assert not sched.due(49, 0.0) and sched.due(50, 0.0)
    sched.done(50, started=10.0, ended=12.0)             # a 2 s check
    assert sched.next_groups == 53
    assert not sched.due(60, 51.9)                       # 20 x 2 s after its end
    assert sched.due(60, 52.0) and not sched.due(52, 60.0)
    sched.done(60, started=52.0, ended=52.0)
    assert sched.due(63, 52.0)
    resumed = CheckSchedule(RULE, groups_folded=400)     # after --resume: check at once
    assert resumed.due(400, 0.0) and not CheckSchedule(RULE, 10).due(10, 0.0)


def test_progress_text():
    assert progress_text(None, RULE) == "CI width - / target 0.1 (from 50 groups)"
    assert progress_text(float("nan"), RULE) == "CI width - / target 0.1 (from 50 groups)"
    assert progress_text(0.08314, RULE) == "CI width 0.0831 / target 0.1"


def test_fields_have_their_own_floors_and_name_the_widest():
    """A field of large values must not make another field's cells negligible."""
    first, total, var = synthetic([0.2, 0.1], [1e-9, 2e-9])       # field "p": tiny values
    big_first, big_total, big_var = synthetic([0.05, 0.05], [1e6, 1e6])
    parts = []
    for name, (f, t, v) in {"p": (first, total, var),
                            "T": (big_first, big_total, big_var)}.items():
        floors = variance_totals([v]).floors(1e-6)
        parts.append(step_summary(f, t, v, floors[0], field=name))
    out = combine(parts)
    assert (out.width, out.field, out.cell, out.n_counted) == (pytest.approx(0.2), "p", 0, 4)
    assert out.where() == "S1 of p, step 0, cell 0"


def test_stopping_text_from_results_attributes():
    from melissa_sa.convergence import stopping_text

    assert stopping_text({}) is None
    assert stopping_text({"stopped_by": "sweep_size"}) == "  stopped by: sweep_size"
    attrs = {"stopped_by": "convergence", "convergence_ci_width": 0.05,
             "convergence_min_groups": 200, "convergence_groups_at_stop": 212,
             "convergence_width_reached": 0.0481}
    assert stopping_text(attrs) == ("  stopped by: convergence after 212 groups "
                                    "(CI width 0.0481 / target 0.05)")
    attrs.update(stopped_by=b"sweep_size", convergence_groups_at_stop=-1,
                 convergence_width_reached=float("nan"))
    assert stopping_text(attrs) == ("  stopped by: sweep_size "
                                    "(CI width - / target 0.05 (from 200 groups))")
