"""SobolMartinez (layout 2: power-sum fourth-order block) on hostile data.

Each case is checked against two independent NumPy references:

* the indices against ``np.corrcoef`` (two-pass) to 1e-12 **absolute**: the
  indices are correlations, dimensionless in [-1, 1], and a true index of 0
  makes a relative tolerance meaningless;
* the delta-method interval against the layout-1 estimator (the Pébay
  recursions this layout replaced), written here in two-pass form
  (:func:`delta_half_width`: exact centred moments, the same formula):
  half-widths within 1e-6 **relative**, and the bounds too;
* merges: any split of the stream, merged, against the whole stream.
"""

import math
import zlib

import h5py
import numba
import numpy as np
import pytest

from melissa_sa.kernels.sobol import LAYOUT
from melissa_sa.stats._state import STATE_VERSION
from melissa_sa.stats.sobol import SobolMartinez

Z95 = 1.959963984540054
N_GROUPS = 2000
N_CELLS = 6
P = 3


@pytest.fixture(autouse=True, scope="module")
def one_numba_thread():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def pick_freeze(rng, noise, n_groups=N_GROUPS, n_cells=N_CELLS, p=P):
    """(n_groups, p + 2, n_cells) groups of ``Y = sum_k w_k X_k + 0.3 X1 X2``
    whose inputs are drawn by ``noise(size)``: A, B and C_k share inputs as
    in a real pick-freeze design, so the indices are far from 0 and 1."""
    xa = noise((n_groups, p, n_cells))
    xb = noise((n_groups, p, n_cells))
    w = np.linspace(1.0, 0.4, p)[None, :, None]

    def f(x):
        return (w * x).sum(axis=1) + 0.3 * x[:, 0] * x[:, 1]

    rows = [f(xa), f(xb)]
    for k in range(p):
        xc = xa.copy()
        xc[:, k] = xb[:, k]
        rows.append(f(xc))
    return np.stack(rows, axis=1)


def feed(data):
    s = SobolMartinez(data.shape[2], data.shape[1] - 2)
    for group in data:
        s.update(group)
    return s


def two_pass_corr(data):
    """(corr(B, C_k), corr(A, C_k)), each (p, n_cells), by np.corrcoef.

    The cell's first A value is subtracted first (exact by Sterbenz' lemma
    for ``1e9 + noise``): on the raw values NumPy's mean itself errs by
    ~1e-7, which alone moves a correlation by ~1e-12.
    """
    x = data.astype(np.float64)
    x = x - x[:1, :1]
    p = x.shape[1] - 2
    rb = np.empty((p, x.shape[2]))
    ra = np.empty((p, x.shape[2]))
    for c in range(x.shape[2]):
        cc = np.corrcoef(x[:, :, c].T)
        rb[:, c] = cc[1, 2:]
        ra[:, c] = cc[0, 2:]
    return rb, ra


