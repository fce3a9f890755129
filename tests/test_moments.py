"""Moments: exact against NumPy/SciPy two-pass results, merges, hostile data."""

import h5py
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from melissa_sa.stats import Moments


def feed(data, order=4):
    m = Moments(data.shape[1], order=order)
    for row in data:
        m.update(row)
    return m


def reference(data):
    x = data.astype(np.float64)
    return dict(
        mean=x.mean(axis=0),
        variance=x.var(axis=0, ddof=1),
        skewness=scipy.stats.skew(x, axis=0),
        kurtosis=scipy.stats.kurtosis(x, axis=0),
    )


def assert_matches(m, data, rtol=1e-12, atol=0.0):
    ref = reference(data)
    for name, expected in ref.items():
        np.testing.assert_allclose(getattr(m, name), expected, rtol=rtol, atol=atol,
                                   err_msg=name)


@pytest.mark.parametrize("order", [2, 4])
def test_matches_two_pass(order):
    rng = np.random.default_rng(1)
    data = rng.gamma(2.0, 3.0, size=(500, 64))
    m = feed(data, order)
    ref = reference(data)
    np.testing.assert_allclose(m.mean, ref["mean"], rtol=1e-13)
    np.testing.assert_allclose(m.variance, ref["variance"], rtol=1e-12)
    assert m.count.shape == (64,) and np.all(m.count == 500)
    if order == 4:
        np.testing.assert_allclose(m.skewness, ref["skewness"], rtol=1e-11)
        np.testing.assert_allclose(m.kurtosis, ref["kurtosis"], rtol=1e-11)
    else:
        with pytest.raises(AttributeError):
            _ = m.skewness


def test_offset_1e9_keeps_spread():
    """1e9 + N(0,1): as accurate as an exact two-pass computation."""
    rng = np.random.default_rng(2)
    data = 1e9 + rng.standard_normal((2000, 32))
    m = feed(data)
    # x - x[0] is exact here (Sterbenz), so a two-pass on the shifted data is
    # the accurate reference; NumPy's own mean of 2000 values near 1e9 is off
    # by ~1e-6 (pairwise sums round at the ulp of 1e12), and scipy's skew
    # inherits that error (~1e-5), so they cannot serve as references here.
    shifted = data - data[0]
    ref = reference(shifted)
    np.testing.assert_allclose(m.mean, data[0] + ref["mean"], rtol=2e-16)
    np.testing.assert_allclose(m.variance, ref["variance"], rtol=1e-12)
    np.testing.assert_allclose(m.skewness, ref["skewness"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.kurtosis, ref["kurtosis"], rtol=1e-10, atol=1e-12)


def test_float32_input_is_accumulated_in_float64():
    rng = np.random.default_rng(3)
    data = rng.standard_normal((300, 16)).astype(np.float32)
    m = feed(data)
    assert_matches(m, data, rtol=1e-11)


def test_constant_cells_are_defined_without_warning():
    data = np.tile(np.array([3.25, -7.0, 1e9]), (50, 1))
    m = feed(data)
    np.testing.assert_array_equal(m.mean, [3.25, -7.0, 1e9])
    np.testing.assert_array_equal(m.variance, 0.0)
    np.testing.assert_array_equal(m.skewness, 0.0)
    np.testing.assert_array_equal(m.kurtosis, 0.0)


def test_one_and_two_samples():
    m = Moments(2)
    assert np.all(np.isnan(m.mean))
    m.update(np.array([1.0, 2.0]))
    np.testing.assert_array_equal(m.mean, [1.0, 2.0])
    assert np.all(np.isnan(m.variance)) and np.all(np.isnan(m.skewness))
    m.update(np.array([3.0, 2.0]))
    np.testing.assert_array_equal(m.mean, [2.0, 2.0])
    np.testing.assert_array_equal(m.variance, [2.0, 0.0])
    np.testing.assert_allclose(m.skewness, [0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(m.kurtosis, [-2.0, 0.0])  # two points: m4/m2^2 = 1


def test_nan_propagates_to_its_cell_only():
    m = Moments(3)
    m.update(np.array([1.0, np.nan, 2.0]))
    m.update(np.array([2.0, 1.0, 4.0]))
    m.update(np.array([4.0, 1.0, 5.0]))
    assert np.isnan(m.mean[1]) and np.isnan(m.variance[1]) and np.isnan(m.kurtosis[1])
    np.testing.assert_allclose(m.variance[[0, 2]], [7 / 3, 7 / 3])


@pytest.mark.parametrize("order", [2, 4])
def test_merge_equals_whole(order):
    rng = np.random.default_rng(4)
    data = 100 + 5 * rng.standard_t(5, size=(400, 20))
    whole = feed(data, order)
    for cut in (0, 1, 7, 200, 399, 400):
        a = feed(data[:cut], order) if cut else Moments(20, order)
        b = feed(data[cut:], order) if cut < 400 else Moments(20, order)
        a.merge(b)
        assert a.n == 400
        np.testing.assert_allclose(a._state, whole._state, rtol=1e-11, atol=1e-9)


def test_merge_many_chunks_tree():
    rng = np.random.default_rng(5)
    data = rng.lognormal(size=(256, 8))
    parts = [feed(data[i:i + 32]) for i in range(0, 256, 32)]
    while len(parts) > 1:
        parts = [p.merge(q) or p for p, q in zip(parts[::2], parts[1::2], strict=True)]
    assert_matches(parts[0], data, rtol=1e-11)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(2, 40), st.integers(1, 4)),
           elements=st.floats(-1e6, 1e6, allow_nan=False)),
    st.integers(0, 40),
)
def test_property_any_split_merges_to_two_pass(data, cut):
    cut = min(cut, data.shape[0])
    a, b = Moments(data.shape[1]), Moments(data.shape[1])
    for row in data[:cut]:
        a.update(row)
    for row in data[cut:]:
        b.update(row)
    a.merge(b)
    ref_mean = data.mean(axis=0)
    ref_m2 = ((data - ref_mean) ** 2).sum(axis=0)
    scale = np.abs(data).max(axis=0) + 1.0
    assert np.all(np.abs(a.mean - ref_mean) <= 1e-12 * scale)
    assert np.all(np.abs(a._state[2] - ref_m2) <= 1e-9 * (ref_m2 + scale**2))


