"""Extrema and threshold exceedance: exact references, merges, hostile data."""

import h5py
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from melissa_sa.stats import Extrema, ThresholdExceedance


def feed(obj, data):
    for row in data:
        obj.update(row)
    return obj


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extrema_exact(dtype):
    rng = np.random.default_rng(1)
    data = (1e9 + rng.standard_normal((300, 50))).astype(dtype)
    e = feed(Extrema(50), data)
    np.testing.assert_array_equal(e.min, data.min(axis=0).astype(np.float64))
    np.testing.assert_array_equal(e.max, data.max(axis=0).astype(np.float64))


def test_extrema_start_and_single_sample_and_nan():
    e = Extrema(3)
    assert np.all(e.min == np.inf) and np.all(e.max == -np.inf)
    e.update(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(e.min, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(e.max, [1.0, 2.0, 3.0])
    e.update(np.array([0.0, np.nan, 3.0]))
    e.update(np.array([5.0, 9.0, 3.0]))
    np.testing.assert_array_equal(e.min[[0, 2]], [0.0, 3.0])
    np.testing.assert_array_equal(e.max[[0, 2]], [5.0, 3.0])
    assert np.isnan(e.min[1]) and np.isnan(e.max[1])


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(1, 5)),
              elements=st.floats(-1e300, 1e300, allow_nan=False)),
       st.integers(0, 30))
def test_extrema_property_split_merge(data, cut):
    cut = min(cut, data.shape[0])
    a = feed(Extrema(data.shape[1]), data[:cut])
    a.merge(feed(Extrema(data.shape[1]), data[cut:]))
    np.testing.assert_array_equal(a.min, data.min(axis=0))
    np.testing.assert_array_equal(a.max, data.max(axis=0))


def test_threshold_exact_and_strict():
    rng = np.random.default_rng(2)
    data = rng.integers(0, 4, size=(200, 30)).astype(np.float64)  # ties on purpose
    thr = [0.0, 1.0, 2.5]
    t = feed(ThresholdExceedance(30, thr), data)
    expected = np.stack([(data > v).mean(axis=0) for v in thr])
    np.testing.assert_array_equal(t.probability, expected)
    np.testing.assert_array_equal(t.counts, np.stack([(data > v).sum(axis=0) for v in thr]))


def test_threshold_float32_and_offset():
    rng = np.random.default_rng(3)
    data = (1e9 + rng.standard_normal((100, 20))).astype(np.float32)
    thr = [1e9 - 64.0, 1e9, 1e9 + 64.0]
    t = feed(ThresholdExceedance(20, thr), data)
    expected = np.stack([(data.astype(np.float64) > v).mean(axis=0) for v in thr])
    np.testing.assert_array_equal(t.probability, expected)


def test_threshold_nan_and_constant():
    t = ThresholdExceedance(2, [0.5])
    t.update(np.array([np.nan, 1.0]))
    t.update(np.array([1.0, 1.0]))
    np.testing.assert_array_equal(t.probability, [[0.5, 1.0]])
    lo, hi = t.confidence_interval(0.95)
    assert np.all((0 <= lo) & (lo <= t.probability) & (t.probability <= hi) & (hi <= 1))


def test_wilson_interval_matches_formula_and_statsmodels_values():
    t = ThresholdExceedance(3, [0.0])
    # counts 0, 3, 10 out of 10
    for i in range(10):
        t.update(np.array([-1.0, 1.0 if i < 3 else -1.0, 1.0]))
    lo, hi = t.confidence_interval(0.95)
    # Wilson bounds are the roots in pi of (p - pi)^2 = z^2 pi (1 - pi) / n
    z, n = scipy.stats.norm.ppf(0.975), 10.0
    for i, k in enumerate([0, 3, 10]):
        p = k / n
        roots = np.sort(np.roots([1 + z * z / n, -(2 * p + z * z / n), p * p]).real)
        np.testing.assert_allclose([lo[0, i], hi[0, i]], roots, rtol=1e-12, atol=1e-15)


def test_threshold_merge_and_save_load(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.standard_normal((50, 7))
    whole = feed(ThresholdExceedance(7, [-1, 0, 1]), data)
    a = feed(ThresholdExceedance(7, [-1, 0, 1]), data[:20])
    a.merge(feed(ThresholdExceedance(7, [-1, 0, 1]), data[20:]))
    np.testing.assert_array_equal(a.counts, whole.counts)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        a.save(f.create_group("t"))
        back = ThresholdExceedance.load(f["t"])
    np.testing.assert_array_equal(back.probability, whole.probability)
    with pytest.raises(ValueError):
        a.merge(ThresholdExceedance(7, [0]))


def test_extrema_save_load(tmp_path):
    e = feed(Extrema(4), np.arange(12.0).reshape(3, 4))
    with h5py.File(tmp_path / "e.h5", "w") as f:
        e.save(f.create_group("e"))
        back = Extrema.load(f["e"])
    np.testing.assert_array_equal(back.min, e.min)
    np.testing.assert_array_equal(back.max, e.max)
    assert back.n == 3
