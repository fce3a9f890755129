"""The aggregated interval's influence sums fused into the batched Sobol' fold.

A SobolMartinez with an aggregated interval (``update(group, group_id)``)
adds each counted group's sums during its (batched) fold. The two-pass
reference (:func:`two_passes`: per group, the sums from a pass over the
state as it is, with :func:`aggregated_influence`, then the fold) and the
accumulator, at any ``fold_batch``, with copied or leased groups, and at any
thread count, must give the same batch sums and state, bit for bit; every
reader of the sums must see the buffered groups' sums.
"""

from __future__ import annotations

import tracemalloc

import h5py
import numba
import numpy as np
import pytest
from aggregated_field import P, field_groups

from melissa_sa.kernels.sobol import CHUNK, martinez_update, row_width
from melissa_sa.kernels.sobol_influence import (
    aggregated_influence,
    martinez_update_many_influence,
)
from melissa_sa.stats import SobolAggregatedInterval, SobolMartinez, load_statistic
from melissa_sa.stats.row_pool import RowPool

pytestmark = pytest.mark.usefixtures("one_numba_thread")

KW = {"n_batches": 7, "warmup": 3, "dense": 40, "stride": 3}


def field(rng, n_groups, n_cells, offset=0.0):
    return field_groups(rng, n_groups, np.linspace(1.0, 8.0, n_cells),
                        np.linspace(0.0, 0.2, n_cells), np.linspace(0.0, 1.0, n_cells),
                        offset=offset)


def feed(data, ids, fold_batch, ci="delta", second_order=False, leased=False, **kw):
    """(SobolMartinez, its aggregated interval) fed ``data``; ``leased``: each
    group is the server's array, leased from a pool and given back once folded."""
    n, rows, n_cells = data.shape
    agg = SobolAggregatedInterval(n_cells, P, **(kw or KW))
    s = SobolMartinez(n_cells, P, ci=ci, fold_batch=fold_batch, second_order=second_order,
                      aggregated=agg)
    pool = RowPool(spares=fold_batch)
    for g in range(n):
        if leased:
            group = pool.lease(data[g].shape, data[g].dtype)
            group[...] = data[g]
            s.update(group, int(ids[g]), pool=pool)
        else:
            s.update(data[g], int(ids[g]))
    return s, agg