def delta_half_width(x, y, q=Z95):
    """(low, high, half-width on the z scale) of the layout-1 delta interval
    of corr(x, y), from exact two-pass centred moments."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    x, y = x - x[0], y - x[0]  # exact for 1e9 + noise (see two_pass_corr)
    n = len(x)
    xt = (x - x.mean()) / x.std()
    yt = (y - y.mean()) / y.std()
    r = np.mean(xt * yt)
    influence = xt * yt - 0.5 * r * (xt**2 + yt**2)
    se_z = math.sqrt(np.mean(influence**2) / (n - 3)) / (1 - r * r)
    z = math.atanh(r)
    return math.tanh(z - q * se_z), math.tanh(z + q * se_z), q * se_z


def hostile(case):
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    normal = rng.standard_normal
    if case == "offset 1e9":
        return 1e9 + pick_freeze(rng, normal)
    if case == "first sample 5 sd in the tail":
        data = pick_freeze(rng, normal)
        a = data[:, 0]
        data[0, 0] = a.mean(axis=0) + 5 * a.std(axis=0)  # the shift is this A value
        return data
    if case == "first sample 1000 sd away":
        data = pick_freeze(rng, normal)
        a = data[:, 0]
        data[0, 0] = a.mean(axis=0) + 1000 * a.std(axis=0)
        return data
    if case == "student t 5 dof":
        return pick_freeze(rng, lambda size: rng.standard_t(5, size))
    if case == "float32 offset 1e3":
        return (1e3 + pick_freeze(rng, normal)).astype(np.float32)
    if case == "float32 offset 1e6":
        return (1e6 + pick_freeze(rng, normal)).astype(np.float32)
    raise AssertionError(case)


CASES = ["offset 1e9", "first sample 5 sd in the tail", "first sample 1000 sd away",
         "student t 5 dof", "float32 offset 1e3", "float32 offset 1e6"]


def check_against_references(s, data):
    first, total = s.indices
    rb, ra = two_pass_corr(data)
    np.testing.assert_allclose(first, rb, rtol=0, atol=1e-12)
    np.testing.assert_allclose(1.0 - total, ra, rtol=0, atol=1e-12)
    (flo, fhi), (tlo, thi) = s.confidence_interval(0.95)
    for c in range(data.shape[2]):
        for k in range(data.shape[1] - 2):
            for x, lo, hi, flip in ((data[:, 1, c], flo, fhi, False),
                                    (data[:, 0, c], tlo, thi, True)):
                ref_lo, ref_hi, ref_half = delta_half_width(x, data[:, 2 + k, c])
                got_lo, got_hi = lo[k, c], hi[k, c]
                if flip:  # ST = 1 - r
                    got_lo, got_hi = 1.0 - got_hi, 1.0 - got_lo
                half = 0.5 * (math.atanh(got_hi) - math.atanh(got_lo))
                assert abs(half - ref_half) <= 1e-6 * ref_half, (c, k, half, ref_half)
                np.testing.assert_allclose([got_lo, got_hi], [ref_lo, ref_hi], rtol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_hostile_data_matches_two_pass(case):
    data = hostile(case)
    check_against_references(feed(data), data)


@pytest.mark.parametrize("case", CASES)
def test_hostile_data_merge_is_exact(case):
    data = hostile(case)
    whole = feed(data)
    parts = [feed(data[lo:hi]) for lo, hi in [(0, 3), (3, 700), (700, 701), (701, N_GROUPS)]]
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    assert merged.count == whole.count
    check_against_references(merged, data)
    np.testing.assert_allclose(merged.first_order, whole.first_order, rtol=0, atol=1e-13)
    np.testing.assert_allclose(merged.total_order, whole.total_order, rtol=0, atol=1e-13)
    # a first sample D = 1000 sd out leaves ~eps D^4 / n relative in the
    # fourth-order sums, differently in each split (both within 1e-6 of the
    # reference, checked above); otherwise merged and whole agree to rounding
    rtol = 2e-6 if case == "first sample 1000 sd away" else 1e-9
    for a, b in zip(merged.confidence_interval(), whole.confidence_interval()):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12)


def test_constant_cells_alone_and_among_others():
    rng = np.random.default_rng(5)
    data = pick_freeze(rng, rng.standard_normal, n_groups=300)
    data[:, :, 1] = 7.0
    data[:, :, 2] = np.float32(1e9 + 0.5)
    data[:, :, 3] = -2.5e-300
    for d in (data, data.astype(np.float32)):
        s = feed(d)
        first, total = s.indices
        intervals = [s.confidence_interval(method=m) for m in ("delta", "fisher", "delta-linear")]
        for cell in (1, 2, 3):
            assert np.all(first[:, cell] == 0) and np.all(total[:, cell] == 0)
            for (flo, fhi), (tlo, thi) in intervals:
                for arr in (flo, fhi, tlo, thi):
                    assert np.all(arr[:, cell] == 0)
        keep = [0, 4, 5]
        check_against_references(feed(d[:, :, keep]), d[:, :, keep])


def layout1_state(data):
    """The layout-1 full state (centred block 2) of ``data``, two-pass."""
    n, rows, n_cells = data.shape
    p = rows - 2
    h = 5 + 4 * p
    state = np.zeros((n_cells, 9 + 16 * p))
    for c in range(n_cells):
        x = data[:, :, c].astype(np.float64)
        shift = x[0, 0]
        d = x - x.mean(axis=0)
        A, B = d[:, 0], d[:, 1]
        row = state[c]
        row[0] = shift
        row[1:3] = x[:, :2].mean(axis=0) - shift
        row[3:5] = (A**2).sum(), (B**2).sum()
        row[h:h + 4] = (A**3).sum(), (A**4).sum(), (B**3).sum(), (B**4).sum()
        for k in range(p):
            i = 5 + 4 * k
            j = h + 4 + 12 * k
            C = d[:, 2 + k]
            row[i:i + 4] = x[:, 2 + k].mean() - shift, (C**2).sum(), (A * C).sum(), (B * C).sum()
            block = [(C**3).sum(), (C**4).sum()]
            for X in (A, B):
                block += [(X**2 * C).sum(), (X * C**2).sum(), (X**3 * C).sum(),
                          (X**2 * C**2).sum(), (X * C**3).sum()]
            row[j:j + 12] = block
    return state


def test_layout1_checkpoint_is_converted(tmp_path):
    data = hostile("first sample 5 sd in the tail")[:500]
    with h5py.File(tmp_path / "old.h5", "w") as f:
        g = f.create_group("sobol")  # what SobolMartinez.save wrote before layout 2
        g.attrs.update({"kind": "SobolMartinez", "state_version": STATE_VERSION,
                        "n": len(data), "n_cells": N_CELLS, "n_params": P, "ci": "delta"})
        g.create_dataset("state", data=layout1_state(data))
    with h5py.File(tmp_path / "old.h5", "r") as f:
        old = SobolMartinez.load(f["sobol"])
    check_against_references(old, data)
    # it keeps streaming like a layout-2 state
    more = hostile("first sample 5 sd in the tail")[500:900]
    for group in more:
        old.update(group)
    check_against_references(old, np.concatenate([data, more]))


def test_unknown_layout_is_refused(tmp_path):
    s = SobolMartinez(2, 1)
    with h5py.File(tmp_path / "new.h5", "w") as f:
        s.save(f.create_group("sobol"))
        assert f["sobol"].attrs["layout"] == LAYOUT
        f["sobol"].attrs["layout"] = LAYOUT + 1
        with pytest.raises(ValueError, match=rf"/sobol: SobolMartinez state layout {LAYOUT + 1}"):
            SobolMartinez.load(f["sobol"])


# -- aggregated indices of the whole field ---------------------------------------


def test_aggregated_indices_match_numpy_and_reduce_over_parts():
    from melissa_sa.stats.sobol_aggregated import aggregate_indices

    rng = np.random.default_rng(21)
    data = pick_freeze(rng, rng.standard_normal, n_groups=400, n_cells=40)
    data *= np.linspace(0.5, 3.0, 40)  # cells of different variances
    data[:, :, 7] = 2.0                # a constant cell adds nothing
    x = data - data[:1, :1]
    d = x - x.mean(axis=0)
    cov = lambda u, v: (u * v).sum(axis=0) / (len(u) - 1)  # noqa: E731
    first_ref = np.empty(P)
    total_ref = np.empty(P)
    for k in range(P):
        c = d[:, 2 + k]
        first_ref[k] = cov(d[:, 1], c).sum() / np.sqrt(cov(d[:, 1], d[:, 1]) * cov(c, c)).sum()
        total_ref[k] = 1 - cov(d[:, 0], c).sum() / np.sqrt(cov(d[:, 0], d[:, 0]) * cov(c, c)).sum()
    whole = feed(data)
    first, total = aggregate_indices(whole.aggregated_sums())
    np.testing.assert_allclose(first, first_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(total, total_ref, rtol=0, atol=1e-10)
    # ranks owning disjoint cells reduce a few numbers each
    parts = [feed(data[:, :, lo:hi]).aggregated_sums() for lo, hi in [(0, 13), (13, 14), (14, 40)]]
    first_r, total_r = aggregate_indices(sum(parts))
    np.testing.assert_allclose(first_r, first_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(total_r, total_ref, rtol=0, atol=1e-10)
    # a constant field gives 0, like a constant cell
    flat = aggregate_indices(feed(np.full((10, P + 2, 3), 4.0)).aggregated_sums())
    assert np.all(flat[0] == 0) and np.all(flat[1] == 0)
    with pytest.raises(ValueError, match="aggregated_sums"):
        aggregate_indices(np.zeros((3, P)))


def test_interval_bounds_by_the_addition_formula_match_tanh_of_atanh():
    """The z-scale bounds come from tanh(atanh(r) -+ d) = (r -+ t) / (1 -+ r t),
    t = tanh(d) (one transcendental instead of three): the same numbers, in
    [-1, 1], degenerate at |r| = 1, NaN kept."""
    from melissa_sa.kernels.sobol_centred import DELTA, FISHER, _interval

    q = 1.959963984540054
    for rho in np.concatenate([np.linspace(-0.999999, 0.999999, 41), [0.0, 1e-300, -0.5]]):
        for se in np.logspace(-6, 2, 17):
            for method, scale in ((FISHER, 1.0), (DELTA, 1.0 / (1.0 - rho * rho))):
                lo, hi = _interval(rho, se, q, method)
                z, d = np.arctanh(rho), q * se * scale
                assert -1.0 <= lo <= rho <= hi <= 1.0
                # atanh near |r| = 1 is ill-conditioned: compare at its own error
                tol = 1e-15 + 1e-15 / (1.0 - rho * rho)
                assert abs(lo - np.tanh(z - d)) <= tol, (rho, se, method)
                assert abs(hi - np.tanh(z + d)) <= tol, (rho, se, method)
    assert _interval(1.0, 0.1, q, DELTA) == (1.0, 1.0)
    assert _interval(-1.0, 0.1, q, FISHER) == (-1.0, -1.0)
    lo, hi = _interval(0.3, float("nan"), q, DELTA)
    assert np.isnan(lo) and np.isnan(hi)


@pytest.mark.parametrize("ci, second_order", [("delta", False), ("fisher", False),
                                              ("delta", True)])
@pytest.mark.parametrize("n_groups", [3, 40])
def test_indices_and_interval_in_one_pass_equal_the_two_calls(ci, second_order, n_groups):
    """``indices_and_interval`` (the results writer's call) = ``indices`` and
    ``confidence_interval``, bit for bit, with a constant and a NaN cell."""
    rng = np.random.default_rng(21)
    p, n_cells = 3, 50
    s = SobolMartinez(n_cells, p, ci=ci, second_order=second_order)
    rows = 2 * p + 2 if second_order else p + 2
    for g in range(n_groups):
        group = rng.standard_normal((rows, n_cells)) + 1e6
        group[:, 7] = 4.0                      # constant cell
        if g == 1:
            group[2, 9] = np.nan               # NaN in one cell
        s.update(group)
    (first, total), bounds = s.indices_and_interval(0.9)
    ref_first, ref_total = s.indices
    ref_bounds = s.confidence_interval(0.9)
    np.testing.assert_array_equal(first, ref_first)
    np.testing.assert_array_equal(total, ref_total)
    assert len(bounds) == len(ref_bounds) == (3 if second_order else 2)
    for got, ref in zip(bounds, ref_bounds, strict=True):
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    # the NaN (row C_1) reaches the indices of parameter 1 only, in that cell
    assert np.isnan(first[0, 9]) and np.isfinite(first[1:, 9]).all()
    assert (first[:, 7] == 0).all() and (total[:, 7] == 0).all()
