"""Martinez pick-freeze Sobol' indices with confidence intervals, per cell.

Around :class:`SobolMartinez`: the group check (:mod:`.sobol_group`), the
results read from the state (:mod:`.sobol_results`), the influence sums
added by the fold (:mod:`._influence`), the checkpoint format
(:mod:`.sobol_checkpoint`), the whole-field indices
(:mod:`.sobol_aggregated`), second order (:mod:`.sobol_second`).
"""

from __future__ import annotations

import itertools

import numpy as np

from melissa_sa.kernels.sobol import (
    GROUP_TUPLE,
    group_tuple,
    martinez_update,
    martinez_update_compact,
    martinez_update_many,
    martinez_update_many_compact,
    row_width,
)
from melissa_sa.kernels.sobol_centred import martinez_merge, martinez_recentre
from melissa_sa.stats._influence import InfluenceBuffer
from melissa_sa.stats.base import Statistic
from melissa_sa.stats.sobol_aggregated import aggregate_indices
from melissa_sa.stats.sobol_buffer import GroupBuffer
from melissa_sa.stats.sobol_checkpoint import load_martinez, save_martinez
from melissa_sa.stats.sobol_group import as_group
from melissa_sa.stats.sobol_results import MartinezResults
from melissa_sa.stats.sobol_second import SecondOrderState, check_second_order

__all__ = ["SobolMartinez", "as_group", "aggregate_indices", "fold_batch_for", "RECENTRE_AT",
           "FOLD_BATCH"]

#: group counts after which the shift moves to A's running mean
RECENTRE_AT = (2, 16, 256)
#: groups buffered per fold of a full (``ci="delta"``) state, and of a compact
#: one (``ci="fisher"``): measured, see ``docs/performance.md``
FOLD_BATCH = {"delta": 4, "fisher": 1}


def fold_batch_for(ci: str, second_order: bool, fold_batch: int | None = None):
    """The groups a :class:`SobolMartinez` buffers per fold: ``fold_batch`` if
    given, else :data:`FOLD_BATCH` for ``ci``, and 1 with second order (its
    interval's plug-in reads the first-order state, which must then hold
    every earlier group, whatever else flushes the buffer)."""
    if fold_batch is not None:
        return fold_batch
    return 1 if second_order else FOLD_BATCH[ci]


