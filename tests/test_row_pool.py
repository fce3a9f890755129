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


def test_free_buffers_kept_up_to_the_most_ever_leased_at_once():
    pool = RowPool(spares=1)
    held = [pool.lease((2, 4), np.float64) for _ in range(4)]   # four groups in flight
    assert (pool.leased, pool.peak_leased) == (4, 4)
    for rows in held:
        pool.give_back(rows)
    assert len(pool) == 4 and pool.leased == 0                  # all kept: 4 were held
    again = [pool.lease((2, 4), np.float64) for _ in range(4)]
    assert {id(a) for a in again} == {id(a) for a in held}      # no new array
    extra = np.empty((2, 4))                                    # never leased here
    for rows in [*again, extra]:
        pool.give_back(rows)
    assert len(pool) == 4 and pool._free[-1] is extra          # the oldest went
    assert pool.free_limit == 4
    pool.close()
    pool.give_back(pool.lease((2, 4), np.float64))
    assert len(pool) == 0 and pool.free_limit == 0


def test_the_pool_never_holds_more_than_its_peak_or_leased_plus_spares():
    rng = np.random.default_rng(7)
    pool, held = RowPool(spares=2), []
    for _ in range(500):
        if held and rng.random() < 0.5:
            pool.give_back(held.pop(int(rng.integers(len(held)))))
        else:
            held.append(pool.lease((3,), np.float32))
        assert len(pool) + len(held) <= max(pool.peak_leased, len(held) + pool.spares)
        assert pool.leased == len(held)


def test_an_abandoned_or_widened_buffer_goes_back_to_the_pool():
    pool = RowPool(spares=2)
    asm = GroupAssembler(2, pool)
    asm.add((5, 0, 0), 0, 0, np.ones(3, np.float32), 3)
    narrow = asm._buffers[(5, 0, 0)].rows
    asm.add((5, 0, 0), 1, 0, np.full(2, 2.0), 3)               # float64: widened
    wide = asm._buffers[(5, 0, 0)].rows
    assert wide.dtype == np.float64 and pool._free == [narrow]
    np.testing.assert_array_equal(wide[0], [1, 1, 1])
    asm.drop_group(5)
    assert len(asm) == 0 and pool.leased == 0
    assert pool.lease((2, 3), np.float64) is wide
