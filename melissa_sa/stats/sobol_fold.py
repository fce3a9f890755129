"""The batched fold of a :class:`~melissa_sa.stats.SobolMartinez`: its buffer,
the influence rows of the buffered groups, and the fold itself.

**Why batches.** Folding one group reads and writes the whole Martinez state
(912 bytes per cell at ``p = 3``) for 40 bytes of input, so the fold is bound
by that traffic; ``m`` groups in one pass cost ``912 / m + 40`` bytes each
(:func:`~melissa_sa.kernels.sobol.martinez_update_many`, the very operations
of ``m`` one-group folds in the same order: bit for bit the same state). The
accumulator keeps up to ``fold_batch`` groups in a :class:`GroupBuffer` and
folds them with :func:`fold_groups`. ``fold_batch = 1`` folds each group at
once, without a copy; it is the default with second order (the second-order
interval's plug-in reads the first-order state, which then holds every
earlier group; with a larger ``fold_batch`` the plug-in is up to
``fold_batch - 1`` groups older).

**The buffer.** A group enters it in one of two ways:

* **copied** (:meth:`GroupBuffer.copy`): into a slot the buffer owns, so the
  caller may overwrite its array at once. The ``capacity`` slots are made at
  the first copy, in the group's shape and dtype (again if that changes), and
  reused: ``fold_batch (p + 2)`` samples per cell (160 bytes per cell for
  float64 at ``p = 3`` and ``fold_batch = 4``, 80 for float32).
* **kept** (:meth:`GroupBuffer.keep`): the buffer folds the array from where
  it is, without a copy. An array leased from a
  :class:`~melissa_sa.stats.row_pool.RowPool` (the rows the server assembled
  from the clients' messages) is given back to that pool once folded
  (:meth:`GroupBuffer.clear`); the server assembles later groups into it.

The kernels take the groups as one tuple of arrays of a single dtype
(:func:`~melissa_sa.kernels.sobol.group_tuple`), so a group of another dtype
than the buffered ones asks for a fold first (:meth:`GroupBuffer.accepts`).

**Influence sums.** The aggregated interval
(:class:`~melissa_sa.stats.sobol_aggregated.SobolAggregatedInterval`) holds,
per batch, sums over the cells computed with the state as it was *before*
each counted group. Rather than fold the buffer, pass over the state for the
sums, then fold the group (two passes per group), :class:`InfluenceRows`
keeps, per buffered group, the row of the batch sums its sums go to, and the
fold adds them on the way
(:func:`~melissa_sa.kernels.sobol_influence.martinez_update_many_influence`:
one pass for ``fold_batch`` groups and their sums; the sums and the state of
the two-pass path, bit for bit).

**The fold** (:func:`fold_groups`) cuts a batch at the counts of
:data:`RECENTRE_AT`, where every cell's shift moves to A's running mean (a
cell-blocked state in the pass of the fold that reaches the count; the
power sums of a full state are best conditioned about the mean; a compact
state moves too, so that both keep the same block 1), and passes at most
:data:`~melissa_sa.kernels.sobol.GROUP_TUPLE` arrays per kernel call.

>>> import numpy as np
>>> from melissa_sa.stats.row_pool import RowPool
>>> buf, pool = GroupBuffer(capacity=2), RowPool(spares=2)
>>> leased = pool.lease((5, 3), np.float64)
>>> buf.copy(np.zeros((5, 3)))           # copied into a slot
>>> buf.keep(leased, pool)               # folded from the pool's array
>>> len(buf), buf.groups[1] is leased, len(pool)
(2, True, 0)
>>> buf.clear()                          # after the fold: back to the pool
>>> len(buf), len(pool), buf.nbytes      # two free slots of 5 x 3 float64
(0, 1, 240)
"""

from __future__ import annotations

import numpy as np

from melissa_sa.kernels.sobol import (
    CHUNK,
    GROUP_TUPLE,
    group_tuple,
    martinez_update,
    martinez_update_many,
)
from melissa_sa.kernels.sobol_centred import martinez_recentre
from melissa_sa.kernels.sobol_influence import (
    aggregated_influence,
    martinez_update_many_influence,
)
from melissa_sa.stats.row_pool import RowPool

__all__ = ["RECENTRE_AT", "FOLD_BATCH", "BATCH_GROUP_BYTES", "fold_batch_for", "GroupBuffer",
           "InfluenceRows", "fold_groups"]

