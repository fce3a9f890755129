"""The cell-blocked fold with influence sums against the row kernel, for any p.

The groups folded one at a time (fewer than four, or those left after the
quads) compute A's and B's parts of the terms once per block
(``ab_terms``) and each pair's from them (``pair_terms``); the sums and the
state must be the row kernel's bit for bit, with constant cells (zero
variances: terms that are 0), a NaN cell and a partly filled last block.
"""

from __future__ import annotations

import numpy as np
import pytest

from melissa_sa.kernels.sobol import CHUNK, group_tuple, martinez_update_many, row_width
from melissa_sa.kernels.sobol_influence import martinez_update_many_influence
from melissa_sa.stats.sobol_blocks import BlockedState


@pytest.mark.parametrize("flags", [[1, 0, -1],                 # one at a time only
                                   [0, -1, 1, 1, 2, 0]])       # a quad, then two
@pytest.mark.parametrize("n_params", [1, 2, 5])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sums_and_state_of_the_row_kernel_bit_for_bit(dtype, n_params, flags):
    p = n_params
    n_cells = 2 * CHUNK + 19           # a last block of 3 cells
    rng = np.random.default_rng(10 * p + len(flags))
    data = rng.standard_normal((4 + len(flags), p + 2, n_cells)) * np.linspace(0.1, 4.0, n_cells)
    data += np.linspace(-1e5, 1e5, n_cells)
    data[:, :, 1] = 3.0                     # constant cell: every variance 0
    data[:, 0, 5] = 2.0                     # A constant only
    data[:, p + 1, 6] = -1.0                # the last C constant only
    data[5, 2, 7] = np.nan
    data = data.astype(dtype)
    rows = np.zeros((n_cells, row_width(p)))
    martinez_update_many(rows, data[:4], 0)
    state = BlockedState(n_cells, p)
    state.fold(data[:4], 0)
    m = len(flags)
    flags = np.array(flags + [-1] * (8 - m), dtype=np.int64)
    part = np.zeros((8, -(-n_cells // CHUNK), 4, p))
    sums = {"rows": np.zeros((3, 4, p)), "blocks": np.zeros((3, 4, p))}
    groups = group_tuple(list(data[4:]))
    martinez_update_many_influence(rows, groups, 4, flags, part, sums["rows"], m)
    state.fold_influence(groups, 4, flags, part, sums["blocks"], m)
    assert np.any(sums["rows"] != 0.0)
    for got, want in ((sums["blocks"], sums["rows"]), (state.rows(), rows)):
        np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))
