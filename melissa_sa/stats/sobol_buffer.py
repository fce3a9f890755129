"""The groups a :class:`~melissa_sa.stats.SobolMartinez` has received and not
yet folded: its batched fold's buffer.

Folding one group moves the whole Martinez state through memory (912 bytes
per cell at ``p = 3``) for 40 bytes of input, so the statistic keeps up to
``fold_batch`` groups and folds them in one pass
(:func:`~melissa_sa.kernels.sobol.martinez_update_many`). A group enters the
buffer in one of two ways:

* **copied** (:meth:`GroupBuffer.copy`): into a slot the buffer owns, so the
  caller may overwrite its array at once. The ``capacity`` slots are made at
  the first copy, in the group's shape and dtype (again if that changes), and
  reused.
* **kept** (:meth:`GroupBuffer.keep`): the buffer folds the array from where
  it is, without a copy. An array leased from a
  :class:`~melissa_sa.stats.row_pool.RowPool` (the rows the server assembled
  from the clients' messages) is given back to that pool once folded
  (:meth:`clear`); the server assembles later groups into it.

The kernels take the groups as one tuple of arrays of a single dtype
(:func:`~melissa_sa.kernels.sobol.group_tuple`), so a group of another
dtype than the buffered ones asks for a fold first (:meth:`accepts`).

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

from melissa_sa.kernels.sobol import copy_group
from melissa_sa.stats.row_pool import RowPool

__all__ = ["GroupBuffer"]

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
        copy_group(slot, group)
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
