"""The batched Sobol' fold: kernels against successive one-group folds, and
SobolMartinez's group buffer (counts, reads, re-centring, save/load, merge,
dtypes, hostile data) against ``fold_batch=1``."""

import h5py
import numba
import numpy as np
import pytest

from melissa_sa.kernels.sobol import (
    martinez_update,
    martinez_update_many,
    row_width,
)
from melissa_sa.kernels.sobol_blocked import BLOCK, n_blocks
from melissa_sa.stats.row_pool import RowPool
from melissa_sa.stats.sobol import SobolMartinez
from melissa_sa.stats.sobol_fold import FOLD_BATCH, RECENTRE_AT

P = 3
#: the batched kernels do the operations of successive one-group folds in the
#: same order (measured bit for bit equal); the tolerance only allows for a
#: compiler that would schedule them differently
RTOL = 1e-14


# many tiny kernel calls: one Numba thread (conftest.one_numba_thread)
pytestmark = pytest.mark.usefixtures("one_numba_thread")


def groups_of(rng, n_groups, n_cells, p=P, offset=0.0, dtype=np.float64):
    """Correlated pick-freeze-like groups (n_groups, p + 2, n_cells)."""
    a = rng.gamma(2.0, 1.0, size=(n_groups, 1, n_cells))
    b = rng.gamma(2.0, 1.0, size=(n_groups, 1, n_cells))
    w = np.linspace(0.2, 1.5, p)[None, :, None]
    c = a * w + (1.5 - w) * b + 0.3 * rng.standard_normal((n_groups, p, n_cells))
    return (offset + np.concatenate([a, b, c], axis=1)).astype(dtype)


def assert_same(actual, expected, rtol=RTOL):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0.0)


def feed(data, fold_batch, ci="delta"):
    s = SobolMartinez(data.shape[2], data.shape[1] - 2, ci=ci, fold_batch=fold_batch)
    for group in data:
        s.update(group)
    return s


def results(s):
    return s.indices, s.confidence_interval(0.9)


def assert_same_results(a, b):
    (fa, ta), ((fl, fh), (tl, th)) = results(a)
    (fb, tb), ((gl, gh), (ul, uh)) = results(b)
    for x, y in ((fa, fb), (ta, tb), (fl, gl), (fh, gh), (tl, ul), (th, uh)):
        assert_same(x, y)


# -- kernels ---------------------------------------------------------------------------


