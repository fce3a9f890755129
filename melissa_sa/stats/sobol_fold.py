"""Fold pick-freeze groups into a Martinez state, as one-by-one updates would.

:func:`fold_groups` is the one fold of :class:`~melissa_sa.stats.SobolMartinez`:
the groups of a batch (its buffer, or one group) go to the batched kernels
(:func:`~melissa_sa.kernels.sobol.martinez_update_many`, up to
:data:`~melissa_sa.kernels.sobol.GROUP_TUPLE` arrays per call, folded from
where they are), cut at the counts of :data:`RECENTRE_AT`, where every cell's
shift moves to A's running mean (the power sums of a full state are best
conditioned about the mean; a compact state moves too, so that both keep the
same block 1). The state is that of one-group updates, bit for bit. With
``influence`` (an :class:`~melissa_sa.stats._influence.InfluenceRows`), the
flagged groups' influence sums are added on the way, in the same pass.

Why batches: folding one group reads and writes the whole state (912 bytes
per cell at ``p = 3``) for 40 bytes of input, so the fold is bound by that
traffic; ``m`` groups in one pass cost ``912 / m + 40`` bytes each. The
SobolMartinez buffer holds ``fold_batch (p + 2)`` samples per cell in the
groups' dtype when it copies them (160 bytes per cell for float64 at
``p = 3`` and ``fold_batch = 4``, 80 for float32), nothing when it folds
leased row buffers in place. ``fold_batch = 1`` folds each group at once,
without a copy; it is the default with second order (the second-order
interval's plug-in reads the first-order state, which then holds every
earlier group; with a larger ``fold_batch`` the plug-in is up to
``fold_batch - 1`` groups older).
"""

from __future__ import annotations

import numpy as np

from melissa_sa.kernels.sobol import (
    GROUP_TUPLE,
    group_tuple,
    martinez_update,
    martinez_update_compact,
    martinez_update_many,
    martinez_update_many_compact,
)
from melissa_sa.kernels.sobol_centred import martinez_recentre

__all__ = ["RECENTRE_AT", "FOLD_BATCH", "fold_batch_for", "fold_groups"]

#: group counts after which the shift moves to A's running mean
RECENTRE_AT = (2, 16, 256)
#: groups buffered per fold of a full (``ci="delta"``) state, and of a compact
#: one (``ci="fisher"``): measured, see ``docs/performance.md``
FOLD_BATCH = {"delta": 4, "fisher": 1}


def fold_batch_for(ci: str, second_order: bool, fold_batch: int | None = None):
    """The groups a :class:`~melissa_sa.stats.SobolMartinez` buffers per fold: ``fold_batch`` if
    given, else :data:`FOLD_BATCH` for ``ci``, and 1 with second order (its
    interval's plug-in reads the first-order state, which must then hold
    every earlier group, whatever else flushes the buffer)."""
    if fold_batch is not None:
        return fold_batch
    return 1 if second_order else FOLD_BATCH[ci]


def fold_groups(state: np.ndarray, groups: list[np.ndarray], n: int, n_params: int,
                full: bool, influence=None) -> None:
    """Fold ``groups`` (``(p + 2, n_cells)`` arrays of one dtype, the next
    ones in order) into ``state``, which holds ``n`` groups; ``full``: the
    state has block 2 (``ci="delta"``). ``influence``: the rows of the
    groups' influence sums (slot ``i`` for ``groups[i]``), cleared once added."""
    done = 0
    m = len(groups)
    many = martinez_update_many if full else martinez_update_many_compact
    one = martinez_update if full else martinez_update_compact
    infl = influence if influence is not None and influence.pending(m) else None
    while done < m:
        stop = min(m, done + GROUP_TUPLE)
        for count in RECENTRE_AT:
            if n < count < n + (stop - done):
                stop = done + count - n
                break
        if infl is not None and infl.pending(stop, done):
            infl.fold(state, groups, done, stop, n)
        elif stop - done == 1:
            one(state, groups[done], n)
        else:
            many(state, group_tuple(groups[done:stop]), n, stop - done)
        n += stop - done
        done = stop
        if n in RECENTRE_AT:
            martinez_recentre(state, n, n_params)
    if infl is not None:
        infl.clear(m)
