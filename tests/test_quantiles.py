"""Streaming per-cell quantiles: melissa_sa.stats.Quantiles and its kernels.

Tolerances against numpy.quantile are in units of the standard deviation of
the exact sample quantile, ``sd = sqrt(a (1 - a) / n) / f(q_a)``, and were
picked from the spread measured over 20-30 seeds of each test's setting
(each test then runs one fixed seed):

* N(0, 1), 500 cells, 4000 samples: RMS over cells of (streaming - exact)
  0.22-0.25 sd at the median, 0.29-0.33 sd at 0.05 and 0.95; largest
  single-cell difference 0.7-1.5 sd. Asserted: 0.4 sd (RMS), 2.2 sd (max).
* lognormal(0, 1), 300 cells, 4000 samples: RMS difference 0.22-0.26 sd at
  the median, 0.50-0.65 sd at 0.99. Asserted: 0.4 and 0.85 sd.
* constant for 30 samples then N(0, 1): RMS difference to the exact quantile
  of the varying part 0.21-0.42 sd. Asserted: 0.55 sd.
* 1e9 + N(0, 1): RMSE to the true N(0, 1) quantile 0.94-1.12 sd (the exact
  sample quantile's is 1 sd by definition); asserted 1.3 sd. The estimates of
  the shifted and unshifted streams differed by at most 0.0085 sd
  (1.7e-4: rounding the inputs to 1e9's ulp flips rare window decisions);
  asserted 0.05 sd.
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from melissa_sa.kernels import quantiles as kernels
from melissa_sa.stats import MergeError, Quantiles

LEVELS = [0.05, 0.5, 0.95]


def feed(q, data):
    for row in data:
        q.update(row)
    return q


def exact_sd(levels, n, pdf_at_q):
    levels = np.asarray(levels)
    return np.sqrt(levels * (1 - levels) / n) / pdf_at_q


# -- exact reference behaviour ----------------------------------------------


def test_one_sample_gives_the_sample():
    x = np.array([3.5, -1.0, 1e9, 0.0])
    q = feed(Quantiles(4, LEVELS), [x])
    assert q.count == 1
    assert q.values.shape == (3, 4)
    assert q.values.dtype == np.float64
    np.testing.assert_array_equal(q.values, np.tile(x, (3, 1)))


def test_two_samples_interpolate_like_numpy():
    a = np.array([1.0, 10.0, -2.0])
    b = np.array([3.0, 0.0, -2.0])
    q = feed(Quantiles(3, [0.25, 0.5, 0.9]), [a, b])
    np.testing.assert_array_equal(q.values, np.quantile(np.stack([a, b]), [0.25, 0.5, 0.9], axis=0))


def test_warm_up_is_numpy_quantile_bit_for_bit():
    rng = np.random.default_rng(1)
    levels = [0.01, 0.1, 0.3, 0.5, 0.77, 0.99]
    data = rng.standard_normal((kernels.WARMUP, 50)) * rng.uniform(0.1, 100, 50)
    q = Quantiles(50, levels)
    for n in range(1, kernels.WARMUP + 1):
        q.update(data[n - 1])
        np.testing.assert_array_equal(q.values, np.quantile(data[:n], levels, axis=0))


def test_no_sample_gives_nan():
    q = Quantiles(5, LEVELS)
    assert q.count == 0
    assert np.isnan(q.values).all()


def test_close_to_numpy_quantile_after_warm_up():
    rng = np.random.default_rng(12345)
    n, cells = 4000, 500
    data = rng.standard_normal((n, cells))
    q = feed(Quantiles(cells, LEVELS), data)
    exact = np.quantile(data, LEVELS, axis=0)
    sd = exact_sd(LEVELS, n, stats.norm.pdf(stats.norm.ppf(LEVELS)))
    diff = q.values - exact
    rms = np.sqrt(np.mean(diff**2, axis=1))
    assert np.all(rms < 0.4 * sd), rms / sd
    assert np.all(np.abs(diff).max(axis=1) < 2.2 * sd), np.abs(diff).max(axis=1) / sd
    # and not worse than the exact sample quantile against the truth
    truth = stats.norm.ppf(LEVELS)[:, None]
    ratio = np.sqrt(np.mean((q.values - truth) ** 2, axis=1)
                    / np.mean((exact - truth) ** 2, axis=1))
    assert np.all(ratio < 1.1), ratio


def test_skewed_law_close_to_numpy_quantile():
    rng = np.random.default_rng(7)
    n, cells = 4000, 300
    levels = [0.5, 0.99]
    data = rng.lognormal(0.0, 1.0, (n, cells))
    q = feed(Quantiles(cells, levels), data)
    exact = np.quantile(data, levels, axis=0)
    sd = exact_sd(levels, n, stats.lognorm.pdf(stats.lognorm.ppf(levels, 1.0), 1.0))
    rms = np.sqrt(np.mean((q.values - exact) ** 2, axis=1))
    assert np.all(rms < np.array([0.4, 0.85]) * sd), rms / sd


def test_levels_in_any_order_and_duplicated():
    rng = np.random.default_rng(3)
    data = rng.gamma(2.0, size=(300, 40))
    a = feed(Quantiles(40, [0.1, 0.5, 0.9]), data)
    b = feed(Quantiles(40, [0.9, 0.1, 0.5, 0.5]), data)
    np.testing.assert_array_equal(b.values, a.values[[2, 0, 1, 1]])
    np.testing.assert_array_equal(b.levels, [0.9, 0.1, 0.5, 0.5])


# -- hostile data ---------------------------------------------------------


def test_constant_cells_give_exactly_the_constant():
    rng = np.random.default_rng(0)
    constants = np.array([0.0, -3.25, 1e9 + 0.5, 1e-300, 7.0])
    q = Quantiles(6, [0.01, 0.5, 0.99])
    for _ in range(500):
        q.update(np.append(constants, rng.standard_normal()))
    np.testing.assert_array_equal(q.values[:, :5], np.tile(constants, (3, 1)))
    assert np.all(np.isfinite(q.values[:, 5]))


def test_cell_constant_through_warm_up_then_varying():
    rng = np.random.default_rng(5)
    n = 4000
    data = rng.standard_normal((n, 200))
    data[:30] = 2.0  # no spread at all in the first 30 samples
    q = feed(Quantiles(200, LEVELS), data)
    # A stochastic approximation forgets its starting point (here the 30
    # equal values) at rate 1/n, while the sample quantile of a stream that
    # changes law keeps them as an atom; compare with the varying part.
    exact = np.quantile(data[30:], LEVELS, axis=0)
    sd = exact_sd(LEVELS, n, stats.norm.pdf(stats.norm.ppf(LEVELS)))
    rms = np.sqrt(np.mean((q.values - exact) ** 2, axis=1))
    assert np.all(rms < 0.55 * sd), rms / sd


def test_large_offset_is_harmless():
    rng = np.random.default_rng(99)
    n, cells = 4000, 300
    noise = rng.standard_normal((n, cells))
    plain = feed(Quantiles(cells, LEVELS), noise)
    shifted = feed(Quantiles(cells, LEVELS), 1e9 + noise)
    truth = stats.norm.ppf(LEVELS)[:, None]
    sd = exact_sd(LEVELS, n, stats.norm.pdf(truth[:, 0]))
    err = shifted.values - 1e9 - truth
    rmse = np.sqrt(np.mean(err**2, axis=1))
    assert np.all(rmse < 1.3 * sd), rmse / sd
    # the offset changes the inputs by at most half an ulp of 1e9 (6e-8);
    # the estimates move by a tiny fraction of their own error
    assert np.max(np.abs(shifted.values - 1e9 - plain.values)) < 0.05 * sd.min()


def test_float32_input_same_as_float64_of_the_same_values():
    rng = np.random.default_rng(4)
    data = (rng.standard_normal((300, 64)) * 3 + 10).astype(np.float32)
    a = feed(Quantiles(64, LEVELS), data)
    b = feed(Quantiles(64, LEVELS), data.astype(np.float64))
    np.testing.assert_array_equal(a.values, b.values)


def test_integer_and_list_input_accepted():
    q = Quantiles(3, [0.5])
    q.update([1, 2, 3])
    q.update(np.array([3, 2, 1], dtype=np.int32))
    np.testing.assert_array_equal(q.values, [[2.0, 2.0, 2.0]])


def test_wrong_sample_shape_raises():
    q = Quantiles(3, [0.5])
    with pytest.raises(ValueError, match="shape"):
        q.update(np.zeros(4))
    assert q.count == 0


# -- NaN policy: a non-finite value poisons its cell, and only it -------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("when", [0, 3, kernels.WARMUP, 50])
def test_non_finite_value_poisons_only_its_cell(bad, when):
    rng = np.random.default_rng(11)
    data = rng.standard_normal((120, 4))
    clean = feed(Quantiles(4, LEVELS), data)
    dirty_data = data.copy()
    dirty_data[when, 2] = bad
    dirty = feed(Quantiles(4, LEVELS), dirty_data)
    assert dirty.count == 120
    assert np.isnan(dirty.values[:, 2]).all()
    keep = [0, 1, 3]
    np.testing.assert_array_equal(dirty.values[:, keep], clean.values[:, keep])


def test_poisoned_cell_survives_checkpoint(tmp_path):
    q = Quantiles(2, [0.5])
    q.update([np.nan, 1.0])
    with h5py.File(tmp_path / "c.h5", "w") as f:
        q.save(f.create_group("q"))
    with h5py.File(tmp_path / "c.h5", "r") as f:
        r = Quantiles.load(f["q"])
    r.update([5.0, 2.0])
    assert np.isnan(r.values[0, 0]) and r.values[0, 1] == 1.5


# -- properties -----------------------------------------------------------

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
level = st.floats(min_value=1e-6, max_value=1 - 1e-6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    columns=st.lists(st.lists(finite, min_size=1, max_size=40), min_size=1, max_size=4),
    levels=st.lists(level, min_size=1, max_size=5),
)
def test_estimates_within_range_finite_and_monotone(columns, levels):
    n = min(len(c) for c in columns)
    data = np.array([c[:n] for c in columns]).T  # (n, cells)
    q = Quantiles(data.shape[1], levels)
    for i in range(n):
        q.update(data[i])
        v = q.values
        seen = data[: i + 1]
        assert np.all(np.isfinite(v))
        assert np.all(v >= seen.min(axis=0)) and np.all(v <= seen.max(axis=0))
        order = np.argsort(levels, kind="stable")
        assert np.all(np.diff(v[order], axis=0) >= 0)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(finite, min_size=1, max_size=kernels.WARMUP),
    levels=st.lists(level, min_size=1, max_size=4),
)
def test_warm_up_matches_numpy_for_any_data(data, levels):
    q = feed(Quantiles(1, levels), [[v] for v in data])
    np.testing.assert_array_equal(q.values[:, 0], np.quantile(np.array(data), levels))


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.sampled_from([-1.0, 0.0, 2.5]), min_size=1, max_size=300),
    levels=st.lists(level, min_size=1, max_size=3),
)
def test_discrete_data_stays_in_range(values, levels):
    q = feed(Quantiles(1, levels), [[v] for v in values])
    v = q.values[:, 0]
    assert np.all(v >= min(values)) and np.all(v <= max(values))


# -- checkpoint -------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 5, kernels.WARMUP, kernels.WARMUP + 1, 700])
def test_save_load_continues_identically(tmp_path, cut):
    rng = np.random.default_rng(21)
    data = rng.lognormal(size=(1000, 30))
    whole = feed(Quantiles(30, [0.5, 0.95, 0.99]), data)
    first = feed(Quantiles(30, [0.5, 0.95, 0.99]), data[:cut])
    path = tmp_path / "ckpt.h5"
    with h5py.File(path, "w") as f:
        first.save(f.create_group("field/quantiles"))
    with h5py.File(path, "r") as f:
        resumed = Quantiles.load(f["field/quantiles"])
    assert resumed.count == cut
    feed(resumed, data[cut:])
    assert resumed.count == whole.count == 1000
    np.testing.assert_array_equal(resumed.values, whole.values)
    np.testing.assert_array_equal(resumed.levels, whole.levels)


def test_save_twice_into_the_same_group(tmp_path):
    q = Quantiles(3, [0.5])
    with h5py.File(tmp_path / "c.h5", "w") as f:
        g = f.create_group("q")
        q.update([1.0, 2.0, 3.0])
        q.save(g)
        q.update([2.0, 2.0, 2.0])
        q.save(g)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        r = Quantiles.load(f["q"])
    assert r.count == 2
    np.testing.assert_array_equal(r.values, q.values)


def test_load_refuses_other_state(tmp_path):
    with h5py.File(tmp_path / "c.h5", "w") as f:
        g = f.create_group("q")
        g.attrs["kind"] = "Moments"
        g.attrs["state_version"] = 1
        with pytest.raises(ValueError, match="Moments"):
            Quantiles.load(g)
        q = Quantiles(3, [0.5])
        q.save(f.create_group("ok"))
        f["ok"].attrs["warmup"] = kernels.WARMUP + 1
        with pytest.raises(ValueError, match="warm-up"):
            Quantiles.load(f["ok"])


# -- API contract -------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, math.nan, math.inf])
def test_level_out_of_range_is_named(bad):
    with pytest.raises(ValueError, match=repr(float(bad)).replace("(", r"\(")):
        Quantiles(3, [0.5, bad])


@pytest.mark.parametrize("bad", [[], "0.5", [["a"]], ["a"], [True], 0.5])
def test_bad_levels_rejected(bad):
    with pytest.raises(ValueError):
        Quantiles(3, bad)


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_n_cells_rejected(bad):
    with pytest.raises(ValueError, match="n_cells"):
        Quantiles(bad, [0.5])


def test_merge_is_refused_clearly():
    q = Quantiles(3, [0.5])
    with pytest.raises(MergeError, match="cannot be merged"):
        q.merge(Quantiles(3, [0.5]))


def test_state_memory_per_cell():
    assert Quantiles(10, LEVELS).nbytes == 10 * 8 * 14
    assert kernels.quantiles_row_width(1) == 3 + 1 + kernels.WARMUP
    assert kernels.quantiles_row_width(5) == 3 + 5 + 10


def test_values_is_a_fresh_array_and_levels_a_copy():
    q = feed(Quantiles(2, [0.5]), [[1.0, 2.0]])
    q.values[0, 0] = 99.0
    q.levels[0] = 0.9
    assert q.values[0, 0] == 1.0 and q.levels[0] == 0.5


def test_kernel_parallel_equals_one_thread():
    import numba

    rng = np.random.default_rng(8)
    levels = np.array(LEVELS)
    data = rng.standard_normal((200, 1000))
    states = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            s = kernels.quantiles_new_state(1000, 3)
            for i, row in enumerate(data):
                kernels.quantiles_update(i, levels, s, row)
        finally:
            numba.set_num_threads(previous)
        states.append(s)
    np.testing.assert_array_equal(states[0], states[1])