@pytest.mark.parametrize("full", [True, False], ids=["full", "compact"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_cells", [1, 257, 1031])  # below, across and past a chunk
def test_kernel_equals_successive_updates(full, dtype, n_cells):
    rng = np.random.default_rng(1)
    offset = 1e9 if dtype == np.float64 else 1e3
    data = groups_of(rng, 23, n_cells, offset=offset, dtype=dtype)
    width = row_width(P, full)   # the kernels fold block 2 when the state has it
    expected = np.zeros((n_cells, width))
    for k, group in enumerate(data):
        martinez_update(expected, group, k)
    got = np.zeros((n_cells, width))
    n = 0
    for m in (1, 4, 2, 7, 8, 1):  # from n = 0 (the shift is set) and mid-stream
        martinez_update_many(got, data[n:n + m], n)
        n += m
    assert n == len(data)
    assert_same(got, expected)


def test_kernel_empty_batch_is_a_no_op():
    state = np.ones((5, row_width(P)))
    martinez_update_many(state, np.empty((0, P + 2, 5)), 3)
    martinez_update_many(state[:, :row_width(P, False)].copy(), np.empty((0, P + 2, 5)), 3)
    assert np.all(state == 1.0)


def test_kernel_nan_stays_in_its_cell():
    rng = np.random.default_rng(2)
    data = groups_of(rng, 6, 300)
    data[3, 2, 17] = np.nan
    state = np.zeros((300, row_width(P)))
    martinez_update_many(state, data, 0)
    assert np.isnan(state[17]).any()
    assert np.isfinite(np.delete(state, 17, axis=0)).all()


# -- the object's buffer ------------------------------------------------------------


@pytest.mark.parametrize("ci", ["delta", "fisher"])
@pytest.mark.parametrize("fold_batch", [2, 3, 4, 7])
def test_buffered_object_equals_unbuffered(ci, fold_batch):
    rng = np.random.default_rng(3)
    data = groups_of(rng, 41, 300)  # crosses the re-centring at 2 and 16 groups
    ref = SobolMartinez(300, P, ci=ci, fold_batch=1)
    s = SobolMartinez(300, P, ci=ci, fold_batch=fold_batch)
    for k, group in enumerate(data):
        ref.update(group)
        s.update(group)
        assert s.count == s.n == ref.count == k + 1
        if k in (0, 4, 17, 29):  # reads with a partly filled buffer
            assert_same_results(s, ref)
    assert_same_results(s, ref)
    assert_same(s.folded_state(), ref.folded_state())  # shift and every accumulator


def test_fold_now_folds_the_buffer_and_the_group_without_changing_a_bit():
    """``update(group)`` then ``flush()`` (a reader of the state at some
    groups) = buffered updates, bit for bit."""
    rng = np.random.default_rng(8)
    data = groups_of(rng, 41, 300)
    ref = SobolMartinez(300, P, fold_batch=1)
    s = SobolMartinez(300, P, fold_batch=4)
    for k, group in enumerate(data):
        ref.update(group)
        now = k % 5 in (0, 3)  # some at once, some buffered in between
        s.update(group)
        if now:
            s.flush()
        assert s.count == k + 1
        if now:
            assert s._folded == k + 1  # nothing left in the buffer
    assert_same_results(s, ref)
    assert_same(s.folded_state(), ref.folded_state())


def test_default_fold_batch():
    assert SobolMartinez(3, 2).fold_batch == FOLD_BATCH["delta"]
    assert SobolMartinez(3, 2, ci="fisher").fold_batch == FOLD_BATCH["fisher"]
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="fold_batch"):
            SobolMartinez(3, 2, fold_batch=bad)


def test_recentring_happens_at_the_same_counts(monkeypatch):
    """The buffer never folds across a re-centring count: the shifts move
    after exactly 2, 16 (and 256) groups, as with one-by-one updates."""
    import melissa_sa.stats.sobol_blocks as blocks_module
    import melissa_sa.stats.sobol_fold as module

    seen = []
    real = module.martinez_recentre

    def spy(state, n, n_params):
        seen.append(n)
        real(state, n, n_params)

    fold = blocks_module.blocked_update_many

    def fold_spy(state, groups, n, scratch, m=-1, recentre=False):
        # the cell-blocked state re-centres in the pass of the fold that
        # reaches the count
        fold(state, groups, n, scratch, m, recentre)
        if recentre:
            seen.append(n + (len(groups) if m < 0 else m))

    monkeypatch.setattr(module, "martinez_recentre", spy)
    monkeypatch.setattr(blocks_module, "blocked_update_many", fold_spy)
    rng = np.random.default_rng(4)
    data = groups_of(rng, 20, 50, offset=1e6)
    s = SobolMartinez(50, P, fold_batch=5)
    for group in data[:17]:
        s.update(group)
    assert seen == [2, 16]
    seen.clear()
    t = SobolMartinez(50, P, fold_batch=6)
    t.update_many(data)
    assert seen == [2, 16]
    assert_same(t.folded_state(), feed(data, 1).folded_state())
    assert RECENTRE_AT[:2] == (2, 16)


def test_update_many_equals_updates():
    rng = np.random.default_rng(5)
    data = groups_of(rng, 19, 120)
    ref = feed(data, 1)
    for fold_batch in (1, 4, 5):
        a = SobolMartinez(120, P, fold_batch=fold_batch)
        a.update(data[0])                    # one buffered group first
        a.update_many(data[1:12])            # an array: folded from it
        a.update_many(list(data[12:15]))     # a list of groups: buffered
        a.update_many(np.asfortranarray(data[15:19]))  # not C-contiguous: buffered
        a.update_many(data[:0])
        assert a.count == 19
        assert_same_results(a, ref)
    with pytest.raises(ValueError, match="groups shape"):
        a.update_many(data[0])
    with pytest.raises(ValueError, match="group shape"):
        a.update_many(np.zeros((2, P + 1, 120)))


def test_save_and_load_with_a_partly_filled_buffer(tmp_path):
    rng = np.random.default_rng(6)
    data = groups_of(rng, 14, 80)
    s = SobolMartinez(80, P, fold_batch=4)
    for group in data[:7]:   # folds at 2 (re-centring) and 6 groups: 1 buffered
        s.update(group)
    assert s.count == 7 and s._folded == 6
    with h5py.File(tmp_path / "s.h5", "w") as f:
        s.save(f.create_group("sobol"))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        back = SobolMartinez.load(f["sobol"])
    assert back.count == 7 and back.fold_batch == FOLD_BATCH["delta"]
    ref = feed(data[:7], 1)
    assert_same_results(back, ref)
    for group in data[7:]:
        back.update(group)
        ref.update(group)
        s.update(group)
    assert_same_results(back, ref)
    assert_same_results(s, ref)


@pytest.mark.parametrize("ci", ["delta", "fisher"])
def test_merge_with_partly_filled_buffers(ci):
    rng = np.random.default_rng(7)
    data = groups_of(rng, 23, 90)
    a = feed(data[:9], 4, ci)                # buffers hold 1 and 2 groups
    b = feed(data[9:23], 4, ci)
    assert (a.count, b.count) == (9, 14)
    a.merge(b)
    assert a.count == 23 and b.count == 14
    ref = feed(data[:9], 1, ci)
    ref.merge(feed(data[9:23], 1, ci))
    assert_same_results(a, ref)
    a.merge(a)                               # self-merge with an empty buffer
    assert a.count == 46
    c = feed(data[:5], 3, ci)
    c.merge(c)                               # self-merge flushes first
    ref = feed(data[:5], 1, ci)
    ref.merge(feed(data[:5], 1, ci))
    assert c.count == 10
    assert_same_results(c, ref)


def test_aggregated_sums_and_nbytes_see_the_buffer():
    rng = np.random.default_rng(8)
    data = groups_of(rng, 6, 40)
    s = feed(data, 4)
    ref = feed(data, 1)
    assert_same(s.aggregated_sums(), ref.aggregated_sums())
    assert s.nbytes == ref.nbytes + 4 * (P + 2) * 40 * 8
    # buffer made lazily; the state is cell-blocked (cells rounded up to BLOCK)
    assert SobolMartinez(40, P).nbytes == n_blocks(40) * BLOCK * 8 * row_width(P)
    f32 = feed(data.astype(np.float32), 4)
    assert f32.nbytes == ref.nbytes + 4 * (P + 2) * 40 * 4


def test_float64_and_float32_groups_mixed():
    rng = np.random.default_rng(9)
    data = groups_of(rng, 11, 60, offset=100.0)
    mixed = [g.astype(np.float32) if k % 3 else g for k, g in enumerate(data)]
    mixed[1] = data[1].astype(np.float32)
    ref = SobolMartinez(60, P, fold_batch=1)
    s = SobolMartinez(60, P, fold_batch=4)
    for group in mixed:
        ref.update(group)
        s.update(group)
    assert_same_results(s, ref)


class RecordingPool(RowPool):
    """A row pool that records the arrays given back, in order."""

    def __init__(self):
        super().__init__(spares=0)
        self.back = []

    def give_back(self, rows):
        self.back.append(rows)


@pytest.mark.parametrize("fold_batch", [1, 4, 9])
def test_leased_groups_are_folded_in_place_and_given_back(fold_batch):
    """``update(group, pool=pool)`` keeps the leased array (no copy), folds
    it as a copied group would be, and gives it back to the pool once folded."""
    rng = np.random.default_rng(12)
    data = groups_of(rng, 40, 70, offset=1e6)
    ref = feed(data, 1)
    s = SobolMartinez(70, P, fold_batch=fold_batch)
    pool = RecordingPool()
    given, kept = [], 0
    for k, group in enumerate(data):
        mine = group.copy()
        given.append(mine)
        s.update(mine, pool=pool)
        if len(s._buffer):
            assert s._buffer.groups[-1] is mine      # kept, not copied
            kept += 1
        if k == 20:
            s.flush()
    assert_same_results(s, ref)
    s.flush()
    assert [id(a) for a in pool.back] == [id(a) for a in given]   # each once, in order
    assert s.nbytes == ref.nbytes        # no slot was ever made
    assert (kept > 20) == (fold_batch > 1)


def test_a_converted_group_leased_is_given_back_and_not_copied_twice():
    rng = np.random.default_rng(13)
    data = [g.copy() for g in groups_of(rng, 3, 10, offset=100.0)]
    s = SobolMartinez(10, P, fold_batch=4)
    pool = RecordingPool()
    ints = np.rint(data[2]).astype(np.int64)       # converted: a private copy
    s.update(data[0], pool=pool)
    s.update(data[1], pool=pool)                   # the re-centring count 2: folded
    assert [a is g for a, g in zip(pool.back, data[:2], strict=True)] == [True, True]
    s.update(ints, pool=pool)
    assert s._buffer.groups[0] is not ints and s._buffer.nbytes == ints.nbytes
    s.flush()
    assert pool.back[2] is ints and len(pool.back) == 3
    ref = feed(np.array(data[:2]), 1)
    ref.update(ints)
    assert_same_results(s, ref)


def test_group_tuple_pads_and_refuses_too_many():
    from melissa_sa.kernels.sobol import GROUP_TUPLE, group_tuple
    a, b = np.zeros((5, 3)), np.ones((5, 3))
    t = group_tuple([a, b])
    assert len(t) == GROUP_TUPLE and t[0] is a and t[1] is b and t[-1] is a
    with pytest.raises(ValueError, match="groups"):
        group_tuple([a] * (GROUP_TUPLE + 1))
    with pytest.raises(ValueError, match="groups"):
        group_tuple([])


@pytest.mark.parametrize("dtype,offset", [(np.float64, 1e9), (np.float32, 1e4),
                                          (np.float32, 0.0)])
def test_hostile_data_through_the_batched_path(dtype, offset):
    """Offset + noise, float32, a constant cell and a NaN cell: the batched
    object matches the unbatched one and a two-pass NumPy correlation."""
    rng = np.random.default_rng(10)
    data = groups_of(rng, 300, 24, offset=offset, dtype=dtype)
    data[:, :, 3] = dtype(offset + 5.0)            # constant cell
    data[7, 1, 11] = np.nan                         # NaN in one cell
    s = SobolMartinez(24, P, fold_batch=4)
    s.update_many(data[:150])
    for group in data[150:]:
        s.update(group)
    ref = feed(data, 1)
    assert_same_results(s, ref)
    first, total = s.indices
    x = data.astype(np.float64)
    for c in range(24):
        if c in (3, 11):
            continue
        cc = np.corrcoef(x[:, :, c].T)
        np.testing.assert_allclose(first[:, c], cc[1, 2:], rtol=0, atol=1e-12)
        np.testing.assert_allclose(total[:, c], 1 - cc[0, 2:], rtol=0, atol=1e-12)
    assert np.all(first[:, 3] == 0) and np.all(total[:, 3] == 0)
    assert np.isnan(first[:, 11]).all()
    assert np.isfinite(np.delete(first, 11, axis=1)).all()


def test_threads_agree():
    rng = np.random.default_rng(11)
    data = groups_of(rng, 9, 3000)
    states = []
    for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        numba.set_num_threads(threads)
        state = np.zeros((3000, row_width(P)))
        martinez_update_many(state, data, 0)
        states.append(state)
    numba.set_num_threads(1)
    assert np.array_equal(states[0], states[1])


def test_large_groups_fold_at_once_by_default():
    """Past BATCH_GROUP_BYTES a group (float64 rows over the cells) is folded
    at once unless fold_batch is given: buffering it costs more than it saves."""
    from melissa_sa.stats.sobol_fold import BATCH_GROUP_BYTES

    cells = BATCH_GROUP_BYTES // (8 * 5)          # p = 3: 5 rows, just at the limit
    assert SobolMartinez(cells, 3).fold_batch == FOLD_BATCH["delta"]
    assert SobolMartinez(cells + 1, 3).fold_batch == 1
    assert SobolMartinez(cells + 1, 3, fold_batch=4).fold_batch == 4
