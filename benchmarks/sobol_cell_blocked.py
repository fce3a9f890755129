#!/usr/bin/env python3
"""A cell-blocked Sobol' state, measured against the project's row layout.

Prototype, not project code (docs/performance.md, "SIMD across cells"): the
p = 3 delta-interval state of :mod:`melissa_sa.kernels.sobol` kept as blocks
of ``BLOCK`` cells, each block slot-major (every slot's ``BLOCK`` values
contiguous) and each pick-freeze pair's 16 slots contiguous, so that LLVM
vectorises the fold over the cells of a block (one base pointer, constant
offsets; with two written views per pair it did not). The fold applies the
batch of ``m`` groups chunk by chunk (``CHUNK`` cells) like
``martinez_update_many``, with the very same operations per accumulator: the
state is bit for bit the row kernel's (checked here before timing).

    python benchmarks/sobol_cell_blocked.py --cells 1e6 --repeat 11
    NUMBA_NUM_THREADS=1 python benchmarks/sobol_cell_blocked.py --cells 1e6

Prints ms per group (best / median, calls alternated) for float64 and
float32 groups.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numba import get_num_threads, njit, prange

from melissa_sa.kernels.sobol import martinez_update_many, row_width, welford_weights

BLOCK = 16    # cells per block (a compile-time constant: the vectoriser needs it)
CHUNK = 256   # cells per chunk (the m groups are applied to a chunk in turn)


@njit(cache=True)
def block_slots(p):
    """Row of each row-layout slot in a block (pair-contiguous order)."""
    h = 5 + 4 * p
    to = np.empty(9 + 16 * p, dtype=np.int64)
    for q in range(5):
        to[q] = q
    for t in range(4):
        to[h + t] = 5 + t
    for k in range(p):
        for t in range(4):
            to[5 + 4 * k + t] = 9 + 16 * k + t
        for t in range(12):
            to[h + 4 + 12 * k + t] = 9 + 16 * k + 4 + t
    return to


@njit(cache=True, inline="always")
def _fold_ab(blk, x, ga, gb, nb, first, r, c2):
    """Block 1 and the power sums of A and B; keeps the per-cell values the
    pairs need in ``x`` (xa, xb, da, db, shift)."""
    if first:
        for c in range(nb):
            blk[c] = ga[c]
    for c in range(nb):
        s = blk[c]
        xa = ga[c] - s
        xb = gb[c] - s
        da = xa - blk[BLOCK + c]
        db = xb - blk[2 * BLOCK + c]
        x[c] = xa
        x[BLOCK + c] = xb
        x[2 * BLOCK + c] = da
        x[3 * BLOCK + c] = db
        x[4 * BLOCK + c] = s
        blk[BLOCK + c] += r * da
        blk[2 * BLOCK + c] += r * db
        blk[3 * BLOCK + c] += c2 * da * da
        blk[4 * BLOCK + c] += c2 * db * db
        xa2 = xa * xa
        xb2 = xb * xb
        blk[5 * BLOCK + c] += xa2 * xa
        blk[6 * BLOCK + c] += xa2 * xa2
        blk[7 * BLOCK + c] += xb2 * xb
        blk[8 * BLOCK + c] += xb2 * xb2


@njit(cache=True, inline="always")
def _fold_pair(sk, x, gc, nb, r, c2):
    """The 16 slots of pair k: block 1 (mean, C2, AC11, BC11), then P3, P4
    and the ten mixed power sums, as ``fold_full_row`` orders its operations."""
    for c in range(nb):
        xa = x[c]
        xb = x[BLOCK + c]
        da = x[2 * BLOCK + c]
        db = x[3 * BLOCK + c]
        xc = gc[c] - x[4 * BLOCK + c]
        dc = xc - sk[c]
        sk[c] += r * dc
        sk[BLOCK + c] += c2 * dc * dc
        sk[2 * BLOCK + c] += c2 * da * dc
        sk[3 * BLOCK + c] += c2 * db * dc
        xc2 = xc * xc
        sk[4 * BLOCK + c] += xc2 * xc
        sk[5 * BLOCK + c] += xc2 * xc2
        ac = xa * xc
        sk[6 * BLOCK + c] += ac * xa
        sk[7 * BLOCK + c] += ac * xc
        sk[8 * BLOCK + c] += ac * (xa * xa)
        sk[9 * BLOCK + c] += ac * ac
        sk[10 * BLOCK + c] += ac * xc2
        bc = xb * xc
        sk[11 * BLOCK + c] += bc * xb
        sk[12 * BLOCK + c] += bc * xc
        sk[13 * BLOCK + c] += bc * (xb * xb)
        sk[14 * BLOCK + c] += bc * bc
        sk[15 * BLOCK + c] += bc * xc2


@njit(cache=True, parallel=True, error_model="numpy")
def update_many_blocked(state, groups, n):
    """``martinez_update_many`` on a cell-blocked state ``(n_blocks, width * BLOCK)``."""
    m = groups.shape[0]
    p = groups.shape[1] - 2
    n_cells = groups.shape[2]
    n_blocks = state.shape[0]
    per = CHUNK // BLOCK
    for ch in prange((n_blocks + per - 1) // per):
        x = np.empty(5 * BLOCK)
        for g in range(m):
            r, c2 = welford_weights(n + g)
            for b in range(ch * per, min(ch * per + per, n_blocks)):
                lo = b * BLOCK
                nb = min(BLOCK, n_cells - lo)
                blk = state[b]
                _fold_ab(blk[:9 * BLOCK], x, groups[g, 0, lo:lo + nb],
                         groups[g, 1, lo:lo + nb], nb, n + g == 0, r, c2)
                for k in range(p):
                    o = (9 + 16 * k) * BLOCK
                    _fold_pair(blk[o:o + 16 * BLOCK], x, groups[g, 2 + k, lo:lo + nb],
                               nb, r, c2)


def as_rows(state, n_cells, p):
    """The row layout of a cell-blocked state (for the bit-for-bit check)."""
    slots = block_slots(p)
    width = row_width(p)
    blocks = state.reshape(state.shape[0], width, BLOCK)
    rows = np.empty((n_cells, width))
    for q in range(width):
        rows[:, q] = blocks[:, slots[q], :].reshape(-1)[:n_cells]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=float, default=1e6)
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--fold-batch", type=int, default=4)
    a = ap.parse_args()
    n_cells, m, p = int(a.cells), a.fold_batch, 3
    for dtype in (np.float64, np.float32):
        groups = (np.random.default_rng(0).standard_normal((m, p + 2, n_cells)) + 3.0)
        groups = groups.astype(dtype)
        rows = np.zeros((n_cells, row_width(p)))
        blocked = np.zeros(((n_cells + BLOCK - 1) // BLOCK, row_width(p) * BLOCK))
        for k in range(2):
            martinez_update_many(rows, groups, k * m)
            update_many_blocked(blocked, groups, k * m)
        if not np.array_equal(rows, as_rows(blocked, n_cells, p)):
            raise SystemExit("the cell-blocked fold differs from the row kernel")
        t_rows, t_blocked = [], []
        for k in range(a.repeat):
            t0 = time.perf_counter()
            martinez_update_many(rows, groups, (2 + k) * m)
            t_rows.append((time.perf_counter() - t0) / m)
            t0 = time.perf_counter()
            update_many_blocked(blocked, groups, (2 + k) * m)
            t_blocked.append((time.perf_counter() - t0) / m)
        best = min(t_rows) / min(t_blocked)
        med = statistics.median(t_rows) / statistics.median(t_blocked)
        print(f"{get_num_threads()} thread(s), {n_cells:.0e} cells, {np.dtype(dtype).name} "
              f"groups, m = {m}: ms per group rows {min(t_rows) * 1e3:.2f} / "
              f"{statistics.median(t_rows) * 1e3:.2f}, cell-blocked "
              f"{min(t_blocked) * 1e3:.2f} / {statistics.median(t_blocked) * 1e3:.2f}: "
              f"{best:.2f}x / {med:.2f}x (best / median of {a.repeat})", flush=True)


if __name__ == "__main__":
    main()
