"""The cell-blocked Sobol' state against the row layout it replaced.

The reference is the row-layout path (one row per cell, the kernels of
:mod:`melissa_sa.kernels.sobol`, still what a second-order or compact state
uses), fed the same mixed data: large offsets, a constant cell, a NaN cell,
float32 and float64 groups, cell counts that are not a multiple of BLOCK.
State, indices, every interval method, the aggregated interval's batch sums
and second order must be the same bit for bit; a checkpoint written from the
row layout (the on-disk arrays are the row layout's) loads and goes on.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from melissa_sa.kernels.sobol import CHUNK, group_tuple, martinez_update_many, row_width
from melissa_sa.kernels.sobol_blocked import (
    BLOCK,
    block_slots,
    blocks_to_rows,
    n_blocks,
    rows_to_blocks,
    scratch_for,
    terms_for,
)
from melissa_sa.kernels.sobol_blocked_fold import blocked_update_many
from melissa_sa.kernels.sobol_blocked_influence import blocked_update_many_influence
from melissa_sa.kernels.sobol_influence import martinez_update_many_influence
from melissa_sa.stats import SobolAggregatedInterval, SobolMartinez, sobol_results
from melissa_sa.stats.sobol_checkpoint import save_martinez
from melissa_sa.stats.sobol_fold import fold_groups

P = 3


def mixed(rng, n_groups, n_cells, dtype=np.float64):
    """Groups with per-cell offsets up to 1e6, a constant cell and a NaN cell."""
    base = rng.standard_normal((n_groups, P + 2, n_cells))
    base *= np.linspace(0.1, 5.0, n_cells)
    base += np.linspace(-1e6, 1e6, n_cells)
    if n_cells > 2:
        base[:, :, 1] = 7.0          # constant cell
        base[5, 3, 2] = np.nan       # NaN from group 5 on, cell 2
    return base.astype(dtype)


def rows_reference(data, dtypes=None):
    """The row-layout state fed ``data`` one group at a time (the path before
    the cell-blocked layout; re-centring at the same counts)."""
    n_cells = data.shape[2]
    state = np.zeros((n_cells, row_width(P)))
    for g in range(data.shape[0]):
        fold_groups(state, [np.ascontiguousarray(data[g])], g, P)
    return state


@pytest.mark.parametrize("n_cells", [1, 15, 17, CHUNK + 3, 1000])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_same_state_bit_for_bit(n_cells, dtype):
    data = mixed(np.random.default_rng(n_cells), 24, n_cells, dtype)
    rows = np.zeros((n_cells, row_width(P)))
    blocks = np.zeros((n_blocks(n_cells), row_width(P) * BLOCK))
    scratch = scratch_for(P)
    for lo in range(0, 24, 8):
        martinez_update_many(rows, group_tuple(list(data[lo:lo + 8])), lo, 8)
        blocked_update_many(blocks, data[lo:lo + 8], lo, scratch)
    back = np.empty_like(rows)
    blocks_to_rows(blocks, block_slots(P), 0, back)
    np.testing.assert_array_equal(back, rows)
    if n_cells % BLOCK:   # the last block's extra lanes are never written
        last = blocks[-1].reshape(row_width(P), BLOCK)[:, n_cells % BLOCK:]
        assert not last.any()
    again = np.zeros_like(blocks)
    rows_to_blocks(rows, block_slots(P), 0, again)
    np.testing.assert_array_equal(again, blocks)


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("n_params", [1, 2, 5])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_quads_and_remainders_bit_for_bit(n_params, dtype, workers):
    """Four groups per load, the groups left one by one, any p, any number of
    scratch rows (workers): the row kernel's state, one group at a time."""
    n_cells = CHUNK + 21
    rng = np.random.default_rng(n_params)
    data = (rng.standard_normal((30, n_params + 2, n_cells)) * 3.0 + 1e5).astype(dtype)
    rows = np.zeros((n_cells, row_width(n_params)))
    blocks = np.zeros((n_blocks(n_cells), row_width(n_params) * BLOCK))
    scratch = np.empty((workers, scratch_for(n_params).shape[1]))
    lo = 0
    for m in (5, 7, 1, 4, 6, 2, 3, 2):
        blocked_update_many(blocks, data[lo:lo + m], lo, scratch)
        lo += m
    for g in range(lo):
        martinez_update_many(rows, data[g:g + 1], g)
    back = np.empty_like(rows)
    blocks_to_rows(blocks, block_slots(n_params), 0, back)
    np.testing.assert_array_equal(back, rows)
    assert not blocks[-1].reshape(row_width(n_params), BLOCK)[:, n_cells % BLOCK:].any()