def two_passes(data, ids, ci="delta", second_order=False, **kw):
    """The reference: per group, its sums from a pass over the state as it is
    (every earlier group folded), then its fold (``fold_batch`` 1)."""
    n, rows, n_cells = data.shape
    s = SobolMartinez(n_cells, P, ci=ci, fold_batch=1, second_order=second_order)
    agg = SobolAggregatedInterval(n_cells, P, **(kw or KW))
    scratch = np.zeros((-(-n_cells // CHUNK), 4, P))
    for g in range(n):
        row = agg.update(int(ids[g]))
        if row >= 0:
            aggregated_influence(s.folded_state(), np.ascontiguousarray(data[g][:P + 2]),
                                 s.count, P, row, scratch, agg.batches)
        s.update(data[g])
    return s, agg


def assert_identical(a, b):
    (s1, g1), (s2, g2) = a, b
    s1.flush()   # the buffered groups' sums added
    s2.flush()
    np.testing.assert_array_equal(g1.batches, g2.batches)
    np.testing.assert_array_equal(g1.batch_counts, g2.batch_counts)
    np.testing.assert_array_equal(g1.batch_ids, g2.batch_ids)
    np.testing.assert_array_equal(s1.folded_state(), s2.folded_state())


@pytest.mark.parametrize("n_cells", [1, 255, 257, 1031])  # below, at, across chunks
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_equals_influence_then_fold(n_cells, dtype):
    """The fused kernel, by batches of 1 to 7 groups, some flagged: the state
    and sums of aggregated_influence + martinez_update per group, bit for bit."""
    rng = np.random.default_rng(1)
    data = field(rng, 30, n_cells, offset=1e3).astype(dtype)
    flags = rng.random(30) < 0.6
    rows = np.where(flags, np.arange(30) % 5, -1)
    width = row_width(P)
    chunks = -(-n_cells // CHUNK)
    ref_state, ref_out = np.zeros((n_cells, width)), np.zeros((5, 4, P))
    scratch = np.full((chunks, 4, P), np.nan)
    for g in range(30):
        if g >= 2 and flags[g]:
            aggregated_influence(ref_state, data[g], g, P, rows[g], scratch, ref_out)
        martinez_update(ref_state, data[g], g)
    state, out = np.zeros((n_cells, width)), np.zeros((5, 4, P))
    partial = np.full((8, chunks, 4, P), np.nan)
    n = 0
    for m in (1, 1, 4, 2, 7, 1, 6, 8):   # groups 0, 1 unflagged (n + g < 2)
        sel = rows[n:n + m].copy()
        if n < 2:
            sel[:] = -1
        martinez_update_many_influence(state, data[n:n + m], n, sel, partial, out)
        n += m
    assert n == 30
    np.testing.assert_array_equal(state, ref_state)
    np.testing.assert_array_equal(out, ref_out)


@pytest.mark.parametrize("ci", ["delta", "fisher"])
def test_every_path_gives_the_same_sums_and_state(ci):
    """Two passes or fused, fold_batch 1 to 10, group ids out of order (some
    buffered groups not counted), across the re-centrings at 16 and 256."""
    rng = np.random.default_rng(2)
    data = field(rng, 270, 40)
    ids = rng.permutation(300)[:270]
    ref = two_passes(data, ids, ci=ci)
    assert 0 < ref[1].batch_counts.sum() < 267
    for fold_batch in (1, 3, 4, 5, 10):   # 10: two kernel calls (GROUP_TUPLE 8)
        assert_identical(feed(data, ids, fold_batch, ci=ci), ref)
    for fold_batch in (1, 4, 10):
        assert_identical(feed(data, ids, fold_batch, ci=ci, leased=True), ref)


def test_second_order_fused_equals_two_calls():
    rng = np.random.default_rng(3)
    first = field(rng, 30, 20)
    d = field(rng, 30, 20)[:, 2:]                       # D_k rows: any values
    data = np.concatenate([first, d], axis=1)
    ref = two_passes(data, np.arange(30), second_order=True)
    got = feed(data, np.arange(30), fold_batch=1, second_order=True)
    assert_identical(got, ref)
    np.testing.assert_array_equal(got[0]._second.array, ref[0]._second.array)


def test_threads_agree():
    rng = np.random.default_rng(4)
    data = field(rng, 24, 3000)
    out = []
    for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        numba.set_num_threads(threads)
        out.append(feed(data, np.arange(24), fold_batch=4))
        out.append(two_passes(data, np.arange(24)))
    numba.set_num_threads(1)
    for other in out[1:]:
        assert_identical(other, out[0])


def test_hostile_data_nan_group_and_constant_cells():
    rng = np.random.default_rng(5)
    data = field(rng, 40, 30, offset=1e9)
    data[:, :, 4] = 1e9 + 2.5                 # constant cell
    data[20, 1, 7] = np.nan                   # NaN group in one cell
    ref = two_passes(data, np.arange(40))
    got = feed(data, np.arange(40), fold_batch=4)
    assert_identical(got, ref)
    assert np.isnan(got[1].batches).any()
    plain = feed(np.delete(data, [4, 7], axis=2), np.arange(40), fold_batch=4)
    assert np.isfinite(plain[0].aggregated.batches).all()


def test_readers_see_the_buffered_sums(tmp_path):
    """The accumulator's aggregated interval, confidence_interval, merge, save
    and the server's sums fold the buffer first; batch_counts count a group
    at once."""
    rng = np.random.default_rng(6)
    data = field(rng, 40, 12)
    ids = np.arange(40)
    ref_s, ref = two_passes(data[:22], ids)
    s, agg = feed(data[:22], ids, fold_batch=4)
    assert s.influence_pending and s.count - s._folded == 2
    np.testing.assert_array_equal(agg.batch_counts, ref.batch_counts)
    assert not np.array_equal(agg.batches, ref.batches)         # 2 groups' sums pending
    np.testing.assert_array_equal(s.aggregated.batches, ref.batches)   # the reader folds
    assert not s.influence_pending
    # the interval, on a fresh buffered pair
    s, agg = feed(data[:22], ids, fold_batch=4)
    np.testing.assert_array_equal(np.array(agg.confidence_interval(s, 0.9)),
                                  np.array(ref.confidence_interval(ref_s, 0.9)))
    # save with groups buffered (interval first, as a rank checkpoint), resume
    s, agg = feed(data[:22], ids, fold_batch=4)
    with h5py.File(tmp_path / "ck.h5", "w") as f:
        s.aggregated.save(f.create_group("a"))
        s.save(f.create_group("s"))
    with h5py.File(tmp_path / "ck.h5", "r") as f:
        agg2, s2 = load_statistic(f["a"]), load_statistic(f["s"])
    s2.attach(agg2)
    for g in range(22, 40):
        s2.update(data[g], g)
    straight = two_passes(data, ids)
    assert_identical((s2, agg2), straight)
    # merge of two slices with sums pending on both sides
    part = data[:38]
    left = feed(part[:, :, :5].copy(), ids, fold_batch=4)
    right = feed(part[:, :, 5:].copy(), ids, fold_batch=4)
    left_ref = two_passes(part[:, :, :5].copy(), ids)
    right_ref = two_passes(part[:, :, 5:].copy(), ids)
    assert left[0].influence_pending and right[0].influence_pending
    left[0].aggregated.merge(right[0].aggregated)
    left_ref[1].merge(right_ref[1])
    np.testing.assert_array_equal(left[1].batches, left_ref[1].batches)


def test_server_step_sums_and_checkpoint(tmp_path):
    """StepStatistics folds through the fused path: the server's sums (read
    with groups buffered) and a resumed rank checkpoint match two passes."""
    from melissa_sa.config import config_from_dict
    from melissa_sa.server.field_stats import LocalField, StepStatistics, aggregated_sums
    from melissa_sa.server.snapshot import RankSnapshot, load_rank, save_rank

    cfg = config_from_dict({"study_options": {"field_names": ["u"], "nb_parameters": P,
                                              "parameter_sweep_size": 40, "nb_time_steps": 1},
                            "sa_config": {"sobol_indices": True},
                            "client_config": {"executable_command": "./sim"}},
                           base_dir=str(tmp_path))
    rng = np.random.default_rng(7)
    data = field(rng, 40, 9)
    step = StepStatistics(9, cfg)
    assert step.sobol.fold_batch == 4
    for g in range(27):
        step.fold_group(data[g], g)
    assert step.sobol.influence_pending
    kw = {"n_batches": 256, "warmup": 10, "dense": 256, "stride": 16}   # the server's
    ref_s, ref = two_passes(data[:27], np.arange(27), **kw)
    sums = aggregated_sums(LocalField("u", 0, 0, 9, [step]))
    np.testing.assert_array_equal(np.array(sums["batches"][0]), ref.batches)
    assert sums["batch_counts"][0] == ref.batch_counts.tolist()
    step2 = StepStatistics(9, cfg)
    pool = RowPool(spares=8)
    for g in range(27):   # the server's way: leased rows, given back once folded
        rows = pool.lease(data[g].shape, data[g].dtype)
        rows[...] = data[g]
        step2.fold_group(rows, g, pool)
    snap = RankSnapshot({"u": LocalField("u", 0, 0, 9, [step2])}, {"u": 9}, {})
    with h5py.File(tmp_path / "rank0.h5", "w") as f:
        save_rank(f, snap, cfg, 1, 1)
    with h5py.File(tmp_path / "rank0.h5", "r") as f:
        back = load_rank(f, cfg, ["u"], lambda n: [(0, n)], 0).fields["u"].steps[0]
    for g in range(27, 40):
        back.fold_group(data[g], g)
    straight = two_passes(data, np.arange(40), **kw)
    assert_identical((back.sobol, back.sobol_aggregated), straight)


def test_influence_sums_go_to_their_batch_rows():
    agg = SobolAggregatedInterval(3, P, n_batches=4, warmup=2)
    s = SobolMartinez(3, P, aggregated=agg)
    group = np.arange(15.0).reshape(5, 3)
    with pytest.raises(ValueError, match="group_id"):
        s.update(group)              # the interval needs the study's group number
    with pytest.raises(ValueError, match="warmup"):
        SobolAggregatedInterval(3, P, warmup=1)   # sums need a state of 2 groups
    s.update(group, 0)
    s.update(group + 1, 1)
    assert s.count == 2 and not agg.batch_counts.any()
    s.update(group, 5)               # batch 1
    s.update(group + 2, 4)           # batch 0
    s.flush()
    assert np.count_nonzero(agg.batches[1]) and np.count_nonzero(agg.batches[0])
    assert not np.count_nonzero(agg.batches[[2, 3]])


def test_fused_update_allocates_nothing_mesh_sized():
    n = 200_000
    rng = np.random.default_rng(8)
    group = rng.standard_normal((P + 2, n))
    s = SobolMartinez(n, P, aggregated=SobolAggregatedInterval(n, P, warmup=2))
    for g in range(10):         # compile or load, make the scratch, past the re-centring
        s.update(group + g, g)
    tracemalloc.start()
    try:
        for g in range(10, 14):  # a batched fold (at 14 groups) with its sums
            s.update(group, g)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert s._folded == 14
    assert peak < n, f"fused update allocated {peak} bytes at peak"
