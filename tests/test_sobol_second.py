"""Second-order Sobol' indices (SobolMartinez(second_order=True)): exact against
NumPy two-pass, the prequential interval against a NumPy reference, hostile data,
merges, checkpoints, Ishigami, the g-function and a coverage check that can fail."""

import doctest
import itertools
import math
import warnings

import h5py
import numba
import numpy as np
import pytest

import melissa_sa.stats.sobol_second as second_module
from melissa_sa.design import GroupLayout
from melissa_sa.kernels.sobol_second import RANGE_HIGH, RANGE_LOW
from melissa_sa.stats import MergeError
from melissa_sa.stats.sobol import SobolMartinez
from melissa_sa.stats.sobol_second import IF_START, SecondOrderState

Z95 = 1.959963984540054


# many tiny kernel calls: one Numba thread (conftest.one_numba_thread)
pytestmark = pytest.mark.usefixtures("one_numba_thread")


# -- helpers -------------------------------------------------------------------


def model_groups(fn, rng, n_groups, n_cells, p, low=0.0, high=1.0):
    """(n_groups, 2p + 2, n_cells): independent groups of ``fn`` in every cell."""
    layout = GroupLayout(p, second_order=True)
    a = rng.uniform(low, high, size=(n_groups * n_cells, p))
    b = rng.uniform(low, high, size=(n_groups * n_cells, p))
    y = fn(layout.build(a, b))                       # (n_groups * n_cells, 2p + 2)
    return np.ascontiguousarray(y.reshape(n_groups, n_cells, layout.size).transpose(0, 2, 1))


def skewed(x):
    """A smooth, skewed model of 3 inputs with every kind of interaction."""
    return np.exp(x[..., 0]) * (1 + x[..., 1]) + x[..., 1] * x[..., 2] ** 2 + 0.5 * x[..., 2]


def feed(data, ci="delta", second_order=True, fold_batch=None):
    p = (data.shape[1] - 2) // 2
    s = SobolMartinez(data.shape[2], p, ci=ci, second_order=second_order,
                      fold_batch=fold_batch)
    for group in data:
        s.update(group if second_order else group[:p + 2])
    return s


def corr(x, y):
    return np.corrcoef(x, y)[0, 1]


def second_reference(data):
    """Two-pass ``corr(C_i, D_j) - corr(B, C_i) - corr(B, C_j)`` per pair and cell."""
    x = data.astype(np.float64)
    p = (x.shape[1] - 2) // 2
    pairs = list(itertools.combinations(range(p), 2))
    out = np.empty((len(pairs), x.shape[2]))
    for c in range(x.shape[2]):
        for q, (i, j) in enumerate(pairs):
            out[q, c] = (corr(x[:, 2 + i, c], x[:, 2 + p + j, c])
                         - corr(x[:, 1, c], x[:, 2 + i, c]) - corr(x[:, 1, c], x[:, 2 + j, c]))
    return out


def prequential_reference(x, p, i, j, n0=IF_START, q=Z95):
    """The interval of S_ij for one cell (x: (n, 2p + 2)), two-pass at every step."""
    n = len(x)
    b, ci, cj, dj = x[:, 1], x[:, 2 + i], x[:, 2 + j], x[:, 2 + p + j]

    def influence(u, v, t):
        r = corr(u[:t], v[:t])
        scale = math.sqrt(t / (t + 1))
        ut = (u[t] - u[:t].mean()) / u[:t].std() * scale
        vt = (v[t] - v[:t].mean()) / v[:t].std() * scale
        return ut * vt - 0.5 * r * (ut * ut + vt * vt)

    total = 0.0
    weight = 0
    for t in range(n0, n):
        v = influence(ci, dj, t) - influence(b, ci, t) - influence(b, cj, t)
        total += t * v * v
        weight += t
    s = corr(ci, dj) - corr(b, ci) - corr(b, cj)
    se = math.sqrt(total / weight / (n - 3))
    return s - q * se, s + q * se


def ishigami(x, a=7.0, b=0.1):
    s1 = np.sin(x[..., 0])
    return s1 + a * np.sin(x[..., 1]) ** 2 + b * x[..., 2] ** 4 * s1