def test_kernel_refuses_a_small_scratch():
    groups = np.ones((4, P + 2, 40))
    blocks = np.zeros((n_blocks(40), row_width(P) * BLOCK))
    with pytest.raises(ValueError, match="scratch too small"):
        blocked_update_many(blocks, groups, 0, scratch_for(1))


@pytest.mark.parametrize("flags", [[0, -1, 1, 0, 2, -1, 1, 2],        # two quads
                                   [-1, -1, -1, -1, 0, 1, -1, 2],    # a quad with none
                                   [2, -1, 0, 1, 1, -1, 0]])         # a quad, three left
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_fused_influence_sums_bit_for_bit(dtype, flags):
    n_cells = 3 * CHUNK + 5
    data = mixed(np.random.default_rng(3), 4 + len(flags), n_cells, dtype)
    rows = np.zeros((n_cells, row_width(P)))
    blocks = np.zeros((n_blocks(n_cells), row_width(P) * BLOCK))
    scratch = scratch_for(P)
    martinez_update_many(rows, data[:4], 0)
    blocked_update_many(blocks, data[:4], 0, scratch)
    m = len(flags)
    flags = np.array(flags + [-1] * (8 - m), dtype=np.int64)
    chunks = -(-n_cells // CHUNK)
    out_rows, out_blocks = np.zeros((3, 4, P)), np.zeros((3, 4, P))
    part = np.zeros((8, chunks, 4, P))
    martinez_update_many_influence(rows, group_tuple(list(data[4:])), 4, flags, part,
                                   out_rows, m)
    blocked_update_many_influence(blocks, group_tuple(list(data[4:])), 4, scratch, flags,
                                  part, terms_for(P), out_blocks, m)
    np.testing.assert_array_equal(out_blocks, out_rows)
    back = np.empty_like(rows)
    blocks_to_rows(blocks, block_slots(P), 0, back)
    np.testing.assert_array_equal(back, rows)


def results(rows, n, ci="delta"):
    out = {"indices": sobol_results.indices(rows, P)}
    for method in ("delta", "fisher", "delta-linear"):
        out[method] = sobol_results.interval(rows, n, P, ci, None, 0.9, method, True)
    out["sums"] = sobol_results.aggregated_sums(rows, P)
    return out


def assert_same_results(s: SobolMartinez, rows, n):
    mine = {"indices": s.indices, "sums": s.aggregated_sums()}
    for method in ("delta", "fisher", "delta-linear"):
        mine[method] = s.indices_and_interval(0.9, method)
    ref = results(rows, n)
    for key, value in ref.items():
        for got, want in zip(np.broadcast_arrays(*_flat(mine[key])),
                             np.broadcast_arrays(*_flat(value)), strict=True):
            np.testing.assert_array_equal(got, want, err_msg=key)


def _flat(tree):
    if isinstance(tree, np.ndarray):
        return [tree]
    return [a for item in tree for a in _flat(item)]


@pytest.mark.parametrize("fold_batch", [1, 3, 4, 8, 16])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_accumulator_matches_the_row_layout(fold_batch, dtype):
    n_cells = 2 * CHUNK + 9
    data = mixed(np.random.default_rng(fold_batch), 40, n_cells, dtype)
    s = SobolMartinez(n_cells, P, fold_batch=fold_batch)
    for group in data[:20]:
        s.update(group)
    s.update_many(data[20:])           # the array path: fold_batch groups a pass
    rows = rows_reference(data)
    np.testing.assert_array_equal(s.folded_state(), rows)
    assert_same_results(s, rows, 40)


def test_merge_matches_the_row_layout():
    n_cells = 77
    data = mixed(np.random.default_rng(8), 30, n_cells)
    a, b = SobolMartinez(n_cells, P), SobolMartinez(n_cells, P)
    a.update_many(data[:18])
    b.update_many(data[18:])
    ra, rb = rows_reference(data[:18]), rows_reference(data[18:])
    from melissa_sa.kernels.sobol_centred import martinez_merge
    martinez_merge(ra, 18, rb, 12, P)
    a.merge(b)
    np.testing.assert_array_equal(a.folded_state(), ra)
    a.merge(a)                          # with itself
    martinez_merge(ra, 30, ra.copy(), 30, P)
    np.testing.assert_array_equal(a.folded_state(), ra)


def test_aggregated_sums_and_second_order_match_the_row_layout():
    """The fused batch sums of a cell-blocked state equal those of a
    second-order accumulator (row layout, one group a fold), bit for bit,
    and so do the first-order results they share."""
    n_cells = CHUNK + 21
    rng = np.random.default_rng(9)
    first = mixed(rng, 60, n_cells)
    data = np.concatenate([first, first[:, 2:] + 1.0], axis=1)   # + D_k rows
    kw = {"n_batches": 5, "warmup": 3, "dense": 20, "stride": 2}
    agg_b, agg_r = SobolAggregatedInterval(n_cells, P, **kw), SobolAggregatedInterval(
        n_cells, P, **kw)
    blocked = SobolMartinez(n_cells, P, fold_batch=4, aggregated=agg_b)
    rowwise = SobolMartinez(n_cells, P, second_order=True, aggregated=agg_r)
    assert blocked._blocks is not None and rowwise._blocks is None
    for g in range(60):
        blocked.update(first[g], g)
        rowwise.update(data[g], g)
    np.testing.assert_array_equal(blocked.aggregated.batches, rowwise.aggregated.batches)
    np.testing.assert_array_equal(blocked.folded_state(), rowwise.folded_state())
    np.testing.assert_array_equal(blocked.indices_and_interval(0.95)[1][:2],
                                  rowwise.indices_and_interval(0.95)[1][:2])


@pytest.mark.parametrize("n_cells", [5, 40])
def test_row_layout_checkpoint_loads_and_goes_on(tmp_path, n_cells):
    """A checkpoint of the row layout (what melissa-sa wrote before the
    cell-blocked state: the same ``save_martinez`` of the rows) loads into a
    cell-blocked statistic, which then folds as if never stopped."""
    data = mixed(np.random.default_rng(n_cells), 30, n_cells)
    rows = rows_reference(data[:20])
    with h5py.File(tmp_path / "old.h5", "w") as f:
        save_martinez(f.create_group("sobol"), rows, None, n=20, n_params=P, ci="delta")
    with h5py.File(tmp_path / "old.h5", "r") as f:
        s = SobolMartinez.load(f["sobol"])
    assert s._blocks is not None and s.count == 20
    np.testing.assert_array_equal(s.folded_state(), rows)
    s.update_many(data[20:])
    np.testing.assert_array_equal(s.folded_state(), rows_reference(data))
    with h5py.File(tmp_path / "new.h5", "w") as f:   # and writes the row layout
        s.save(f.create_group("sobol"))
        np.testing.assert_array_equal(f["sobol/state"][...], rows_reference(data))


def test_results_by_slices_of_a_large_state():
    """Results of a state of several slices (SLICE cells each, the last one
    partial) are read slice by slice: the same arrays as the row layout's."""
    from melissa_sa.stats.sobol_blocks import SLICE

    n_cells = 2 * SLICE + 37
    data = mixed(np.random.default_rng(21), 12, n_cells)
    s = SobolMartinez(n_cells, P)
    s.update_many(data)
    rows = rows_reference(data)
    np.testing.assert_array_equal(s.folded_state(), rows)
    assert_same_results(s, rows, 12)
    first, total = s.indices
    assert first.shape == total.shape == (P, n_cells)
