"""The row pool: buffers leased by the assembler, given back by whoever folds them."""

import numpy as np
import pytest

from melissa_sa.server.assembly import GroupAssembler
from melissa_sa.stats.row_pool import RowPool


def test_a_lease_reuses_a_free_buffer_of_that_shape_and_dtype_only():
    pool = RowPool(spares=3)
    a = pool.lease((2, 5), np.float64)
    assert a.shape == (2, 5) and a.dtype == np.float64 and a.flags.c_contiguous
    pool.give_back(a)
    assert pool.lease((2, 6), np.float64) is not a
    assert pool.lease((2, 5), np.float32) is not a
    assert len(pool) == 1 and pool.nbytes == a.nbytes
    assert pool.lease((2, 5), np.dtype("float64")) is a
    assert len(pool) == 0 and pool.nbytes == 0


def test_at_most_spares_free_buffers_the_oldest_dropped_first():
    pool = RowPool(spares=2)
    arrays = [np.empty((1, 4 + k)) for k in range(3)]
    for a in arrays:
        pool.give_back(a)
    assert len(pool) == 2
    assert pool.lease((1, 4), np.float64) is not arrays[0]      # dropped
    assert pool.lease((1, 5), np.float64) is arrays[1]
    none = RowPool(spares=0)
    none.give_back(arrays[0])
    assert len(none) == 0
    pool.drop()
    assert len(pool) == 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="spares"):
            RowPool(bad)


def test_a_closed_pool_keeps_nothing_given_back():
    pool = RowPool(spares=3)
    pool.give_back(np.empty((2, 8)))
    pool.close()
    assert len(pool) == 0 and pool.nbytes == 0
    pool.give_back(np.empty((2, 8)))
    assert len(pool) == 0
    assert pool.lease((2, 8), np.float64).shape == (2, 8)   # a new array, still


def test_the_assembler_leases_from_the_pool_it_is_given():
    pool = RowPool(spares=1)
    free = np.empty((2, 3))
    pool.give_back(free)
    asm = GroupAssembler(2, pool)
    assert asm.pool is pool and asm.buffered_bytes == free.nbytes
    assert asm.add((0, 0, 0), 0, 0, np.ones(3), 3) is None
    assert len(pool) == 0                                   # leased
    rows = asm.add((0, 0, 0), 1, 0, np.zeros(3), 3)
    assert rows is free
    np.testing.assert_array_equal(rows, [[1, 1, 1], [0, 0, 0]])
    assert asm.buffered_bytes == 0                          # the caller holds the lease
    pool.give_back(rows)
    assert asm.buffered_bytes == free.nbytes