class SobolMartinez(MartinezResults, Statistic):
    r"""First- and total-order Sobol' indices by Martinez' estimator, per cell.

    **Definitions.** For an output ``Y = f(X_1, .., X_p)`` with independent
    inputs, the first-order index of ``X_k`` is
    ``S_k = Var(E[Y | X_k]) / Var(Y)`` and the total-order index is
    ``ST_k = E[Var(Y | X_~k)] / Var(Y)`` (``X_~k``: all inputs but ``X_k``).

    **Design.** Each update is one pick-freeze group of ``p + 2`` runs: two
    independent input draws ``A`` and ``B``, and for each ``k`` the run
    ``C_k``, which is ``A`` with its column ``k`` taken from ``B``. ``group``
    has shape ``(p + 2, n_cells)`` with rows ``Y_A, Y_B, Y_C1 .. Y_Cp``.

    **Estimator** (Martinez 2011; the formulas of Melissa, Terraz et al.
    2017), over the ``n`` groups seen::

        S_k  = corr(Y_B, Y_Ck)            (Y_B and Y_Ck share only X_k)
        ST_k = 1 - corr(Y_A, Y_Ck)        (Y_A and Y_Ck share all but X_k)

    with ``corr`` the sample Pearson correlation. The estimates are not
    clipped: sampling noise can put ``S_k`` slightly below 0 when the true
    index is 0. The correlations are computed from one-pass, numerically
    stable centred co-moments (shifted Welford updates on deviations; see
    :mod:`melissa_sa.kernels.sobol`), so outputs with a large offset
    (``1e9 + noise``) lose no accuracy, and two partial states merge
    exactly (Chan's pairwise formulas). The interval's fourth-order
    co-moments are power sums of the cell-shifted values (multiply-adds
    only), centred at finalisation.

    **Constant cells.** A pair whose sample variance is zero on either side
    (a constant cell, or fewer than two groups) has an undefined correlation;
    its index is 0 and its interval the degenerate ``[0, 0]``. Never NaN, no
    warning. (A NaN *sample* does propagate: the pairs of that cell it
    touches give NaN from then on; other cells are unaffected.)

    **Confidence intervals** (``confidence_interval(level, method)``), for
    the correlation ``r`` of each pair, then mapped to ``S_k = r`` and
    ``ST_k = 1 - r``:

    * ``"delta"`` (default): asymptotic delta-method standard error of a
      sample correlation for *any* law of the pair (not only bivariate
      normal), ``se_r = sqrt(V / (n - 3))`` with
      ``V = r22 (1 + r^2/2) - r (r31 + r13) + r^2/4 (r40 + r04)`` and
      ``rij`` the standardised mixed moments ``E[x~^i y~^j]`` of the pair
      (e.g. Ferguson, *A Course in Large Sample Theory*, 1996, ch. 8), put
      on Fisher's z scale: ``z = atanh(r) +- q se_r / (1 - r^2)``, mapped back
      with ``tanh``. For a bivariate normal pair ``V = (1 - r^2)^2`` and
      this *is* Fisher's interval; the z scale keeps the bounds inside
      ``[-1, 1]`` and improves coverage at small ``n``.
    * ``"fisher"``: Fisher's z transform, ``atanh(r) +- q / sqrt(n - 3)``,
      as in Melissa. Exact only for bivariate normal pairs: pick-freeze pairs
      are not, and its coverage at nominal 95 % ranges from about 78 % to
      96 % on Ishigami, whatever ``n``.
    * ``"delta-linear"``: ``r +- q se_r`` (same ``se_r`` as ``"delta"``,
      no transform); for comparison.

    ``"delta"`` needs the fourth-order co-moments, kept when the object is
    built with ``ci="delta"`` (the default); ``ci="fisher"`` keeps only
    what the estimates and Fisher's interval need. Measured coverage
    (``benchmarks/sobol_coverage.py``): ``"delta"`` is within 93-97 % for
    every Ishigami index at ``n >= 1000`` groups. With fewer than 4 groups
    every non-degenerate interval is the whole range (``[-1, 1]`` for
    ``S_k``, ``[0, 2]`` for ``ST_k``).

    **Second order** (``second_order=True``, ``p >= 2``): groups of
    ``2p + 2`` rows, ``Y_D1 .. Y_Dp`` after the ``C_k`` (``D_k``: ``B`` with
    column ``k`` from ``A``), and ``S_ij = corr(Y_Ci, Y_Dj) - S_i - S_j``
    (:attr:`second_order`, pairs in :attr:`pairs` order) with a
    prequential influence-function interval; the first- and total-order
    state is untouched. See :mod:`melissa_sa.stats.sobol_second`.

    **Memory** (float64, per cell): ``8 (9 + 16 p)`` bytes with
    ``ci="delta"`` (456 at ``p = 3``), ``8 (5 + 4 p)`` with ``ci="fisher"``
    (136 at ``p = 3``); second order adds ``8 (2 + 3 p + p (p - 1))``
    (136 at ``p = 3``); plus the group buffer below.

    **Batched fold** (``fold_batch``, default :data:`FOLD_BATCH`: 4 for
    ``ci="delta"``, 1 for ``ci="fisher"``). Folding one group reads and
    writes the whole state (912 bytes per cell at ``p = 3``) for 40 bytes of
    input: the fold is bound by that traffic. So :meth:`update` copies each
    group into a buffer of ``fold_batch`` groups and folds them together, in
    one pass over the state (:func:`~melissa_sa.kernels.sobol.martinez_update_many`:
    the same operations as one-by-one updates, bit for bit). The buffer
    holds ``fold_batch (p + 2)`` samples per cell in the groups' dtype (160
    bytes per cell for float64 at ``p = 3`` and ``fold_batch = 4``, 80 for
    float32), made on the first update. :attr:`count` includes the buffered
    groups, and every result, :meth:`merge` and :meth:`save` folds them
    first, so buffering is invisible but for speed. ``fold_batch=1`` folds
    each group at once, without a copy; it is the default with
    ``second_order=True`` (the second-order interval's plug-in reads the
    first-order state, which then holds every earlier group; with a larger
    ``fold_batch`` the plug-in is up to ``fold_batch - 1`` groups older).
    The aggregated indices' interval
    (:class:`~melissa_sa.stats.sobol_aggregated.SobolAggregatedInterval`)
    has a full state add its influence sums during this fold
    (``update(group, influence=...)``,
    :func:`~melissa_sa.kernels.sobol.martinez_update_many_influence`); a
    compact state (``fold_batch`` 1 by default) adds them in a pass of
    their own before the fold.

    References: J.-M. Martinez, "Analyse de sensibilité globale par
    décomposition de la variance", GdR Ondes & Mascot Num, 2011.
    M. Baudin et al., "Numerical stability of Sobol' indices estimation
    formula", SAMO 2016. T. Terraz et al., "Melissa: large scale in transit
    sensitivity analysis avoiding intermediate files", SC'17, 2017.
    P. Pébay, SAND2008-6212, 2008.

    Example: cell 0 is ``Y = X1 + 2 X2`` (``S = ST = (0.2, 0.8, 0)``), cell 1
    is ``Y = X3`` and cell 2 is constant.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> s = SobolMartinez(n_cells=3, n_params=3)
    >>> for _ in range(2000):
    ...     a, b = rng.random(3), rng.random(3)
    ...     runs = [a, b] + [np.where(np.arange(3) == k, b, a) for k in range(3)]
    ...     s.update(np.array([[x[0] + 2 * x[1], x[2], 5.0] for x in runs]))
    >>> s.count
    2000
    >>> s.first_order.round(1)
    array([[0.2, 0. , 0. ],
           [0.8, 0. , 0. ],
           [0. , 1. , 0. ]])
    >>> s.total_order.round(1)
    array([[0.2, 0. , 0. ],
           [0.8, 0. , 0. ],
           [0. , 1. , 0. ]])
    >>> (low, high), _ = s.confidence_interval(0.95)
    >>> bool(low[0, 0] < 0.2 < high[0, 0]), float(high[0, 2] - low[0, 2])
    (True, 0.0)
    """

    def __init__(self, n_cells: int, n_params: int, *, ci: str = "delta",
                 second_order: bool = False, fold_batch: int | None = None):
        if isinstance(n_cells, bool) or int(n_cells) != n_cells or int(n_cells) < 1:
            raise ValueError(f"n_cells must be a positive integer, got {n_cells!r}")
        if isinstance(n_params, bool) or int(n_params) != n_params or int(n_params) < 1:
            raise ValueError(f"n_params must be a positive integer, got {n_params!r}")
        if ci not in ("delta", "fisher"):
            raise ValueError(f"ci must be 'delta' or 'fisher', got {ci!r}")
        fold_batch = fold_batch_for(ci, second_order, fold_batch)
        if (isinstance(fold_batch, bool) or not isinstance(fold_batch, (int, np.integer))
                or fold_batch < 1):
            raise ValueError(f"fold_batch must be a positive integer, got {fold_batch!r}")
        self.n_cells = int(n_cells)
        self.n_params = int(n_params)
        self.ci = ci
        self.has_second_order = check_second_order(second_order, self.n_params)
        self.fold_batch = int(fold_batch)
        self._n = 0          # groups received (folded or buffered)
        self._folded = 0     # groups folded into the state
        self._buffer = GroupBuffer(self.fold_batch)   # received, not yet folded
        self._influence = InfluenceBuffer(self.n_cells, self.n_params, self.fold_batch)
        width = row_width(self.n_params, full=ci == "delta")
        self._state = np.zeros((self.n_cells, width), dtype=np.float64)
        self._second = (SecondOrderState(self.n_cells, self.n_params)
                        if self.has_second_order else None)

    def __repr__(self) -> str:
        return (f"SobolMartinez(n_cells={self.n_cells}, n_params={self.n_params}, "
                f"ci={self.ci!r}, second_order={self.has_second_order}; "
                f"{self._n} groups)")

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Parameter pairs ``(i, j)``, ``i < j``, in ``itertools.combinations`` order."""
        return list(itertools.combinations(range(self.n_params), 2))

    @property
    def n_pairs(self) -> int:
        return self.n_params * (self.n_params - 1) // 2

    # -- streaming -------------------------------------------------------
    def update(self, group, fold_now: bool = False, influence=None, *,
               handed_over: bool = False) -> None:
        """Fold one pick-freeze group, shape ``(n_params + 2, n_cells)``.

        Rows are ``Y_A, Y_B, Y_C1 .. Y_Cp`` (then ``Y_D1 .. Y_Dp`` with
        second order: ``2 n_params + 2`` rows), float32 or float64. With
        ``fold_batch = 1`` the group is folded at once, without a copy;
        otherwise it is buffered, and the buffer is folded when full
        (every read, merge and save folds what is buffered first). The
        second-order sums are folded at once (they keep their own means).
        ``handed_over``: the buffer keeps ``group`` itself instead of a copy
        (:mod:`melissa_sa.stats.sobol_buffer`); the caller must not write to
        it until :meth:`released` returns it. ``fold_now``: fold what is
        buffered and this group at once, without buffering it (for a caller
        that reads the state before the next group anyway); the state is
        bit for bit the same either way.

        ``influence=(out, row)``: also add this group's influence sums for
        the aggregated indices' interval into ``out[row]`` (``out``: a
        ``(n_batches, 4, n_params)`` float64 array, the batch sums of
        :class:`~melissa_sa.stats.sobol_aggregated.SobolAggregatedInterval`,
        which passes them), computed with the state before this group (at
        least 2 groups). A full state adds them while it folds the group
        (buffered or not: one pass for both); a compact one folds its buffer,
        adds them, then folds the group. :attr:`influence_pending` tells
        whether some are still to be added (every fold adds them).
        """
        given = group
        group = as_group(group, self.n_params, self.n_cells, self.has_second_order)
        private = group is not given   # converted by as_group: a copy of our own
        if influence is not None:
            influence = self._influence.check(influence, self._n)
        if self._second is not None:
            # reads the first-order state as it is (``_folded`` groups)
            self._second.fold(self._state, group, self._n, self._folded)
            group = group[:self.n_params + 2]
        if influence is not None and self.ci != "delta":
            self._flush()   # the compact state: two passes, the sums first
            self._influence.add_now(self._state, group, self._n, influence)
            influence = None
        give_back = given if handed_over else None
        if self.fold_batch == 1 or fold_now:
            self._flush()
            if influence is not None:
                self._influence.register(0, influence)
            self._fold([group])
            if give_back is not None:
                self._buffer.hand_back(give_back)
            return
        if not self._buffer.accepts(group):
            self._flush()   # another dtype: the kernels take one dtype per call
        slot = len(self._buffer)
        if influence is not None and not self._influence.register(slot, influence):
            self._flush()   # sums for another array pending: add them first
            slot = 0
            self._influence.register(slot, influence)
        self._buffer.add(group, keep=handed_over or private, give_back=give_back)
        self._n += 1
        if self._n - self._folded == self.fold_batch or self._n in RECENTRE_AT:
            self._flush()

    def trim(self) -> None:
        """Fold what is buffered, then free the buffer's memory (its copy
        slots, the handed-over arrays not taken back by :meth:`released`);
        the next update makes what it needs again. Finalisation calls it
        before writing, so that the results are written from the state
        alone."""
        self._flush()
        self._buffer.drop()

    def released(self) -> list[np.ndarray]:
        """The arrays given to :meth:`update` with ``handed_over=True`` that are
        folded now: the caller may write to them again (the server assembles
        later groups into them)."""
        return self._buffer.released()

    def update_many(self, groups) -> None:
        """Fold several groups at once: ``groups`` is ``(m, n_params + 2, n_cells)``
        (or a sequence of groups), in the order they count.

        Equivalent to ``m`` calls of :meth:`update`; the groups of an
        ``(m, p + 2, n_cells)`` C-contiguous float32/float64 array are folded
        from it directly, ``fold_batch`` at a time, without a copy.
        """
        if not isinstance(groups, np.ndarray):
            for group in groups:
                self.update(group)
            return
        rows = 2 * self.n_params + 2 if self.has_second_order else self.n_params + 2
        if groups.ndim != 3:
            raise ValueError(f"groups shape {groups.shape}, expected (m, {rows}, "
                             f"{self.n_cells}): one pick-freeze group per item")
        if groups.shape[0] == 0:
            return
        if (self.has_second_order or groups.dtype not in (np.float32, np.float64)
                or not groups.flags.c_contiguous
                or groups.shape[1:] != (self.n_params + 2, self.n_cells)):
            for group in groups:
                self.update(group)
            return
        self._flush()
        for lo in range(0, groups.shape[0], self.fold_batch):
            self._fold(list(groups[lo:lo + self.fold_batch]))

    def _fold(self, groups: list[np.ndarray]) -> None:
        """Fold the received-but-not-folded ``groups`` (``(p + 2, n_cells)``
        arrays of one dtype, the next groups in order) into the state,
        re-centring at the counts of :data:`RECENTRE_AT` as one-by-one
        updates would; the batched kernel takes up to :data:`GROUP_TUPLE`
        of them per call, from the arrays themselves."""
        done = 0
        m = len(groups)
        many = martinez_update_many if self.ci == "delta" else martinez_update_many_compact
        one = martinez_update if self.ci == "delta" else martinez_update_compact
        infl = self._influence if self._influence.pending(m) else None
        while done < m:
            stop = min(m, done + GROUP_TUPLE)
            for count in RECENTRE_AT:
                if self._folded < count < self._folded + (stop - done):
                    stop = done + count - self._folded
                    break
            if infl is not None and infl.pending(stop, done):
                infl.fold(self._state, groups, done, stop, self._folded)
            elif stop - done == 1:
                one(self._state, groups[done], self._folded)
            else:
                many(self._state, group_tuple(groups[done:stop]), self._folded, stop - done)
            self._folded += stop - done
            done = stop
            if self._folded in RECENTRE_AT:
                self._recentre()
        self._n = max(self._n, self._folded)
        if infl is not None:
            infl.clear(m)

    @property
    def influence_pending(self) -> bool:
        """Whether buffered groups still have influence sums to add
        (``update(..., influence=...)``): :meth:`flush` adds them."""
        return self._influence.pending(self._n - self._folded)

    def flush(self) -> None:
        """Fold the buffered groups now (results, merge and save do it anyway;
        a reader of the raw state, like :class:`SobolAggregatedInterval`,
        calls it first)."""
        self._flush()

    def _flush(self) -> None:
        """Fold the buffered groups (if any) into the state."""
        if len(self._buffer):
            self._fold(self._buffer.groups)
            self._buffer.clear()

    def _recentre(self) -> None:
        """Move each cell's shift to A's running mean: the power sums of a
        full state are best conditioned about the mean (a compact state
        moves too, so that both keep the same block 1)."""
        martinez_recentre(self._state, self._folded, self.n_params)

    def merge(self, other: SobolMartinez) -> None:
        """Fold ``other``'s groups in, as if this object had seen them too."""
        self._check_merge(other, n_cells=self.n_cells, n_params=self.n_params, ci=self.ci,
                          has_second_order=self.has_second_order)
        self._flush()
        other._flush()
        other_state = other._state.copy() if other is self else other._state
        if self._second is not None:
            self._second.merge(self._folded, other._second, other._folded)
        martinez_merge(self._state, self._folded, other_state,
                       other._folded, self.n_params)
        self._folded += other._folded
        self._n = self._folded

    # -- results ---------------------------------------------------------
    @property
    def count(self) -> int:
        """Number of groups received (the same for every cell), buffered ones
        included: every result folds the buffer first."""
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes of state held: ``8 * (9 + 16 p)`` or ``8 * (5 + 4 p)`` per
        cell, plus ``8 * (2 + 3 p + p (p - 1))`` with second order, plus the
        group buffer once made (``fold_batch (p + 2)`` samples per cell in the
        groups' dtype), plus the influence sums' scratch once made
        (``update(..., influence=...)``: ``32 p fold_batch`` bytes per 256 cells)."""
        extra = self._second.nbytes if self._second is not None else 0
        return (self._state.nbytes + extra + self._influence.nbytes
                + self._buffer.nbytes)

    # -- checkpoint ------------------------------------------------------
    def save(self, group) -> None:
        """Write the state into an h5py group (attribute ``layout``: the
        meaning of the row's slots, see :mod:`melissa_sa.kernels.sobol`).
        Buffered groups are folded first: the saved state holds every group
        received. ``fold_batch`` is not saved (it is a choice of speed, not
        part of the state)."""
        save_martinez(self, group)

    @classmethod
    def load(cls, group, *, fold_batch: int | None = None) -> SobolMartinez:
        """Rebuild a :class:`SobolMartinez` from a group written by :meth:`save`
        (``fold_batch``: as in the constructor).

        A state saved before layout 2 (no ``layout`` attribute: centred
        fourth-order sums) is converted; a newer layout is refused. A state
        saved without a ``second_order`` attribute is first-order only.
        """
        return load_martinez(cls, group, fold_batch)