#: group counts after which the shift moves to A's running mean
RECENTRE_AT = (2, 16, 256)
#: groups buffered per fold of a full (``ci="delta"``) state, and of a compact
#: one (``ci="fisher"``): measured, see ``docs/performance.md``
FOLD_BATCH = {"delta": 4, "fisher": 1}
#: by default a group of more bytes (its rows over the accumulator's cells,
#: float64) is folded at once: at 10^6 cells (40 MB a group at p = 3) a batch
#: of 4 held 1.2 GB of groups over 10 time steps and cost more CPU than it
#: saved (every buffer beyond the pool's spares is a fresh mapping that the
#: kernel zeroes page by page); at 10^5 cells (4 MB) it saves 10-20 % of the
#: server's CPU (``benchmarks/peer_c_server.py --fold-batch``, docs/performance.md)
BATCH_GROUP_BYTES = 16 * 2**20


def fold_batch_for(ci: str, second_order: bool, fold_batch: int | None = None,
                   group_bytes: int = 0):
    """The groups a :class:`~melissa_sa.stats.SobolMartinez` buffers per fold: ``fold_batch`` if
    given, else :data:`FOLD_BATCH` for ``ci`` when a group is at most
    :data:`BATCH_GROUP_BYTES` (``group_bytes``: its rows over the
    accumulator's cells), else 1; and 1 with second order (its interval's
    plug-in reads the first-order state, which must then hold every earlier
    group, whatever else flushes the buffer)."""
    if fold_batch is not None:
        return fold_batch
    if second_order or group_bytes > BATCH_GROUP_BYTES:
        return 1
    return FOLD_BATCH[ci]

#: marks a buffered group that sits in one of the buffer's own slots
SLOT = object()


class GroupBuffer:
    """Groups waiting to be folded, in the order they count."""

    def __init__(self, capacity: int):
        self.capacity = capacity              # groups per fold: slots made at once
        self.groups: list[np.ndarray] = []   # to fold, in order
        # per group, once folded: (pool, array) to give the array back to,
        # SLOT for one of the buffer's own slots, None for nothing
        self._after: list[tuple[RowPool, np.ndarray] | object | None] = []
        self._slots: list[np.ndarray] = []    # free copy slots

    def __len__(self) -> int:
        return len(self.groups)

    def accepts(self, group: np.ndarray) -> bool:
        """Whether ``group`` can join the buffered ones (same dtype and shape)."""
        if not self.groups:
            return True
        first = self.groups[0]
        return group.dtype == first.dtype and group.shape == first.shape

    def _check(self, group: np.ndarray) -> None:
        if not self.accepts(group):
            raise ValueError(f"group {group.shape} {group.dtype} joins buffered groups "
                             f"{self.groups[0].shape} {self.groups[0].dtype}: fold first")

    def copy(self, group: np.ndarray) -> None:
        """Buffer a copy of ``group`` (C-contiguous, float32/float64) in a slot."""
        self._check(group)
        slot = self._take_slot(group)
        # NumPy's copy, a memcpy of each row: a Numba copy over the cells in
        # parallel, reading the rows column by column, cost 11 ms per 40 MB
        # group on one thread, 16 ms of CPU on two, against 2.0-2.5 ms
        # (10^6 cells, p = 3: benchmarks/sobol_fold.py, 5 Dec 2026)
        np.copyto(slot, group)
        self.groups.append(slot)
        self._after.append(SLOT)

    def keep(self, group: np.ndarray, pool: RowPool | None, rows: np.ndarray | None = None
             ) -> None:
        """Buffer ``group`` itself (C-contiguous, float32/float64); once it is
        folded, ``rows`` (default ``group``: the array leased, of which
        ``group`` may be the first rows) goes back to ``pool`` (None: the
        array is nobody's, e.g. a converted copy, and is dropped)."""
        self._check(group)
        self.groups.append(group)
        self._after.append(None if pool is None else (pool, group if rows is None else rows))

    def _take_slot(self, group: np.ndarray) -> np.ndarray:
        for i, slot in enumerate(self._slots):
            if slot.shape == group.shape and slot.dtype == group.dtype:
                return self._slots.pop(i)
        # the first copy (or another dtype): every slot a batch can need, at
        # once, so that no later update allocates
        in_use = sum(after is SLOT for after in self._after)
        self._slots = [np.empty(group.shape, dtype=group.dtype)
                       for _ in range(max(self.capacity - in_use - 1, 0))]
        return np.empty(group.shape, dtype=group.dtype)

    def clear(self) -> None:
        """Forget the buffered groups (they were folded): slots become free,
        kept arrays go back to their pools."""
        for group, after in zip(self.groups, self._after, strict=True):
            if after is SLOT:
                self._slots.append(group)
            elif after is not None:
                pool, rows = after
                pool.give_back(rows)
        self.groups.clear()
        self._after.clear()

    def drop(self) -> None:
        """Free the buffer's copy slots once nothing is buffered."""
        if self.groups:
            raise ValueError(f"{len(self.groups)} group(s) buffered: fold them before drop()")
        self._slots = []

    @property
    def nbytes(self) -> int:
        """Bytes the buffer holds: its slots, free or in use, and the kept
        arrays not yet folded."""
        return (sum(a.nbytes for a in self.groups)
                + sum(a.nbytes for a in self._slots))