# exact Ishigami indices, a = 7, b = 0.1, inputs U(-pi, pi):
# V = V1 + V2 + V13, the only interaction is {1, 3}
_V1 = 0.5 * (1 + 0.1 * np.pi**4 / 5) ** 2
_V2 = 49 / 8
_V13 = 0.01 * np.pi**8 * (1 / 18 - 1 / 50)
_V = _V1 + _V2 + _V13
ISHIGAMI_S = np.array([_V1, _V2, 0.0]) / _V
ISHIGAMI_ST = np.array([_V1 + _V13, _V2, _V13]) / _V
ISHIGAMI_S2 = np.array([0.0, _V13 / _V, 0.0])             # pairs (1,2), (1,3), (2,3)

# Sobol' g-function, x ~ U(0, 1): Y = prod (|4 x_k - 2| + a_k) / (1 + a_k);
# V_k = 1 / (3 (1 + a_k)^2), V = prod (1 + V_k) - 1, V_ij = V_i V_j
G_A = np.array([0.0, 1.0, 4.5, 9.0])
_GV = 1.0 / (3.0 * (1.0 + G_A) ** 2)
_GVT = np.prod(1.0 + _GV) - 1.0
G_S = _GV / _GVT
G_S2 = np.array([_GV[i] * _GV[j] for i, j in itertools.combinations(range(4), 2)]) / _GVT


def g_function(x):
    return np.prod((np.abs(4.0 * x - 2.0) + G_A) / (1.0 + G_A), axis=-1)


# -- exactness -----------------------------------------------------------------


@pytest.mark.parametrize("ci", ["delta", "fisher"])
def test_matches_numpy_corrcoef_and_first_order_is_untouched(ci):
    rng = np.random.default_rng(1)
    data = model_groups(skewed, rng, 400, 6, 3)
    s = feed(data, ci)
    np.testing.assert_allclose(s.second_order, second_reference(data), rtol=0, atol=1e-12)
    first_only = feed(data, ci, second_order=False)
    np.testing.assert_array_equal(s.folded_state(), first_only.folded_state())
    np.testing.assert_array_equal(s.first_order, first_only.first_order)
    np.testing.assert_array_equal(s.total_order, first_only.total_order)
    both, alone = s.confidence_interval(), first_only.confidence_interval()
    assert len(both) == 3 and len(alone) == 2
    for x, y in zip(both[:2], alone):
        np.testing.assert_array_equal(x, y)


def test_pairs_shapes_and_memory():
    s = SobolMartinez(5, 4, second_order=True)
    assert s.has_second_order and s.n_pairs == 6
    assert s.pairs == list(itertools.combinations(range(4), 2))
    assert s.second_order.shape == (6, 5)
    assert all(a.shape == (6, 5) for a in s.confidence_interval()[2])
    # 8 (9 + 16 p) + 8 (2 + 3 p + p (p - 1)) bytes per cell
    assert s.nbytes == 5 * 8 * (9 + 16 * 4 + 2 + 3 * 4 + 4 * 3)
    assert SobolMartinez(1, 3, second_order=True).nbytes == 456 + 136
    assert not SobolMartinez(5, 4).has_second_order


def test_interval_matches_prequential_numpy_reference():
    rng = np.random.default_rng(2)
    data = model_groups(skewed, rng, 300, 3, 3)
    # the reference evaluates each group's terms with the estimates of every
    # earlier group: fold one group at a time (the default batched fold
    # gives a plug-in up to fold_batch - 1 groups older, tested below)
    s = feed(data, fold_batch=1)
    low, high = s.confidence_interval(0.95)[2]
    for c in range(3):
        for q, (i, j) in enumerate(s.pairs):
            lo, hi = prequential_reference(data[:, :, c], 3, i, j)
            np.testing.assert_allclose([low[q, c], high[q, c]], [lo, hi], rtol=1e-9)
    # levels nest, and the half width scales with the normal quantile
    low90, high90 = s.confidence_interval(0.90)[2]
    assert np.all(low < low90) and np.all(high90 < high)
    np.testing.assert_allclose((high90 - low90) / (high - low), 1.6448536269514722 / Z95)


