"""Group assembly buffers keep the incoming dtype and detect overlaps."""

import numpy as np
import pytest

from melissa_sa.server.assembly import GroupAssembler, Overlap
from melissa_sa.stats.row_pool import RowPool


def test_float32_rows_stay_float32_until_the_group_is_complete():
    asm = GroupAssembler(group_size=3)
    key = (0, 0, 0)
    rows = [np.full(4, m, dtype=np.float32) for m in range(3)]
    assert asm.add(key, 0, 0, rows[0], 4) is None
    assert asm.add(key, 2, 0, rows[2][:2], 4) is None
    assert asm.buffered_bytes == 3 * 4 * 4          # float32, not float64
    assert asm.add(key, 2, 2, rows[2][2:], 4) is None
    done = asm.add(key, 1, 0, rows[1], 4)
    assert done.dtype == np.float32
    np.testing.assert_array_equal(done, np.stack(rows))
    assert len(asm) == 0 and asm.buffered_bytes == 0


def test_a_float64_member_promotes_the_buffer():
    asm = GroupAssembler(group_size=2)
    asm.add((1, 0, 0), 0, 0, np.array([0.1, 0.2], dtype=np.float32), 2)
    done = asm.add((1, 0, 0), 1, 0, np.array([1 / 3, 2 / 3]), 2)
    assert done.dtype == np.float64
    assert done[1, 0] == 1 / 3 and done[0, 0] == np.float32(0.1)


def test_overlapping_cells_are_refused_and_abandoned_groups_dropped():
    asm = GroupAssembler(group_size=2)
    asm.add((0, 0, 0), 0, 0, np.zeros(3), 6)
    with pytest.raises(Overlap, match=r"cells \[2, 4\) overlap \[0, 3\)"):
        asm.add((0, 0, 0), 0, 2, np.zeros(2), 6)
    asm.add((5, 0, 1), 0, 0, np.zeros(6), 6)
    asm.drop_group(0)
    assert len(asm) == 1


def test_released_rows_are_reused_by_the_next_group_of_that_shape_only():
    from melissa_sa.server.assembly import SPARE_BUFFERS

    asm = GroupAssembler(2)
    rng = np.random.default_rng(3)

    def complete(group, n_cells, dtype):
        a, b = (rng.standard_normal(n_cells).astype(dtype) for _ in range(2))
        assert asm.add((group, 0, 0), 0, 0, a, n_cells) is None
        rows = asm.add((group, 0, 0), 1, 0, b, n_cells)
        np.testing.assert_array_equal(rows, np.stack([a, b]))  # no stale values
        return rows

    first = complete(1, 6, np.float64)
    asm.pool.give_back(first)
    assert asm.buffered_bytes == first.nbytes          # a spare counts
    second = complete(2, 6, np.float64)
    assert second is first                            # reused, then filled anew
    asm.pool.give_back(second)
    other = complete(3, 5, np.float64)                 # another shape: a new buffer
    assert other is not first
    f32 = complete(4, 6, np.float32)                   # another dtype: a new buffer
    assert f32 is not first and f32.dtype == np.float32
    # in pieces: every cell written before the rows come back, whatever was there
    asm.pool.give_back(f32)
    x, y = rng.standard_normal((2, 6)).astype(np.float32)
    asm.add((5, 0, 0), 1, 0, y, 6)
    asm.add((5, 0, 0), 0, 3, x[3:], 6)
    rows = asm.add((5, 0, 0), 0, 0, x[:3], 6)
    assert rows is f32
    np.testing.assert_array_equal(rows, np.stack([x, y]))
    for g in range(10):                                # the spares stay bounded
        asm.pool.give_back(np.empty((2, 7 + g)))
    assert len(asm.pool) == SPARE_BUFFERS
    more = GroupAssembler(2, RowPool(SPARE_BUFFERS + 4))   # a Sobol' batch comes back at once
    for g in range(10):
        more.pool.give_back(np.empty((2, 7 + g)))
    assert len(more.pool) == SPARE_BUFFERS + 4


def test_a_restarted_members_incomplete_rows_are_forgotten_complete_ones_kept():
    pool = RowPool(2)
    asm = GroupAssembler(group_size=2, pool=pool)
    asm.add((4, 0, 0), 1, 0, np.ones(2), 4)            # member 1, step 0: half
    asm.add((4, 0, 1), 1, 0, np.ones(4), 4)            # member 1, step 1: complete
    asm.add((4, 0, 2), 0, 0, np.ones(4), 4)            # step 2: member 0 complete,
    asm.add((4, 0, 2), 1, 0, np.ones(1), 4)            # member 1 a quarter
    asm.add((4, 1, 0), 1, 0, np.ones(2), 4)            # another field: untouched
    assert asm.drop_partial_rows(4, 0, member=1) == 2
    assert len(asm) == 3 and len(pool) == 1            # step 0's buffer went back
    assert asm.member_complete((4, 0, 1), 1)
    # the rerun cuts step 2 otherwise: [0, 3) overlaps the forgotten [0, 1)
    done = asm.add((4, 0, 2), 1, 0, np.full(3, 2.0), 4)
    assert done is None
    done = asm.add((4, 0, 2), 1, 3, np.full(1, 2.0), 4)
    np.testing.assert_array_equal(done, [np.ones(4), np.full(4, 2.0)])
