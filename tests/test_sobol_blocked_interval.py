"""The indices and intervals read straight from a cell-blocked state.

:func:`~melissa_sa.kernels.sobol_blocked_interval.blocked_interval` against
the row-layout kernel :func:`~melissa_sa.kernels.sobol_centred.martinez_interval`
on the same state (its rows made by ``blocks_to_rows``): every method, with
and without the indices, fewer than 4 groups, a constant cell, a NaN cell,
large offsets and cell counts that are not a multiple of BLOCK. The arrays
must be the same bit for bit, every cell written (no cell left as the
output's initial garbage), nothing written past them.
"""

from __future__ import annotations

import platform
import re
from statistics import NormalDist

import numpy as np
import pytest

from melissa_sa.kernels.sobol import row_width
from melissa_sa.kernels.sobol_blocked import (
    BLOCK,
    block_slots,
    blocks_to_rows,
    n_blocks,
    scratch_for,
)
from melissa_sa.kernels.sobol_blocked_fold import blocked_update_many
from melissa_sa.kernels.sobol_blocked_interval import blocked_interval
from melissa_sa.kernels.sobol_centred import DELTA, DELTA_LINEAR, FISHER, martinez_interval
from melissa_sa.stats import SobolMartinez

P = 3


def blocked_state(n_groups, n_cells, seed=0):
    """A cell-blocked state of ``n_groups`` mixed groups: offsets up to 1e6,
    a constant cell (1) and a NaN cell (2, from group 2 on)."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n_groups, P + 2, n_cells)) * np.linspace(0.1, 5.0, n_cells)
    data += np.linspace(-1e6, 1e6, n_cells)
    if n_cells > 2:
        data[:, :, 1] = 7.0
        if n_groups > 2:
            data[2, 4, 2] = np.nan
    state = np.zeros((n_blocks(n_cells), row_width(P) * BLOCK))
    if n_groups:
        blocked_update_many(state, data, 0, scratch_for(P))
    return state


def outputs(n_cells, with_indices, fill):
    """The six output arrays, each a view of ``(P, n_cells + 1)`` filled with
    ``fill`` (the indices' ``(P, 0)`` without ``with_indices``)."""
    width = n_cells if with_indices else 0
    return ([np.full((P, n_cells + 1), fill)[:, :n_cells] for _ in range(4)]
            + [np.full((P, width + 1), fill)[:, :width] for _ in range(2)])


@pytest.mark.parametrize("n_cells", [1, BLOCK - 1, BLOCK + 1, 5 * BLOCK + 3])
@pytest.mark.parametrize("n_groups", [0, 2, 3, 4, 30])
@pytest.mark.parametrize("method", [DELTA, FISHER, DELTA_LINEAR])
@pytest.mark.parametrize("with_indices", [True, False])
def test_the_row_kernels_arrays_bit_for_bit(n_cells, n_groups, method, with_indices):
    state = blocked_state(n_groups, n_cells)
    rows = np.empty((n_cells, row_width(P)))
    blocks_to_rows(state, block_slots(P), 0, rows)
    want = outputs(n_cells, with_indices, 0.0)
    martinez_interval(rows, n_groups, P, 1.7, method, *want)
    for fill in (-3.0, np.nan):   # every cell written whatever was there
        got = outputs(n_cells, with_indices, fill)
        blocked_interval(state, n_cells, n_groups, P, 1.7, method, *got)
        for g, w in zip(got, want, strict=True):
            assert g.tobytes() == w.tobytes()
            assert np.array_equal(g.base[:, g.shape[1]:], np.full((P, 1), fill),
                                  equal_nan=True)   # nothing written past the cells


def test_the_accumulator_reads_its_blocked_state_in_place():
    """A cell-blocked SobolMartinez gives the row layout's results, bit for
    bit, without converting its state to rows: ``blocks_to_rows`` is not
    called by the results."""
    import melissa_sa.stats.sobol_blocks as sobol_blocks

    n_cells = 3 * BLOCK + 5
    rng = np.random.default_rng(3)
    s = SobolMartinez(n_cells, P)
    for _ in range(9):
        s.update(rng.standard_normal((P + 2, n_cells)) + 100.0)
    rows = s.folded_state()
    called = []
    original = sobol_blocks.blocks_to_rows
    sobol_blocks.blocks_to_rows = lambda *a: called.append(a) or original(*a)
    try:
        (first, total), ((f_lo, f_hi), (t_lo, t_hi)) = s.indices_and_interval(0.9)
    finally:
        sobol_blocks.blocks_to_rows = original
    assert not called
    want = outputs(n_cells, True, 0.0)
    martinez_interval(rows, s.count, P, NormalDist().inv_cdf(0.95), DELTA, *want)
    for g, w in zip((f_lo, f_hi, t_lo, t_hi, first, total), want, strict=True):
        assert g.tobytes() == np.ascontiguousarray(w).tobytes()


def edge_state(n_cells):
    """A state whose first pair is ``C_0 = B`` (first-order correlation 1
    exactly: the bounds' ``|rho| = 1`` case) and second ``C_1 = -A``
    (total-order correlation -1 up to rounding: the clip to [-1, 1]), the
    third random."""
    rng = np.random.default_rng(5)
    data = rng.standard_normal((12, P + 2, n_cells)) * 3.0 + 40.0
    data[:, 2] = data[:, 1]
    data[:, 3] = -data[:, 0]
    state = np.zeros((n_blocks(n_cells), row_width(P) * BLOCK))
    blocked_update_many(state, data, 0, scratch_for(P))
    return state


@pytest.mark.parametrize("method", [DELTA, FISHER, DELTA_LINEAR])
def test_correlations_of_one_and_contiguous_outputs(method):
    """``|rho| = 1`` (the bounds are ``rho`` itself) and C-contiguous
    outputs (the arrays the statistics pass, a type of their own for Numba)
    give the row kernel's arrays."""
    n_cells = 4 * BLOCK + 7
    state = edge_state(n_cells)
    rows = np.empty((n_cells, row_width(P)))
    blocks_to_rows(state, block_slots(P), 0, rows)
    want = [np.zeros((P, n_cells)) for _ in range(6)]
    martinez_interval(rows, 12, P, 1.96, method, *want)
    assert np.all(want[4][0] == 1.0)   # the edge is reached
    if method != DELTA_LINEAR:        # whose bounds are rho +- q se, no edge case
        assert np.all(want[0][0] == 1.0) and np.all(want[1][0] == 1.0)
    got = [np.full((P, n_cells), np.nan) for _ in range(6)]
    blocked_interval(state, n_cells, 12, P, 1.96, method, *got)
    for g, w in zip(got, want, strict=True):
        assert g.tobytes() == w.tobytes()


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_any_split_of_the_blocks_between_threads(workers):
    """The kernel's blocks split into ``workers`` ranges, each with its own
    scratch (more ranges than blocks too), give the same arrays."""
    from melissa_sa.kernels.sobol_blocked_interval import SCRATCH_ROWS, _blocked_interval

    n_cells = 5 * BLOCK + 3
    state = blocked_state(30, n_cells)
    want = outputs(n_cells, True, 0.0)
    blocked_interval(state, n_cells, 30, P, 1.7, DELTA, *want)
    got = outputs(n_cells, True, np.nan)
    _blocked_interval(state, n_cells, 30, P, 1.7, DELTA, *got,
                      np.empty((workers, SCRATCH_ROWS * BLOCK)))
    for g, w in zip(got, want, strict=True):
        assert g.tobytes() == w.tobytes()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="checks x86-64 instructions; this machine is not x86-64")
def test_the_lane_loops_compile_to_packed_square_roots_and_divisions():
    """The loops over a block's lanes vectorise: the kernel's machine code has
    packed (``pd``) square roots and divisions and no gathered loads (an
    index LLVM cannot prove non-negative turns the lanes' loads into
    gathers). Compiled here without Numba's cache, whose entries cannot be
    inspected."""
    from numba import njit

    from melissa_sa.kernels import sobol_blocked_interval as kernel

    compiled = njit(parallel=True, error_model="numpy", nogil=True)(
        kernel._blocked_interval.py_func)
    n_cells = 2 * BLOCK + 3
    compiled(blocked_state(6, n_cells), n_cells, 6, P, 1.96, DELTA, *outputs(n_cells, True, 0.0),
             np.empty((1, kernel.SCRATCH_ROWS * BLOCK)))
    asm = compiled.inspect_asm(compiled.signatures[0])
    assert re.search(r"\bv?sqrtpd\b", asm) and re.search(r"\bv?divpd\b", asm)
    assert not re.search(r"\bvgather", asm)
