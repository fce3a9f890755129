"""The groups a :class:`~melissa_sa.stats.SobolMartinez` has received and not
yet folded: its batched fold's buffer.

Folding one group moves the whole Martinez state through memory (912 bytes
per cell at ``p = 3``) for 40 bytes of input, so the statistic keeps up to
``fold_batch`` groups and folds them in one pass
(:func:`~melissa_sa.kernels.sobol.martinez_update_many`). A group enters the
buffer in one of two ways:

* **copied** (:meth:`GroupBuffer.add`, the default of
  :meth:`SobolMartinez.update`): into a slot the buffer owns, so the caller
  may overwrite its array at once. The ``capacity`` slots are made at the
  first copy, in the group's shape and dtype (again if that changes), and
  reused.
* **kept** (``add(group, keep=True, give_back=array)``): the buffer keeps
  a reference to the caller's array and folds it from there, without a
  copy; the caller must not write to it until :meth:`released` gives it
  back, after the fold. The server hands over the rows it assembled from the
  clients' messages and assembles later groups into the released ones
  (:meth:`melissa_sa.server.assembly.GroupAssembler.release`).

The kernels take the groups as one tuple of arrays of a single dtype
(:func:`~melissa_sa.kernels.sobol.group_tuple`), so a group of another
dtype than the buffered ones asks for a flush first (:meth:`accepts`).

>>> import numpy as np
>>> buf = GroupBuffer(capacity=2)
>>> mine = np.ones((5, 3))
>>> buf.add(np.zeros((5, 3)))            # copied
>>> buf.add(mine, keep=True, give_back=mine)   # kept by reference
>>> len(buf), buf.groups[1] is mine
(2, True)
>>> buf.clear()                          # after the fold
>>> [a is mine for a in buf.released()]
[True]
>>> len(buf), buf.nbytes                 # two free slots of 5 x 3 float64
(0, 240)
"""

from __future__ import annotations

import numpy as np

from melissa_sa.kernels.sobol import copy_group

__all__ = ["GroupBuffer"]


class GroupBuffer:
    """Groups waiting to be folded, in the order they count."""

    def __init__(self, capacity: int):
        self.capacity = capacity              # groups per fold: slots made at once
        self.groups: list[np.ndarray] = []   # to fold, in order
        self._slot: list[bool] = []           # groups[i] is one of the buffer's slots
        self._give_back: list[np.ndarray | None] = []   # the caller's array, or None
        self._slots: list[np.ndarray] = []    # free copy slots
        self._released: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.groups)

    def accepts(self, group: np.ndarray) -> bool:
        """Whether ``group`` can join the buffered ones (same dtype and shape)."""
        if not self.groups:
            return True
        first = self.groups[0]
        return group.dtype == first.dtype and group.shape == first.shape

    def add(self, group: np.ndarray, *, keep: bool = False,
            give_back: np.ndarray | None = None) -> None:
        """Buffer ``group`` (C-contiguous, float32/float64): a copy into a slot,
        or with ``keep`` the array itself; ``give_back``: the caller's array
        that :meth:`released` returns once the group is folded."""
        if not self.accepts(group):
            raise ValueError(f"group {group.shape} {group.dtype} joins buffered groups "
                             f"{self.groups[0].shape} {self.groups[0].dtype}: flush first")
        if not keep:
            slot = self._take_slot(group)
            copy_group(slot, group)
            group = slot
        self.groups.append(group)
        self._slot.append(not keep)
        self._give_back.append(give_back)

    def hand_back(self, array: np.ndarray) -> None:
        """``array`` (a caller's, folded without buffering) for :meth:`released`."""
        self._released.append(array)

    def _take_slot(self, group: np.ndarray) -> np.ndarray:
        for i, slot in enumerate(self._slots):
            if slot.shape == group.shape and slot.dtype == group.dtype:
                return self._slots.pop(i)
        # the first copy (or another dtype): every slot a batch can need, at
        # once, so that no later update allocates
        in_use = sum(self._slot)
        self._slots = [np.empty(group.shape, dtype=group.dtype)
                       for _ in range(max(self.capacity - in_use - 1, 0))]
        return np.empty(group.shape, dtype=group.dtype)

    def clear(self) -> None:
        """Forget the buffered groups (they were folded): slots become free,
        handed-over arrays wait in :meth:`released`."""
        for group, slot, give_back in zip(self.groups, self._slot, self._give_back,
                                          strict=True):
            if slot:
                self._slots.append(group)
            if give_back is not None:
                self._released.append(give_back)
        self.groups.clear()
        self._slot.clear()
        self._give_back.clear()

    def drop(self) -> None:
        """Free the buffer's memory once nothing is buffered: its copy slots
        and the folded arrays :meth:`released` has not given back."""
        if self.groups:
            raise ValueError(f"{len(self.groups)} group(s) buffered: fold them before drop()")
        self._slots = []
        self._released = []

    def released(self) -> list[np.ndarray]:
        """The handed-over arrays folded since the last call: the caller's again."""
        out, self._released = self._released, []
        return out

    @property
    def nbytes(self) -> int:
        """Bytes the buffer holds: its slots, free or in use, and the
        handed-over arrays not yet folded."""
        return (sum(a.nbytes for a in self.groups)
                + sum(a.nbytes for a in self._slots))
