"""Group assembly buffers keep the incoming dtype (defect 9) and detect overlaps."""

import numpy as np
import pytest

from melissa_sa.server.assembly import GroupAssembler, Overlap


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
