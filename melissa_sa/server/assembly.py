"""Group assembly: buffer a group's rows of one time step until every member sent it.

With Sobol' indices a group's time step is folded only when all its members
(A, B, C_k[, D_k]) have sent it over this rank's slice. Until then the rows
that arrived wait here, one buffer per ``(group, field, time step)``, **in
the dtype they arrived in** (float32 stays float32; a buffer is promoted to
float64 only if a member sends float64 into a float32 buffer).

Bound: one buffer holds ``group_size x local_cells x itemsize`` bytes, and
buffers exist only for the groups in flight (``launcher_config.job_limit /
group_size + 1`` groups, see :mod:`melissa_sa.server.study_state`), per field
and per time step that some member has sent and another has not yet. When a
group's members run together (the launcher starts them together where
``job_limit`` allows) that is a few steps; in the worst case (one member
runs only after the others ended) it is every time step of the group:
``groups_in_flight x n_fields x n_time_steps x group_size x local_cells x
itemsize``. :attr:`GroupAssembler.buffered_bytes` reports the current size.

Reuse: every buffer is leased from a :class:`~melissa_sa.stats.row_pool.RowPool`
(:attr:`GroupAssembler.pool`). A complete group's rows go to the statistics,
which give them back to that pool once folded
(:meth:`melissa_sa.server.field_stats.StepStatistics.fold_group`); the next
group of the same shape and dtype is assembled into them. With Sobol' the
accumulator folds the rows themselves, without a copy, and gives a batch of
``fold_batch`` groups back at once after its fold, so the server's pool keeps
``fold_batch`` more spares than :data:`SPARE_BUFFERS`. A fresh ``np.empty``
of that size is a new mapping whose pages the kernel faults in and zeroes on
first write: copying a 10^6-cell float64 message into one cost 8.4 ms (about
1 GB/s, measured in the server's profile, ``benchmarks/e2e.py --profile``),
into a reused one it is a plain copy. The pool keeps as many free buffers
as the assembler and the fold held at once at their busiest (several groups
in flight: 8 of 30 leases were new arrays with a fixed number of spares in
the Sobol' ingest of ``benchmarks/e2e.py``), so a steady stream of groups
reuses them all. The free buffers' bytes count in
:attr:`GroupAssembler.buffered_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from melissa_sa.stats.row_pool import RowPool

__all__ = ["GroupAssembler", "Overlap", "SPARE_BUFFERS"]

#: free group buffers kept for reuse (one per field in flight is the
#: common case; more would only hold memory)
SPARE_BUFFERS = 2


class Overlap(ValueError):  # noqa: N818 - a condition, not a failure
    """The cells of a message were already received for that member (a duplicate)."""


@dataclass(slots=True)
class _Buffer:
    rows: np.ndarray                                   # (group_size, n_cells)
    filled: list[int]                                  # cells received per member
    pieces: list[list[tuple[int, int]]] = field(default_factory=list)
    complete: int = 0                                  # members with every cell


class GroupAssembler:
    """The open buffers of this rank, keyed by ``(group_id, field_id, time_step)``,
    leased from ``pool`` (default: a pool of :data:`SPARE_BUFFERS` spares)."""

    def __init__(self, group_size: int, pool: RowPool | None = None):
        self.group_size = group_size
        self.pool = RowPool(SPARE_BUFFERS) if pool is None else pool
        self._buffers: dict[tuple[int, int, int], _Buffer] = {}

    def add(self, key: tuple[int, int, int], member: int, start: int, values: np.ndarray,
            n_cells: int) -> np.ndarray | None:
        """Put ``values`` at cells ``[start, start + len)`` of row ``member``.

        Returns the complete ``(group_size, n_cells)`` rows when this message
        completes the group's time step, else None: the caller holds the
        lease of those rows and gives them back to :attr:`pool` once done.
        Raises :class:`Overlap` if those cells were already received.
        """
        buf = self._buffers.get(key)
        if buf is None:
            buf = _Buffer(self.pool.lease((self.group_size, n_cells), values.dtype),
                          [0] * self.group_size, [[] for _ in range(self.group_size)])
            self._buffers[key] = buf
        stop = start + values.size
        for a, b in buf.pieces[member]:
            if start < b and a < stop:
                raise Overlap(f"cells [{start}, {stop}) overlap [{a}, {b}) already received")
        if values.dtype != buf.rows.dtype:
            self._promote(buf, values.dtype)
        buf.rows[member, start:stop] = values
        buf.pieces[member].append((start, stop))
        buf.filled[member] += values.size
        if buf.filled[member] == n_cells:
            buf.complete += 1
            if buf.complete == self.group_size:
                del self._buffers[key]
                return buf.rows
        return None

    def _promote(self, buf: _Buffer, dtype: np.dtype) -> None:
        """Widen ``buf`` to hold ``dtype`` too (float32 rows meet float64 ones):
        the wider rows are leased from :attr:`pool`, the narrower given back."""
        wider = np.result_type(buf.rows.dtype, dtype)
        if wider != buf.rows.dtype:
            rows = self.pool.lease(buf.rows.shape, wider)
            rows[...] = buf.rows
            self.pool.give_back(buf.rows)
            buf.rows = rows

    def member_complete(self, key: tuple[int, int, int], member: int) -> bool:
        """True if the open buffer ``key`` holds every cell of ``member``'s row
        (received, waiting for a sibling); False if no buffer is open."""
        buf = self._buffers.get(key)
        return buf is not None and buf.filled[member] == buf.rows.shape[1]

    def drop_group(self, group_id: int) -> None:
        """Forget the buffered, unfolded data of an abandoned group (its
        buffers go back to :attr:`pool`)."""
        for key in [k for k in self._buffers if k[0] == group_id]:
            self._release(key)

    def drop_partial_rows(self, group_id: int, field_id: int, member: int) -> int:
        """Forget ``member``'s incomplete rows of ``field_id`` in every open buffer
        of ``group_id`` (its run was restarted: the rerun sends them again, maybe
        cut into other pieces); complete rows stay. A buffer left empty goes back
        to :attr:`pool`. Returns the number of rows forgotten."""
        forgotten = 0
        for key in [k for k in self._buffers if k[0] == group_id and k[1] == field_id]:
            buf = self._buffers[key]
            if 0 < buf.filled[member] < buf.rows.shape[1]:
                buf.filled[member] = 0
                buf.pieces[member] = []
                forgotten += 1
                if not any(buf.filled):
                    self._release(key)
        return forgotten

    def _release(self, key: tuple[int, int, int]) -> None:
        """Close the open buffer ``key`` unfolded: its rows go back to :attr:`pool`."""
        self.pool.give_back(self._buffers.pop(key).rows)

    def __len__(self) -> int:
        return len(self._buffers)

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the open buffers and of the pool's free ones."""
        return sum(b.rows.nbytes for b in self._buffers.values()) + self.pool.nbytes
