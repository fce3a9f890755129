"""The cell-blocked state of a full :class:`~melissa_sa.stats.SobolMartinez`.

A ``ci="delta"`` state without second order is kept cell-blocked
(:mod:`melissa_sa.kernels.sobol_blocked`): :data:`~melissa_sa.kernels.sobol_blocked.BLOCK`
cells per row, each accumulator's cells contiguous, so that the fold runs in
SIMD lanes. The intervals (with the indices) read the blocks in place
(:mod:`melissa_sa.kernels.sobol_blocked_interval`), the re-centring moves them
in place (:mod:`melissa_sa.kernels.sobol_blocked_recentre`); everything else reads the
row layout of :mod:`melissa_sa.kernels.sobol` (one row per cell): the
per-cell kernels of merge and the indices alone run on the rows
of :data:`SLICE` cells at a time (:meth:`BlockedState.by_slices`), converted into a buffer
(no state-sized copy; the merge keeps its buffer for the next one); the checkpoint reads the whole
row-layout state (:meth:`BlockedState.rows`), so a checkpoint's arrays are
those of the row layout, whichever layout wrote them.

>>> import numpy as np
>>> from melissa_sa.kernels.sobol import martinez_update_many
>>> groups = np.random.default_rng(0).random((4, 5, 21))
>>> blocks = BlockedState(21, 3)
>>> blocks.fold(groups, 0)
>>> rows = np.zeros((21, 57))
>>> martinez_update_many(rows, groups, 0)
>>> bool(np.array_equal(blocks.rows(), rows))
True
"""

from __future__ import annotations

import numpy as np

from melissa_sa.kernels.sobol import row_width
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
from melissa_sa.kernels.sobol_centred import martinez_merge

__all__ = ["SLICE", "BlockedState"]

#: cells per slice of the row-layout passes (merge, results): a multiple
#: of BLOCK; the buffer is ``SLICE (9 + 16 p)`` float64 (1.9 MB at p = 3)
SLICE = 4096