class InfluenceRows:
    """Which of a SobolMartinez's buffered groups add influence sums, and where.

    ``out``: the ``(n_batches, 4, p)`` float64 batch sums the sums go to (the
    aggregated interval's array, written in place). ``rows[slot]``: the row
    of ``out`` that the group in buffer slot ``slot`` adds its sums to, -1
    for none. The kernels' scratch, ``(fold_batch, ceil(n_cells / 256), 4,
    p)`` float64, is made on the first group registered.
    """

    def __init__(self, out: np.ndarray, n_cells: int, n_params: int, fold_batch: int):
        self.out = out
        self.n_cells = n_cells
        self.n_params = n_params
        self.rows = np.full(fold_batch, -1, dtype=np.int64)
        self._partial = None

    def partial(self) -> np.ndarray:
        if self._partial is None:
            chunks = -(-self.n_cells // CHUNK)
            self._partial = np.zeros((len(self.rows), chunks, 4, self.n_params))
        return self._partial

    @property
    def nbytes(self) -> int:
        return 0 if self._partial is None else self._partial.nbytes

    def register(self, slot: int, row: int) -> None:
        """The group in ``slot`` adds its sums to row ``row`` of :attr:`out`."""
        self.partial()
        self.rows[slot] = row

    def pending(self, stop: int, start: int = 0) -> bool:
        """Whether a group in slots ``[start, stop)`` has sums to add."""
        return bool((self.rows[start:stop] >= 0).any())

    def fold(self, state, groups, start: int, stop: int, n: int, blocks=None,
             recentre: bool = False) -> None:
        """Fold ``groups[start:stop]`` (a list of arrays; slots
        ``start..stop-1``, at most ``GROUP_TUPLE``, ``n`` groups folded before
        them) into the full ``state`` (or the cell-blocked ``blocks``, a
        :class:`~melissa_sa.stats.sobol_blocks.BlockedState`, re-centred in
        the same pass if ``recentre``), adding the sums on the way."""
        if blocks is not None:
            blocks.fold_influence(group_tuple(groups[start:stop]), n, self.rows[start:stop],
                                  self.partial(), self.out, stop - start, recentre)
            return
        martinez_update_many_influence(state, group_tuple(groups[start:stop]), n,
                                       self.rows[start:stop], self.partial(), self.out,
                                       stop - start)

    def clear(self, m: int) -> None:
        """The first ``m`` slots were folded: their sums are added."""
        self.rows[:m] = -1

    def add_now(self, state, group, n: int, row: int) -> None:
        """Add one group's sums to row ``row`` with ``state`` as it is (``n``
        groups, at least 2): the two-pass path of a compact state."""
        aggregated_influence(state, group, n, self.n_params, row, self.partial()[0], self.out)


def fold_groups(state: np.ndarray, groups, n: int, n_params: int,
                influence=None, blocks=None) -> None:
    """Fold ``groups`` (``(p + 2, n_cells)`` arrays of one dtype, the next
    ones in order) into ``state`` (compact, or full: ``ci="delta"``), which
    holds ``n`` groups. ``influence``: the rows of the
    groups' influence sums (slot ``i`` for ``groups[i]``), cleared once added.
    ``blocks``: the state is this cell-blocked one
    (:class:`~melissa_sa.stats.sobol_blocks.BlockedState`; ``state`` is its
    array); ``groups`` may then be an ``(m, p + 2, n_cells)`` C-contiguous
    array, folded in one pass whatever ``m`` (between re-centrings)."""
    done = 0
    m = len(groups)
    infl = influence if influence is not None and influence.pending(m) else None
    whole = blocks is not None and infl is None and isinstance(groups, np.ndarray)
    while done < m:
        stop = m if whole else min(m, done + GROUP_TUPLE)
        for count in RECENTRE_AT:
            if n < count < n + (stop - done):
                stop = done + count - n
                break
        # a cell-blocked state re-centres in the fold's pass
        recentre = n + stop - done in RECENTRE_AT
        if infl is not None and infl.pending(stop, done):
            infl.fold(state, groups, done, stop, n, blocks, recentre)
        elif whole:
            blocks.fold(groups[done:stop], n, -1, recentre)
        elif blocks is not None:
            blocks.fold(group_tuple(groups[done:stop]), n, stop - done, recentre)
        elif stop - done == 1:
            martinez_update(state, groups[done], n)
        else:
            martinez_update_many(state, group_tuple(groups[done:stop]), n, stop - done)
        n += stop - done
        done = stop
        if recentre and blocks is None:
            martinez_recentre(state, n, n_params)
    if infl is not None:
        infl.clear(m)
