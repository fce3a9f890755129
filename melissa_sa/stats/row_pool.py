"""A pool of row buffers: arrays leased by one owner and given back by another.

The server assembles a pick-freeze group's rows (one row per member, one
column per cell of the rank's slice) into a buffer it *leases* from a
:class:`RowPool` (:class:`melissa_sa.server.assembly.GroupAssembler`). The
complete rows go to the Sobol' accumulator, which folds them from where they
are, without a copy, and *gives them back* to the pool once they are folded
(:meth:`melissa_sa.stats.SobolMartinez.update` with ``pool=``); a later group
is assembled into them. Whoever holds a leased array may write to it; once it
is given back, nobody may.

Why reuse: a fresh ``np.empty`` of a 10^6-cell slice is a new mapping whose
pages the kernel faults in and zeroes on first write (about 1 GB/s,
``benchmarks/e2e.py --profile``); a reused one is a plain copy. The pool
bounds memory, not the number of leases: free arrays wait up to ``spares``,
or, when more were leased at once earlier (several groups in flight), up to
that high-water mark less the arrays leased now (the oldest goes first). So
the arrays leased and free together never exceed what the pool's owner
already held at its busiest moment (or the leased ones plus ``spares``), and
a steady stream of groups finds its buffers free instead of faulting in new
ones. An array whose holder drops it instead of giving it back still counts
as leased: such a holder should give it back (the assembler does, for a
group it abandons).

>>> import numpy as np
>>> pool = RowPool(spares=2)
>>> rows = pool.lease((3, 4), np.float32)     # none free: a new array
>>> pool.give_back(rows)
>>> len(pool), pool.nbytes
(1, 48)
>>> pool.lease((3, 4), np.float32) is rows   # the same shape and dtype: reused
True
>>> pool.lease((3, 4), np.float64) is rows
False
"""

from __future__ import annotations

import numpy as np

__all__ = ["RowPool"]


class RowPool:
    """Free row buffers, reused by shape and dtype; at most ``spares`` kept."""

    def __init__(self, spares: int):
        if isinstance(spares, bool) or int(spares) != spares or spares < 0:
            raise ValueError(f"spares must be an integer >= 0, got {spares!r}")
        self.spares = int(spares)
        self._free: list[np.ndarray] = []
        #: arrays leased and not given back yet, and the most ever at once
        self.leased = self.peak_leased = 0

    def lease(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A C-contiguous array of ``shape`` and ``dtype``, a free one if the
        pool holds one (its values are stale: write every cell), else new."""
        shape = tuple(shape)
        dtype = np.dtype(dtype)
        self.leased += 1
        self.peak_leased = max(self.peak_leased, self.leased)
        for i, rows in enumerate(self._free):
            if rows.shape == shape and rows.dtype == dtype:
                return self._free.pop(i)
        return np.empty(shape, dtype=dtype)

    def give_back(self, rows: np.ndarray) -> None:
        """``rows`` is free again (its holder keeps no reference to write
        through); beyond :attr:`free_limit` free arrays the oldest is dropped."""
        self.leased = max(0, self.leased - 1)
        if self.spares == 0:
            return
        if len(self._free) >= self.free_limit:
            self._free.pop(0)
        self._free.append(rows)

    @property
    def free_limit(self) -> int:
        """Free arrays kept at most now: ``spares``, or the high-water mark of
        leases less the arrays leased now if that is more (none once closed)."""
        if self.spares == 0:
            return 0
        return max(self.spares, self.peak_leased - self.leased)

    def drop(self) -> None:
        """Forget the free arrays (their memory goes back to the system)."""
        self._free = []

    def close(self) -> None:
        """Forget the free arrays and keep none given back from now on (no
        lease will come: e.g. the study's groups are all in)."""
        self._free = []
        self.spares = 0

    def __len__(self) -> int:
        """Free arrays waiting for a lease."""
        return len(self._free)

    @property
    def nbytes(self) -> int:
        """Bytes of the free arrays."""
        return sum(rows.nbytes for rows in self._free)

    def __repr__(self) -> str:
        return (f"RowPool(spares={self.spares}; {len(self._free)} free, {self.nbytes} bytes, "
                f"{self.leased} leased, at most {self.peak_leased} at once)")