class BlockedState:
    """A full Martinez state of ``n_cells`` cells and ``n_params`` parameters,
    cell-blocked: :attr:`array` is ``(n_blocks, (9 + 16 p) BLOCK)`` float64."""

    def __init__(self, n_cells: int, n_params: int):
        self.n_cells = n_cells
        self.n_params = n_params
        self.width = row_width(n_params)
        self.array = np.zeros((n_blocks(n_cells), self.width * BLOCK))
        self.slots = block_slots(n_params)
        # made when first needed, freed by drop_scratch():
        self._scratch = None   # the folds', 4 (p + 8) BLOCK float64 per Numba thread
        self._terms = None     # the influence terms', 16 p BLOCK float64 per Numba thread
        self._slice = None     # row buffer of the merge (kept: merges repeat)

    def drop_scratch(self) -> None:
        """Free the scratch arrays (made again when needed): the state alone
        stays."""
        self._scratch = self._terms = self._slice = None

    def _fold_scratch(self) -> np.ndarray:
        if self._scratch is None:
            self._scratch = scratch_for(self.n_params)
        return self._scratch

    @property
    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in (self._scratch, self._terms, self._slice)
                    if a is not None)
        return self.array.nbytes + extra

    # -- the fold --------------------------------------------------------
    def fold(self, groups, n: int, m: int = -1, recentre: bool = False) -> None:
        """Fold ``groups`` (an ``(m, p + 2, n_cells)`` array or a tuple of
        groups, the first ``m`` folded) after ``n`` groups; then, if
        ``recentre``, re-centre each chunk in the same pass (the state
        :func:`~melissa_sa.kernels.sobol_blocked_recentre.blocked_recentre`
        would give, bit for bit)."""
        blocked_update_many(self.array, groups, n, self._fold_scratch(), m, recentre)

    def fold_influence(self, groups, n: int, rows, partial, out, m: int,
                       recentre: bool = False) -> None:
        """:meth:`fold`, adding the influence sums of the groups flagged in
        ``rows`` to ``out`` (see
        :func:`~melissa_sa.kernels.sobol_blocked_influence.blocked_update_many_influence`)."""
        if self._terms is None:
            self._terms = terms_for(self.n_params)
        blocked_update_many_influence(self.array, groups, n, self._fold_scratch(), rows, partial,
                                      self._terms, out, m, recentre)

    # -- the row layout ----------------------------------------------------
    def rows(self) -> np.ndarray:
        """The state in the row layout, a new ``(n_cells, 9 + 16 p)`` array."""
        out = np.empty((self.n_cells, self.width))
        blocks_to_rows(self.array, self.slots, 0, out)
        return out

    def load_rows(self, rows: np.ndarray) -> None:
        """Set the state from its row layout ``(n_cells, 9 + 16 p)``."""
        if rows.shape != (self.n_cells, self.width):
            raise ValueError(f"rows {rows.shape}, expected {(self.n_cells, self.width)}")
        rows_to_blocks(np.ascontiguousarray(rows, dtype=np.float64), self.slots, 0,
                       self.array)

    def _slices(self):
        """``(first block, cells)`` of each slice of :data:`SLICE` cells."""
        for lo in range(0, self.n_cells, SLICE):
            yield lo // BLOCK, min(SLICE, self.n_cells - lo)

    def _buffer(self, keep: bool = False) -> np.ndarray:
        """A row buffer of a slice: the kept one (made once) if ``keep``, else
        the kept one if it exists or a new one (results are rare: no buffer
        stays for them, 1.9 MB per statistic at p = 3)."""
        if self._slice is not None:
            return self._slice
        buf = np.empty((min(SLICE, self.n_cells), self.width))
        if keep:
            self._slice = buf
        return buf

    def by_slices(self, read):
        """``read(rows)`` on the rows of each slice of :data:`SLICE` cells, its
        arrays (a tuple tree, possibly with None leaves, of arrays whose last
        axis is the cells) put together for all the cells: the results of
        the per-cell kernels without a copy of the whole state."""
        buf = self._buffer()
        out = None
        for b0, cells in self._slices():
            rows = buf[:cells]
            blocks_to_rows(self.array, self.slots, b0, rows)
            part = read(rows)
            if out is None:
                out = _empty_like_tree(part, self.n_cells)
            _fill_tree(out, part, b0 * BLOCK)
        return out

    def merge(self, n: int, other: BlockedState, n_other: int) -> None:
        """:func:`~melissa_sa.kernels.sobol_centred.martinez_merge` of ``other``
        (``n_other`` groups) into this state (``n`` groups), slice by slice."""
        mine, theirs = self._buffer(keep=True), other._buffer(keep=True)
        if theirs is mine:   # merging a state with itself: a second buffer
            theirs = np.empty_like(mine)
        for b0, cells in self._slices():
            a, b = mine[:cells], theirs[:cells]
            blocks_to_rows(self.array, self.slots, b0, a)
            blocks_to_rows(other.array, self.slots, b0, b)
            martinez_merge(a, n, b, n_other, self.n_params)
            rows_to_blocks(a, self.slots, b0, self.array)


def _empty_like_tree(tree, n_cells):
    if tree is None:
        return None
    if isinstance(tree, np.ndarray):
        if tree.shape[-1] == 0:   # an empty placeholder stays as it is
            return tree
        return np.empty(tree.shape[:-1] + (n_cells,), dtype=tree.dtype)
    return tuple(_empty_like_tree(t, n_cells) for t in tree)


def _fill_tree(out, part, lo):
    if part is None:
        return
    if isinstance(part, np.ndarray):
        if part.shape[-1]:
            out[..., lo:lo + part.shape[-1]] = part
        return
    for o, p in zip(out, part, strict=True):
        _fill_tree(o, p, lo)
