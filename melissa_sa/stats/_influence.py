"""The aggregated indices' influence sums a :class:`~melissa_sa.stats.SobolMartinez`
adds while it folds its groups (``update(group, influence=(out, row))``).

:class:`~melissa_sa.stats.sobol_aggregated.SobolAggregatedInterval` needs,
for each counted group, sums over the cells computed with the Martinez state
as it was *before* that group. Rather than fold the group buffer and pass
over the state for the sums, then fold the group (two passes per group), the
SobolMartinez keeps, per buffered group, the row of the batch-sum array the
group's sums go to, and its batched fold adds them on the way
(:func:`~melissa_sa.kernels.sobol.martinez_update_many_influence`: one pass
over the state for ``fold_batch`` groups and their sums). The sums and the
state are those of the two-pass path, bit for bit.
"""

from __future__ import annotations

import numpy as np

from melissa_sa.kernels.sobol import (
    CHUNK,
    aggregated_influence,
    group_tuple,
    martinez_update_many_influence,
)


class InfluenceBuffer:
    """Which of a SobolMartinez's buffered groups add influence sums, and where.

    ``rows[slot]``: the row of :attr:`out` (the ``(n_batches, 4, p)`` batch
    sums) that the group in buffer slot ``slot`` adds its sums to, -1 for
    none. One ``out`` array at a time (a group for another array waits
    until the pending ones are added). The kernels' scratch,
    ``(fold_batch, ceil(n_cells / 256), 4, p)`` float64, is made on the
    first group registered.
    """

    def __init__(self, n_cells: int, n_params: int, fold_batch: int):
        self.n_cells = n_cells
        self.n_params = n_params
        self.rows = np.full(fold_batch, -1, dtype=np.int64)
        self.out = None
        self._partial = None

    def check(self, influence, n: int) -> tuple[np.ndarray, int]:
        """``influence`` as ``(out, row)``, checked; ``n``: groups before this one."""
        try:
            out, row = influence
        except (TypeError, ValueError):
            raise ValueError(f"influence must be a pair (out, row), got {influence!r}") from None
        shape = (4, self.n_params)
        if (not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.ndim != 3
                or out.shape[1:] != shape or not out.flags.c_contiguous
                or not out.flags.writeable):
            raise ValueError(f"influence out must be a writeable C-contiguous float64 array "
                             f"(n_batches, 4, {self.n_params}), got "
                             f"{getattr(out, 'shape', type(out))}")
        if isinstance(row, bool) or int(row) != row or not 0 <= int(row) < out.shape[0]:
            raise ValueError(f"influence row must be an integer in [0, {out.shape[0]}), "
                             f"got {row!r}")
        if n < 2:
            raise ValueError(f"influence sums need the state of at least 2 groups, this "
                             f"group comes after {n}")
        return out, int(row)

    def partial(self) -> np.ndarray:
        if self._partial is None:
            chunks = -(-self.n_cells // CHUNK)
            self._partial = np.zeros((len(self.rows), chunks, 4, self.n_params))
        return self._partial

    @property
    def nbytes(self) -> int:
        return 0 if self._partial is None else self._partial.nbytes

    def register(self, slot: int, influence) -> bool:
        """Record that the group in ``slot`` adds its sums to ``influence``'s
        row; False (nothing recorded) while sums for another array are pending."""
        out, row = influence
        if self.out is not out and self.pending(len(self.rows)):
            return False
        self.partial()
        self.out = out
        self.rows[slot] = row
        return True

    def pending(self, stop: int, start: int = 0) -> bool:
        """Whether a group in slots ``[start, stop)`` has sums to add."""
        return bool((self.rows[start:stop] >= 0).any())

    def fold(self, state, groups, start: int, stop: int, n: int) -> None:
        """Fold ``groups[start:stop]`` (a list of arrays; slots
        ``start..stop-1``, at most ``GROUP_TUPLE``, ``n`` groups folded before
        them) into the full ``state``, adding the sums on the way."""
        martinez_update_many_influence(state, group_tuple(groups[start:stop]), n,
                                       self.rows[start:stop], self.partial(), self.out,
                                       stop - start)

    def clear(self, m: int) -> None:
        """The first ``m`` slots were folded: their sums are added."""
        self.rows[:m] = -1

    def add_now(self, state, group, n: int, influence) -> None:
        """Add one group's sums with ``state`` as it is (``n`` groups): the
        two-pass path of a compact state."""
        out, row = influence
        aggregated_influence(state, group, n, self.n_params, row, self.partial()[0], out)
