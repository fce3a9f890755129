"""The aggregated indices' partial sums read in place from a cell-blocked
state (:mod:`melissa_sa.kernels.sobol_blocked_sums`) are NumPy's sums of the
row layout's columns, bit for bit: cell counts around the pairwise
summation's leaves (8, 128) and splits, not multiples of BLOCK, zero and
``-0.0`` values, large offsets."""

from __future__ import annotations

import numpy as np
import pytest

from melissa_sa.kernels.sobol import row_width
from melissa_sa.kernels.sobol_blocked import BLOCK, block_slots, rows_to_blocks
from melissa_sa.stats import sobol_results
from melissa_sa.stats.sobol_blocks import BlockedState

P = 3


def numpy_sums(rows):
    """The sums as NumPy makes them from the row layout's columns."""
    out = np.empty((4, P))
    a2, b2 = rows[:, 3], rows[:, 4]
    for k in range(P):
        i = 5 + 4 * k
        c2 = rows[:, i + 1]
        out[:, k] = (rows[:, i + 3].sum(), np.sqrt(b2 * c2).sum(), rows[:, i + 2].sum(),
                     np.sqrt(a2 * c2).sum())
    return out


@pytest.mark.parametrize("n_cells", [1, 7, 8, 9, BLOCK + 1, 127, 128, 129, 255, 256, 1000,
                                     4097, 99_856])
def test_numpys_sums_bit_for_bit(n_cells):
    rng = np.random.default_rng(n_cells)
    rows = rng.standard_normal((n_cells, row_width(P))) * rng.uniform(1e-3, 1e6, n_cells)[:, None]
    rows[:, 3:5] = np.abs(rows[:, 3:5])
    rows[:, 6::4][:, :P] = np.abs(rows[:, 6::4][:, :P])   # the Ck2 slots
    if n_cells > 4:
        rows[::3, 3] = 0.0                                # zero variances
        rows[1::4, 8] = -0.0
    state = BlockedState(n_cells, P)
    rows_to_blocks(rows, block_slots(P), 0, state.array)
    got = sobol_results.aggregated_sums(state, P)
    assert got.tobytes() == numpy_sums(rows).tobytes()
    assert got.tobytes() == sobol_results.aggregated_sums(rows, P).tobytes()


def test_a_sum_of_negative_zeros_is_positive_zero():
    n_cells = 200
    rows = np.zeros((n_cells, row_width(P)))
    rows[:, 8] = -0.0
    state = BlockedState(n_cells, P)
    rows_to_blocks(rows, block_slots(P), 0, state.array)
    got = sobol_results.aggregated_sums(state, P)
    assert got.tobytes() == numpy_sums(rows).tobytes()
    assert np.all(np.copysign(1.0, got[0]) == 1.0)