def test_save_load_round_trip_continues_identically(tmp_path):
    rng = np.random.default_rng(6)
    data = rng.standard_normal((40, 10))
    whole = feed(data)
    part = feed(data[:25])
    with h5py.File(tmp_path / "m.h5", "w") as f:
        part.save(f.create_group("m"))
    with h5py.File(tmp_path / "m.h5", "r") as f:
        back = Moments.load(f["m"])
    for row in data[25:]:
        back.update(row)
    np.testing.assert_array_equal(back._state, whole._state)
    assert back.n == 40


def test_load_refuses_other_state(tmp_path):
    from melissa_sa.stats import Extrema
    with h5py.File(tmp_path / "e.h5", "w") as f:
        Extrema(3).save(f.create_group("e"))
        with pytest.raises(ValueError, match="holds 'Extrema' state, expected 'Moments'"):
            Moments.load(f["e"])


def test_bad_input_is_rejected():
    m = Moments(4)
    with pytest.raises(ValueError, match=r"expected \(4,\)"):
        m.update(np.zeros(5))
    with pytest.raises(TypeError):
        m.update(np.array(["a"] * 4))
    with pytest.raises(ValueError):
        Moments(4, order=3)
    m.update(np.arange(4))  # integers are converted
    np.testing.assert_array_equal(m.mean, [0, 1, 2, 3])


def test_load_refuses_a_state_of_another_shape(tmp_path):
    with h5py.File(tmp_path / "m.h5", "w") as f:
        g = f.create_group("m")
        Moments(3).save(g)
        del g["state"]
        g.create_dataset("state", data=np.zeros((5, 4)))
        with pytest.raises(ValueError, match=r"/m: state shape \(5, 4\), expected \(5, 3\)"):
            Moments.load(g)


@pytest.mark.parametrize("order", [2, 4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_update_pair_is_two_updates_bit_for_bit(order, dtype):
    """update_pair(x, y) leaves the state of update(x); update(y), from the
    first sample on, on hostile data (a 1e9 offset, a NaN, a constant cell)."""
    rng = np.random.default_rng(7)
    data = (1e9 + rng.standard_normal((9, 33)) * rng.choice([1e-3, 1.0, 1e3], 33)).astype(dtype)
    data[:, 0] = 2.5
    data[4, 5] = np.nan
    one, two = Moments(33, order=order), Moments(33, order=order)
    one.update(data[0])
    two.update(data[0])
    for k in range(1, 9, 2):   # pairs from n = 1 (odd) ...
        one.update(data[k])
        one.update(data[k + 1])
        two.update_pair(data[k], data[k + 1])
        assert np.array_equal(one._state, two._state, equal_nan=True)
    first, pair = Moments(33, order=order), Moments(33, order=order)
    for k in range(0, 8, 2):   # ... and from n = 0
        first.update(data[k])
        first.update(data[k + 1])
        pair.update_pair(data[k], data[k + 1])
    assert np.array_equal(first._state, pair._state, equal_nan=True)
    assert pair.count[0] == 8 and np.isnan(pair.mean[5]) and pair.variance[0] == 0.0


@pytest.mark.parametrize("order", [2, 4])
def test_update_pair_checks_and_mixes_sample_types(order):
    one, two = Moments(4, order=order), Moments(4, order=order)
    x = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    y = np.array([0.1, 0.2, 0.3, 0.4])
    one.update(x)
    one.update(y)
    two.update_pair(x, y)
    assert np.array_equal(one._state, two._state)
    with pytest.raises(ValueError, match=r"expected \(4,\)"):
        two.update_pair(x, np.zeros(5))


@pytest.mark.parametrize("extra", [{}, {"skewness": True, "min": True, "max": True,
                                        "threshold_exceedance": [0.5]}])
def test_a_server_step_folds_a_and_b_as_two_samples(tmp_path, extra):
    """A Sobol' group's independent rows A and B fold into the step's
    statistics as two samples, one after the other, bit for bit."""
    from melissa_sa.config import config_from_dict
    from melissa_sa.server.field_stats import StepStatistics

    cfg = config_from_dict({"study_options": {"field_names": ["u"], "nb_parameters": 2,
                                              "parameter_sweep_size": 6, "nb_time_steps": 1},
                            "sa_config": {"sobol_indices": True, **extra},
                            "client_config": {"executable_command": "./sim"}},
                           base_dir=str(tmp_path))
    groups = np.random.default_rng(3).random((6, 4, 11)) + 1e6
    step, ref = StepStatistics(11, cfg), StepStatistics(11, cfg)
    for g, rows in enumerate(groups):
        step.fold_group(rows, g)
        ref.fold_sample(rows[0])
        ref.fold_sample(rows[1])
    assert step.n_samples == ref.n_samples == 12
    for name, stat in step.items():
        if name.startswith("sobol"):
            continue
        mine, theirs = vars(stat), vars(getattr(ref, name))
        for key, value in mine.items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(value, theirs[key], equal_nan=True), (name, key)
            else:
                assert value == theirs[key], (name, key)
