"""The aggregated indices' influence sums a :class:`~melissa_sa.stats.SobolMartinez`
adds while it folds its groups.

The aggregated interval (:class:`~melissa_sa.stats.sobol_aggregated.SobolAggregatedInterval`)
holds, per batch, sums over the cells computed with the Martinez state as it
was *before* each counted group. Rather than fold the group buffer and pass
over the state for the sums, then fold the group (two passes per group), the
SobolMartinez keeps, per buffered group, the row of the batch sums the
group's sums go to, and its batched fold adds them on the way
(:func:`~melissa_sa.kernels.sobol_influence.martinez_update_many_influence`:
one pass over the state for ``fold_batch`` groups and their sums). The sums
and the state are those of the two-pass path, bit for bit.
"""

from __future__ import annotations

import numpy as np

from melissa_sa.kernels.sobol import CHUNK, group_tuple
from melissa_sa.kernels.sobol_influence import (
    aggregated_influence,
    martinez_update_many_influence,
)


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

    def add_now(self, state, group, n: int, row: int) -> None:
        """Add one group's sums to row ``row`` with ``state`` as it is (``n``
        groups, at least 2): the two-pass path of a compact state."""
        aggregated_influence(state, group, n, self.n_params, row, self.partial()[0], self.out)