def test_a_stack_of_groups_folds_like_one_after_the_other():
    """The kernel folds a stack (m, 2p + 2, n_cells) in one pass: the sums are
    those of single folds; the interval's terms of the stack use the
    estimates from before it (for callers that fold several groups per pass)."""
    rng = np.random.default_rng(16)
    data = model_groups(skewed, rng, 64, 5, 3)
    single = feed(data)
    first = SobolMartinez(5, 3)              # the first-order part, folded after
    second = SecondOrderState(5, 3)
    for start in range(0, 64, 4):
        stack = data[start:start + 4]
        second.fold(first.folded_state(), stack, first.count)
        for group in stack:
            first.update(group[:5])
    np.testing.assert_array_equal(first.folded_state(), single.folded_state())
    moments = [0] + list(range(2, 2 + 3 * 3 + 3))      # all but W and the IF sums
    np.testing.assert_allclose(second.array[:, moments],
                               single._second.array[:, moments], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(second.indices(first.folded_state()), single.second_order,
                               atol=1e-13)
    # each term is weighted by the groups before its stack
    assert np.all(second.array[:, 1] == 4 * sum(range(12, 64, 4)))
    low, high = second.interval(first.folded_state(), 64, Z95)
    slow, shigh = single.confidence_interval()[2]
    np.testing.assert_allclose(high - low, shigh - slow, rtol=0.25)


def test_a_first_order_side_that_buffers_groups():
    """Each group folded here at once while the first-order state lags by up
    to 3 groups (n_state < n): the sums are exact; the interval's plug-ins
    are a few groups older (weights n_state)."""
    rng = np.random.default_rng(17)
    data = model_groups(ishigami, rng, 400, 6, 3, -np.pi, np.pi)
    single = feed(data)
    first = SobolMartinez(6, 3)
    second = SecondOrderState(6, 3)
    pending = []
    weight = 0
    for n, group in enumerate(data):
        second.fold(first.folded_state(), group, n, first.count)
        weight += first.count if first.count >= IF_START else 0
        pending.append(group[:5])
        if len(pending) == 4:
            for rows in pending:
                first.update(rows)
            pending = []
    moments = [0] + list(range(2, 2 + 3 * 3 + 3))
    np.testing.assert_allclose(second.array[:, moments],
                               single._second.array[:, moments], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(second.indices(first.folded_state()), single.second_order,
                               atol=1e-13)
    assert np.all(second.array[:, 1] == weight)
    low, high = second.interval(first.folded_state(), 400, Z95)
    slow, shigh = single.confidence_interval()[2]
    np.testing.assert_allclose(high - low, shigh - slow, rtol=0.03)


# -- hostile data ----------------------------------------------------------------


def test_offset_1e9_plus_noise():
    rng = np.random.default_rng(3)
    data = 1e9 + model_groups(skewed, rng, 500, 5, 3)
    s = feed(data, fold_batch=1)  # the exact prequential definition (see above)
    # x - x[0, 0, 0] is exact here (Sterbenz): two-pass on it is the exact answer
    ref = second_reference(data - data[0, 0, 0])
    np.testing.assert_allclose(s.second_order, ref, rtol=0, atol=1e-11)
    low, high = s.confidence_interval()[2]
    lo, hi = prequential_reference(data[:, :, 0] - data[0, 0, 0], 3, 0, 2)
    np.testing.assert_allclose([low[1, 0], high[1, 0]], [lo, hi], rtol=1e-8)


def test_first_sample_far_in_the_tail():
    rng = np.random.default_rng(4)
    data = model_groups(skewed, rng, 500, 4, 3)
    data[0] += 5.0 * data.std(axis=0).mean()     # the shift is 5 sd from the mean
    s = feed(data)
    np.testing.assert_allclose(s.second_order, second_reference(data), rtol=0, atol=1e-12)


def test_float32_input_is_exact_on_its_values():
    rng = np.random.default_rng(5)
    data = (1000.0 + model_groups(skewed, rng, 300, 4, 3)).astype(np.float32)
    s32 = feed(data)
    s64 = feed(data.astype(np.float64))
    np.testing.assert_array_equal(s32._second.array, s64._second.array)
    np.testing.assert_allclose(s32.second_order, second_reference(data), rtol=0, atol=1e-12)


def test_constant_cells_give_zero_and_degenerate_interval():
    rng = np.random.default_rng(6)
    data = model_groups(skewed, rng, 60, 4, 3)
    data[:, :, 1] = 3.0
    data[:, :, 2] = 1e9 + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = feed(data.astype(np.float32))
        second = s.second_order
        low, high = s.confidence_interval()[2]
    for arr in (second, low, high):
        assert np.all(arr[:, [1, 2]] == 0)
        assert np.all(np.isfinite(arr))
    assert np.all(low[:, [0, 3]] < high[:, [0, 3]])


def test_nan_propagates_to_its_cell_only():
    rng = np.random.default_rng(7)
    data = model_groups(skewed, rng, 40, 3, 3)
    data[20, 7, 1] = np.nan                       # D_2 of cell 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = feed(data)
        second = s.second_order
        low, high = s.confidence_interval()[2]
    for arr in (second, low, high):
        # pairs (1, 3) and (2, 3) read D_3; pair (1, 2) does not
        assert np.all(np.isnan(arr[1:, 1])) and np.isfinite(arr[0, 1])
        assert np.all(np.isfinite(arr[:, [0, 2]]))
    clean = feed(data[:, :, [0, 2]])
    np.testing.assert_array_equal(second[:, [0, 2]], clean.second_order)
    np.testing.assert_array_equal(low[:, [0, 2]], clean.confidence_interval()[2][0])


def test_few_groups_are_defined():
    rng = np.random.default_rng(8)
    data = model_groups(skewed, rng, IF_START + 1, 2, 3)
    s = SobolMartinez(2, 3, second_order=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n in range(IF_START + 2):
            if n:
                s.update(data[n - 1])
            second = s.second_order
            low, high = s.confidence_interval()[2]
            assert np.all(np.isfinite(second))
            if n < 2:      # no variance yet: index 0, interval [0, 0]
                assert np.all(second == 0) and np.all(low == 0) and np.all(high == 0)
            elif n <= IF_START:   # no IF contribution yet: the estimator's range
                assert np.all(low == RANGE_LOW) and np.all(high == RANGE_HIGH)
            else:
                assert np.all(low < second) and np.all(second < high)


# -- merge ---------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 37, 150, 299, 300])
def test_merge_two_parts(cut):
    rng = np.random.default_rng(9)
    data = 1e6 + model_groups(skewed, rng, 300, 5, 3)
    whole = feed(data)
    left, right = feed(data[:cut]), feed(data[cut:])
    left.merge(right)
    assert left.count == whole.count == 300
    np.testing.assert_allclose(left.second_order, whole.second_order, rtol=0, atol=1e-12)
    np.testing.assert_allclose(left.first_order, whole.first_order, rtol=0, atol=1e-12)
    (_, _), (_, _), (low, high) = left.confidence_interval()
    (_, _), (_, _), (wlow, whigh) = whole.confidence_interval()
    if cut in (0, 300):   # one side empty: a copy of the other
        np.testing.assert_allclose(high - low, whigh - wlow, rtol=1e-12)
    # prequential sums from two streams add (each side's weights are its own
    # group counts); the interval is consistent, not that of one stream
    sides = feed(data[:cut])._second.array[:, 1] + feed(data[cut:])._second.array[:, 1]
    np.testing.assert_array_equal(left._second.array[:, 1], sides)


def test_merge_many_parts_interval_close_to_one_stream():
    rng = np.random.default_rng(10)
    data = model_groups(ishigami, rng, 4000, 20, 3, -np.pi, np.pi)
    whole = feed(data)
    parts = [feed(data[k:k + 500]) for k in range(0, 4000, 500)]
    merged = parts[0]
    for part in parts[1:]:
        merged += part
    np.testing.assert_allclose(merged.second_order, whole.second_order, rtol=0, atol=1e-12)
    width = np.subtract(*merged.confidence_interval()[2][::-1])
    wwidth = np.subtract(*whole.confidence_interval()[2][::-1])
    # measured: ratio 1.025 +- 0.024 (each part's early plug-ins are worse)
    ratio = width / wwidth
    assert np.all(np.abs(ratio - 1) < 0.10), ratio
    assert abs(ratio.mean() - 1) < 0.04, ratio.mean()


def test_merge_with_itself_and_refusals():
    rng = np.random.default_rng(11)
    data = model_groups(skewed, rng, 50, 3, 3)
    s = feed(data)
    s.merge(s)
    np.testing.assert_allclose(s.second_order, feed(np.concatenate([data, data])).second_order,
                               atol=1e-12)
    for other in (SobolMartinez(3, 3), SobolMartinez(3, 4, second_order=True)):
        with pytest.raises(MergeError):
            s.merge(other)
    with pytest.raises(MergeError, match="has_second_order"):
        SobolMartinez(3, 3).merge(SobolMartinez(3, 3, second_order=True))


# -- validation ----------------------------------------------------------------


def test_validation():
    with pytest.raises(ValueError, match=r"second_order.*n_params=1"):
        SobolMartinez(3, 1, second_order=True)
    with pytest.raises(ValueError, match="second_order"):
        SobolMartinez(3, 3, second_order="yes")
    with pytest.raises(ValueError, match="second_order=True"):
        _ = SobolMartinez(3, 3).second_order
    s = SobolMartinez(3, 3, second_order=True)
    with pytest.raises(ValueError, match=r"expected \(8, 3\).*D_3"):
        s.update(np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"expected \(5, 3\)"):
        SobolMartinez(3, 3).update(np.zeros((8, 3)))


# -- checkpoint ----------------------------------------------------------------


@pytest.mark.parametrize("ci", ["delta", "fisher"])
def test_save_load_round_trip_then_continue(tmp_path, ci):
    rng = np.random.default_rng(12)
    data = model_groups(skewed, rng, 100, 7, 3)
    s = feed(data[:60], ci)
    with h5py.File(tmp_path / "ckpt.h5", "w") as f:
        s.save(f.create_group("sobol"))
        s.save(f["sobol"])
    with h5py.File(tmp_path / "ckpt.h5", "r") as f:
        back = SobolMartinez.load(f["sobol"])
        assert bool(f["sobol"].attrs["second_order"])
    assert back.has_second_order and back.count == 60
    np.testing.assert_array_equal(back._second.array, s._second.array)
    for group in data[60:]:
        back.update(group)
    whole = feed(data, ci)
    np.testing.assert_array_equal(back._second.array, whole._second.array)
    np.testing.assert_array_equal(back.confidence_interval()[2], whole.confidence_interval()[2])


def test_first_order_checkpoints_load_as_first_order(tmp_path):
    rng = np.random.default_rng(13)
    data = model_groups(skewed, rng, 30, 4, 3)
    s = feed(data, second_order=False, fold_batch=1)  # no group buffer: nbytes = state
    with h5py.File(tmp_path / "ckpt.h5", "w") as f:
        s.save(f.create_group("new"))
        s.save(f.create_group("old"))
        del f["old"].attrs["second_order"]        # written before second order existed
        with_flag = feed(data)
        with_flag.save(f.create_group("broken"))
        del f["broken/second"]
    with h5py.File(tmp_path / "ckpt.h5", "r") as f:
        for name in ("new", "old"):
            back = SobolMartinez.load(f[name])
            assert not back.has_second_order
            assert back.folded_state().nbytes == s.folded_state().nbytes
            np.testing.assert_array_equal(back.first_order, s.first_order)
        with pytest.raises(ValueError, match="/broken: missing dataset 'second'"):
            SobolMartinez.load(f["broken"])


# -- threads -------------------------------------------------------------------


def test_threads_agree():
    rng = np.random.default_rng(14)
    data = model_groups(skewed, rng, 30, 4000, 3)
    one = feed(data)
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        two = feed(data)
        ci_two = two.confidence_interval()[2]
    finally:
        numba.set_num_threads(1)
    np.testing.assert_array_equal(one._second.array, two._second.array)
    np.testing.assert_array_equal(one.confidence_interval()[2], ci_two)


# -- analytic cases ----------------------------------------------------------------


def test_ishigami_second_order_and_first_order_unchanged():
    """10^4 groups, 8 cells as independent replicates: S_12 = S_23 = 0 and
    S_13 = ST_1 - S_1 = 0.2437; S_k and ST_k bit-identical to first order alone."""
    np.testing.assert_allclose(ISHIGAMI_S2[1], ISHIGAMI_ST[0] - ISHIGAMI_S[0], rtol=1e-14)
    np.testing.assert_allclose(ISHIGAMI_S2[1], 0.2437, atol=5e-5)
    rng = np.random.default_rng(2017)
    cells = 8
    data = model_groups(ishigami, rng, 10_000, cells, 3, -np.pi, np.pi)
    s = feed(data)
    first_only = feed(data, second_order=False)
    np.testing.assert_array_equal(s.first_order, first_only.first_order)
    np.testing.assert_array_equal(s.total_order, first_only.total_order)
    second = s.second_order
    low, high = s.confidence_interval()[2]
    se = (high - low) / (2 * Z95)
    # each replicate within 4 se, their mean within 4 se / sqrt(cells)
    assert np.all(np.abs(second - ISHIGAMI_S2[:, None]) < 4 * se), second
    mean_se = se.mean(axis=1) / math.sqrt(cells)
    assert np.all(np.abs(second.mean(axis=1) - ISHIGAMI_S2) < 4 * mean_se), second.mean(axis=1)
    # the interval's se matches the spread of the replicates (8 cells: loose)
    spread = second.std(axis=1, ddof=1)
    assert np.all((spread > 0.4 * se.mean(axis=1)) & (spread < 1.8 * se.mean(axis=1)))


def test_g_function_with_real_interactions():
    """a = (0, 1, 4.5, 9): S_12 = V_1 V_2 / V = 0.0597 among six pairs."""
    assert G_S2[0] > 0.05 and np.all(G_S2 > 0)
    rng = np.random.default_rng(9)
    cells = 6
    data = model_groups(g_function, rng, 10_000, cells, 4)
    s = feed(data)
    first = s.first_order
    second = s.second_order
    low, high = s.confidence_interval()[2]
    se = (high - low) / (2 * Z95)
    assert np.all(np.abs(first - G_S[:, None]) < 0.05)
    assert np.all(np.abs(second - G_S2[:, None]) < 4 * se), second
    mean_se = se.mean(axis=1) / math.sqrt(cells)
    assert np.all(np.abs(second.mean(axis=1) - G_S2) < 4 * mean_se), second.mean(axis=1)


def test_coverage_can_fail():
    """200 replicates (cells) of 2000 Ishigami groups: the 95 % intervals of
    the three pairs cover 600 times out of 600 trials about 95 %; the band
    (0.92, 0.98) is about 3 binomial s.e. (0.9 point) either side."""
    rng = np.random.default_rng(15)
    s = SobolMartinez(200, 3, second_order=True)
    for _ in range(4):
        for group in model_groups(ishigami, rng, 500, 200, 3, -np.pi, np.pi):
            s.update(group)
    low, high = s.confidence_interval(0.95)[2]
    covered = (low <= ISHIGAMI_S2[:, None]) & (ISHIGAMI_S2[:, None] <= high)
    assert 0.92 < covered.mean() < 0.98, covered.mean(axis=1)
    assert np.all(covered.mean(axis=1) > 0.89), covered.mean(axis=1)


# -- docs ----------------------------------------------------------------------


def test_docstring_example():
    result = doctest.testmod(second_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_a_buffered_group_is_a_copy_when_the_caller_reuses_its_array():
    """With a fold buffer, the accumulator keeps its own copy of each group: a
    caller that refills one scratch array between calls changes nothing."""
    rng = np.random.default_rng(3)
    data = model_groups(skewed, rng, 6, 5, 3)
    reference = feed(data, fold_batch=4)
    s = SobolMartinez(5, 3, second_order=True, fold_batch=4)
    scratch = np.empty_like(data[0])
    for group in data:
        scratch[...] = group
        s.update(scratch)
        scratch[...] = -1.0e6    # the caller reuses its array at once
    np.testing.assert_array_equal(s.first_order, reference.first_order)
    np.testing.assert_array_equal(s.second_order, reference.second_order)
