"""The in-place re-centring of the cell-blocked state against the row kernel.

:func:`~melissa_sa.kernels.sobol_blocked_recentre.blocked_recentre` must give,
bit for bit, the state that
:func:`~melissa_sa.kernels.sobol_centred.martinez_recentre` gives on the row
layout: for any p, a last block that is partly filled, states folded from
float32 and float64 groups with large offsets, constant and NaN cells, and
arbitrary values (infinite or NaN means, cells that do not move); and the
folds that re-centre in their own pass (``recentre=True``) must give the
state of the fold followed by ``blocked_recentre``.
"""

from __future__ import annotations

import numpy as np
import pytest

from melissa_sa.kernels import sobol_blocked as blocked
from melissa_sa.kernels.sobol import CHUNK, group_tuple, row_width
from melissa_sa.kernels.sobol_blocked_fold import blocked_update_many
from melissa_sa.kernels.sobol_blocked_influence import blocked_update_many_influence
from melissa_sa.kernels.sobol_blocked_recentre import blocked_recentre
from melissa_sa.kernels.sobol_centred import martinez_recentre
from melissa_sa.stats.sobol_blocks import BlockedState


def folded(rng, n_groups, n_cells, p, dtype):
    """A cell-blocked state of ``n_groups`` groups with per-cell offsets up to
    1e6, a constant cell (its shift does not move) and a NaN cell."""
    data = rng.standard_normal((n_groups, p + 2, n_cells))
    data *= np.linspace(0.1, 5.0, n_cells)
    data += np.linspace(-1e6, 1e6, n_cells)
    if n_cells > 2:
        data[:, :, 1] = 7.0
        data[n_groups // 2, 0, 2] = np.nan
    if n_cells > 3:
        data[n_groups // 2, p + 1, 3] = np.nan    # a NaN in a pick-freeze row only
    state = BlockedState(n_cells, p)
    state.fold(data.astype(dtype), 0)
    return state


def same_bits(a, b):
    """Equal arrays, NaN payloads and signed zeros included."""
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.int64), b.view(np.int64))


def row_recentred(blocks, n_cells, p, n):
    """The row kernel's re-centring of the blocked state ``blocks``, as rows."""
    rows = np.empty((n_cells, row_width(p)))
    blocked.blocks_to_rows(blocks, blocked.block_slots(p), 0, rows)
    martinez_recentre(rows, n, p)
    return rows


@pytest.mark.parametrize("n_cells", [1, 15, 17, CHUNK + 3])
@pytest.mark.parametrize("p", [1, 2, 3, 5])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_same_state_as_the_row_kernel_bit_for_bit(n_cells, p, dtype):
    rng = np.random.default_rng(100 * p + n_cells)
    state = folded(rng, 16, n_cells, p, dtype)
    expected = row_recentred(state.array, n_cells, p, 16)
    before = state.array.copy()
    blocked_recentre(state.array, 16, p)
    assert not np.array_equal(state.array, before, equal_nan=True)   # the shifts moved
    got = np.empty_like(expected)
    blocked.blocks_to_rows(state.array, blocked.block_slots(p), 0, got)
    same_bits(got, expected)
    lanes = n_cells % blocked.BLOCK
    if lanes:   # the last block's extra lanes stay zero
        assert not state.array[-1].reshape(row_width(p), blocked.BLOCK)[:, lanes:].any()


@pytest.mark.parametrize("p", [1, 3])
def test_arbitrary_values_and_cells_that_do_not_move(p):
    """Every slot random (block 2 not the power sums of any data), and cells
    whose new shift is not finite (NaN or infinite mean of A, an infinite
    shift) or equal to the old one (mean of A zero, or lost beside a large
    shift): those keep every bit, the others move as in the row kernel."""
    n_cells = 3 * blocked.BLOCK + 5
    rng = np.random.default_rng(p)
    rows = rng.standard_normal((n_cells, row_width(p))) * 10.0 ** rng.integers(-3, 4, n_cells)[:,
                                                                                           None]
    rows[0, 1] = np.nan
    rows[1, 1] = np.inf
    rows[2, 1] = 0.0
    rows[3, 0], rows[3, 1] = 1e20, 1.0      # target == shift
    rows[4, 0] = -np.inf
    rows[5, 2] = np.nan                     # B's mean NaN: the cell moves, NaN spreads
    rows[6, 1] = -0.0
    blocks = np.zeros((blocked.n_blocks(n_cells), row_width(p) * blocked.BLOCK))
    blocked.rows_to_blocks(rows, blocked.block_slots(p), 0, blocks)
    expected = rows.copy()
    martinez_recentre(expected, 7, p)
    for c in (0, 1, 2, 3, 4, 6):
        same_bits(expected[c], rows[c])
    blocked_recentre(blocks, 7, p)
    got = np.empty_like(rows)
    blocked.blocks_to_rows(blocks, blocked.block_slots(p), 0, got)
    same_bits(got, expected)


def test_no_groups_changes_nothing_and_a_wrong_width_is_refused():
    state = folded(np.random.default_rng(0), 4, 20, 2, np.float64)
    before = state.array.copy()
    blocked_recentre(state.array, 0, 2)
    same_bits(state.array, before)
    with pytest.raises(ValueError, match="n_params"):
        blocked_recentre(state.array, 4, 3)


def test_a_blocked_state_over_several_chunks_recentres_as_the_row_kernels():
    """A whole BlockedState of several chunks, read back through its rows."""
    n_cells, p = 2 * CHUNK + 7, 3
    state = folded(np.random.default_rng(7), 2, n_cells, p, np.float64)
    expected = row_recentred(state.array, n_cells, p, 2)
    blocked_recentre(state.array, 2, p)
    same_bits(state.rows(), expected)


@pytest.mark.parametrize("m", [2, 5, 8])
@pytest.mark.parametrize("p", [1, 3, 5])
@pytest.mark.parametrize("workers", [1, 3])
def test_folds_that_recentre_in_their_pass(m, p, workers):
    """The fold and the fold with influence sums, quads and groups left one by
    one, re-centring each chunk once folded: the state of the fold then
    ``blocked_recentre``, and the same sums."""
    n_cells = 3 * CHUNK + 5
    rng = np.random.default_rng(m + 10 * p)
    first = folded(rng, 3, n_cells, p, np.float64)
    data = rng.standard_normal((m, p + 2, n_cells)) * 2.0 + np.linspace(-1e6, 1e6, n_cells)
    scratch = np.empty((workers, blocked.scratch_for(p).shape[1]))
    expected = first.array.copy()
    blocked_update_many(expected, data, 3, scratch)
    blocked_recentre(expected, 3 + m, p)
    fused = first.array.copy()
    blocked_update_many(fused, data, 3, scratch, -1, True)
    same_bits(fused, expected)

    flags = np.arange(m, dtype=np.int64) % 2
    chunks = -(-n_cells // CHUNK)
    terms = np.empty((workers, blocked.terms_for(p).shape[1]))
    sums = []
    for recentre in (False, True):
        state = first.array.copy()
        out = np.zeros((2, 4, p))
        blocked_update_many_influence(state, group_tuple(list(data)), 3, scratch, flags,
                                      np.zeros((m, chunks, 4, p)), terms, out, m, recentre)
        if not recentre:
            blocked_recentre(state, 3 + m, p)
        same_bits(state, expected)
        sums.append(out)
    same_bits(sums[1], sums[0])
