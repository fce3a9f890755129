"""Martinez pick-freeze Sobol' indices with confidence intervals, per cell.

:class:`SobolMartinez` is the one Sobol' accumulator: it owns the Martinez
state, the buffer of groups not yet folded, the second-order state and the
aggregated indices' influence sums, and folds groups one way
(:meth:`SobolMartinez.update`). Its parts: the group check
(:mod:`.sobol_group`), the batched fold with its buffer (rows leased from a
:class:`~melissa_sa.stats.row_pool.RowPool`) and the influence rows of the
buffered groups (:mod:`.sobol_fold`), the results read from the state
(:mod:`.sobol_results`), the checkpoint format (:mod:`.sobol_checkpoint`),
the whole-field interval's batch sums (:mod:`.sobol_aggregated`), second
order (:mod:`.sobol_second`).
"""

from __future__ import annotations

import itertools

import numpy as np

from melissa_sa.kernels.sobol import row_width
from melissa_sa.kernels.sobol_centred import martinez_merge
from melissa_sa.stats import sobol_results
from melissa_sa.stats.base import Statistic
from melissa_sa.stats.row_pool import RowPool
from melissa_sa.stats.sobol_aggregated import SobolAggregatedInterval
from melissa_sa.stats.sobol_blocks import BlockedState
from melissa_sa.stats.sobol_checkpoint import read_martinez, restore_martinez, save_martinez
from melissa_sa.stats.sobol_fold import (
    RECENTRE_AT,
    GroupBuffer,
    InfluenceRows,
    fold_batch_for,
    fold_groups,
)
from melissa_sa.stats.sobol_group import as_group
from melissa_sa.stats.sobol_second import SecondOrderState, check_second_order

__all__ = ["SobolMartinez"]

class SobolMartinez(Statistic):
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

    **Constant cells**, **confidence intervals** (``"delta"``, the default,
    ``"fisher"``, ``"delta-linear"``): :mod:`melissa_sa.stats.sobol_results`.

    **Second order** (``second_order=True``, ``p >= 2``): groups of
    ``2p + 2`` rows, ``Y_D1 .. Y_Dp`` after the ``C_k`` (``D_k``: ``B`` with
    column ``k`` from ``A``), and ``S_ij = corr(Y_Ci, Y_Dj) - S_i - S_j``
    (:attr:`second_order`, pairs in :attr:`pairs` order) with a
    prequential influence-function interval; the first- and total-order
    state is untouched. See :mod:`melissa_sa.stats.sobol_second`.

    **Memory** (float64, per cell): ``8 (9 + 16 p)`` bytes with
    ``ci="delta"`` (456 at ``p = 3``), kept cell-blocked without second order
    (:mod:`.sobol_blocks`: the fold runs in SIMD lanes; the cell count
    rounded up to 16), ``8 (5 + 4 p)`` with ``ci="fisher"`` (136 at
    ``p = 3``); second order adds ``8 (2 + 3 p + p (p - 1))`` (136 at
    ``p = 3``); plus the group buffer (:attr:`nbytes`).

    **Batched fold** (``fold_batch``, default: see
    :func:`~melissa_sa.stats.sobol_fold.fold_batch_for`):
    :meth:`update` buffers groups (copied, or with ``pool=`` leased from a
    :class:`~melissa_sa.stats.row_pool.RowPool` and given back once folded)
    and folds ``fold_batch`` of them in one pass, bit for bit as one by one
    (:mod:`melissa_sa.stats.sobol_fold`). :attr:`count` includes the
    buffered groups; every result, merge and save folds them first. With
    ``aggregated=`` (a fresh
    :class:`~melissa_sa.stats.sobol_aggregated.SobolAggregatedInterval`),
    :meth:`update` takes the study's group number and adds the counted
    groups' influence sums to its batch sums (fused into the fold of a full
    state); read it as :attr:`aggregated`, which folds first.

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
                 second_order: bool = False, fold_batch: int | None = None,
                 aggregated: SobolAggregatedInterval | None = None):
        if isinstance(n_cells, bool) or int(n_cells) != n_cells or int(n_cells) < 1:
            raise ValueError(f"n_cells must be a positive integer, got {n_cells!r}")
        if isinstance(n_params, bool) or int(n_params) != n_params or int(n_params) < 1:
            raise ValueError(f"n_params must be a positive integer, got {n_params!r}")
        if ci not in ("delta", "fisher"):
            raise ValueError(f"ci must be 'delta' or 'fisher', got {ci!r}")
        rows = (2 if second_order else 1) * int(n_params) + 2   # a group's, float64
        fold_batch = fold_batch_for(ci, second_order, fold_batch, 8 * rows * int(n_cells))
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
        # a full first-order state is cell-blocked (the fold in SIMD lanes,
        # :mod:`.sobol_blocks`); with second order, or compact, one row per cell
        self._blocks = (BlockedState(self.n_cells, self.n_params)
                        if ci == "delta" and not self.has_second_order else None)
        if self._blocks is not None:
            self._state = self._blocks.array
        else:
            width = row_width(self.n_params, full=ci == "delta")
            self._state = np.zeros((self.n_cells, width), dtype=np.float64)
        self._second = (SecondOrderState(self.n_cells, self.n_params)
                        if self.has_second_order else None)
        self._aggregated = None
        self._influence = None   # the buffered groups' rows of the aggregated sums
        if aggregated is not None:
            self.attach(aggregated)

    def __repr__(self) -> str:
        return (f"SobolMartinez(n_cells={self.n_cells}, n_params={self.n_params}, "
                f"ci={self.ci!r}, second_order={self.has_second_order}; "
                f"{self._n} groups)")

    pairs = property(lambda self: list(itertools.combinations(range(self.n_params), 2)),
                     doc="Parameter pairs ``(i, j)``, ``i < j``, in ``combinations`` order.")
    n_pairs = property(lambda self: self.n_params * (self.n_params - 1) // 2)

    # -- the aggregated interval -------------------------------------------
    def attach(self, aggregated: SobolAggregatedInterval) -> None:
        """Keep the aggregated indices' batch sums of these cells from now on:
        ``aggregated`` must have seen exactly the groups this object has
        (a fresh one, or one loaded from the same checkpoint)."""
        if not isinstance(aggregated, SobolAggregatedInterval):
            raise TypeError(f"aggregated must be a SobolAggregatedInterval, got {aggregated!r}")
        if aggregated.count != self._n or aggregated.n_cells != self.n_cells \
                or aggregated.n_params != self.n_params:
            raise ValueError(f"{aggregated!r} attached to {self!r}: it must have seen the "
                             "same groups, before the SobolMartinez, with the same cells "
                             "and parameters")
        self.flush()
        self._aggregated = aggregated
        self._influence = InfluenceRows(aggregated.batches, self.n_cells, self.n_params,
                                        self.fold_batch)

    @property
    def aggregated(self) -> SobolAggregatedInterval | None:
        """The aggregated interval's batch sums (None if none is attached),
        every group's sums added: the buffered groups' are added first."""
        if self.influence_pending:
            self.flush()
        return self._aggregated

    @property
    def influence_pending(self) -> bool:
        """Whether buffered groups still have influence sums to add to
        :attr:`aggregated` (every fold adds them)."""
        return self._influence is not None and self._influence.pending(self._n - self._folded)

    # -- streaming -------------------------------------------------------
    def update(self, group, group_id: int | None = None, *, pool: RowPool | None = None
               ) -> None:
        """Fold one pick-freeze group, shape ``(n_params + 2, n_cells)``.

        Rows ``Y_A, Y_B, Y_C1 .. Y_Cp`` (then ``Y_D1 .. Y_Dp`` with second
        order), float32 or float64, folded at once with ``fold_batch = 1``,
        else buffered (folded when full); second-order sums are folded at
        once. ``group_id``: the study's group number, needed with an
        :attr:`aggregated` interval (which counts it and gets its influence
        sums). ``pool``: ``group`` was leased from this
        :class:`~melissa_sa.stats.row_pool.RowPool`; it is folded from where it
        is and given back once folded (the caller must not write to it).
        """
        given = group
        group = as_group(group, self.n_params, self.n_cells, self.has_second_order)
        converted = group is not given   # as_group made our own copy
        if pool is not None and converted:
            pool.give_back(given)   # converted: our copy is folded, the lease ends now
            pool = None
        row = self._admit(group_id)
        if self._second is not None:
            # reads the first-order state as it is (``_folded`` groups)
            self._second.fold(self._state, group, self._n, self._folded)
            group = group[:self.n_params + 2]
        if row >= 0 and self.ci != "delta":
            self.flush()   # the compact state: two passes, the sums first
            self._influence.add_now(self._state, group, self._n, row)
            row = -1
        if self.fold_batch == 1:
            self.flush()
            if row >= 0:
                self._influence.register(0, row)
            self._fold([group])
            if pool is not None:
                pool.give_back(given)
            return
        if not self._buffer.accepts(group):
            self.flush()   # another dtype: the kernels take one dtype per call
        if row >= 0:
            self._influence.register(len(self._buffer), row)
        if pool is not None:
            self._buffer.keep(group, pool, given)
        elif converted:
            self._buffer.keep(group, None)
        else:
            self._buffer.copy(group)
        self._n += 1
        if self._n - self._folded == self.fold_batch or self._n in RECENTRE_AT:
            self.flush()

    def _admit(self, group_id) -> int:
        """The row of the aggregated sums this group adds to, -1 for none."""
        if self._aggregated is None:
            return -1
        if group_id is None:
            raise ValueError(f"{self!r} keeps an aggregated interval: update(group, "
                             "group_id) needs the study's group number")
        if self._aggregated.count != self._n:
            raise ValueError(f"{self._aggregated!r} has not seen the groups of {self!r} "
                             "(merged since?): it cannot follow this fold")
        return self._aggregated.update(group_id)

    def update_many(self, groups, group_ids=None) -> None:
        """``m`` calls of :meth:`update`: ``groups`` is ``(m, n_params + 2,
        n_cells)`` (or a sequence of groups) in the order they count,
        ``group_ids`` their study group numbers (with :attr:`aggregated`). A
        C-contiguous float32/float64 array is folded from where it is,
        ``fold_batch`` groups a pass."""
        if not isinstance(groups, np.ndarray) or self._aggregated is not None:
            ids = [None] * len(groups) if group_ids is None else group_ids
            for group, group_id in zip(groups, ids, strict=True):
                self.update(group, group_id)
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
        self.flush()
        for lo in range(0, groups.shape[0], self.fold_batch):
            batch = groups[lo:lo + self.fold_batch]
            self._fold(batch if self._blocks is not None else list(batch))

    def _fold(self, groups: list[np.ndarray]) -> None:
        """Fold the received-but-not-folded ``groups`` into the state."""
        fold_groups(self._state, groups, self._folded, self.n_params, self._influence,
                    self._blocks)
        self._folded += len(groups)
        self._n = max(self._n, self._folded)

    def flush(self) -> None:
        """Fold the buffered groups now (leased rows go back to their pools)."""
        if len(self._buffer):
            self._fold(self._buffer.groups)
            self._buffer.clear()

    def trim(self) -> None:
        """Fold what is buffered, then free the buffers and scratch (made again
        if needed): finalisation writes the results from the state alone."""
        self.flush()
        self._buffer.drop()
        if self._blocks is not None:
            self._blocks.drop_scratch()

    def merge(self, other: SobolMartinez) -> None:
        """Fold ``other``'s groups in (not into :attr:`aggregated`)."""
        self._check_merge(other, n_cells=self.n_cells, n_params=self.n_params, ci=self.ci,
                          has_second_order=self.has_second_order)
        self.flush()
        other.flush()
        if self._blocks is not None:
            self._blocks.merge(self._folded, other._blocks, other._folded)
        else:
            other_state = other._state.copy() if other is self else other._state
            if self._second is not None:
                self._second.merge(self._folded, other._second, other._folded)
            martinez_merge(self._state, self._folded, other_state,
                           other._folded, self.n_params)
        self._folded += other._folded
        self._n = self._folded

    # -- results ---------------------------------------------------------
    count = property(lambda self: self._n, doc="Groups received, buffered ones included.")

    def folded_state(self) -> np.ndarray:
        """The per-cell state ``(n_cells, width)``, every group folded (the
        layout of :mod:`melissa_sa.kernels.sobol`; read it, do not write: of a
        cell-blocked state, it is a copy)."""
        self.flush()
        return self._state if self._blocks is None else self._blocks.rows()

    first_order = property(lambda self: self.indices[0],
                           doc="``S_k = corr(Y_B, Y_Ck)``, shape ``(n_params, n_cells)``.")
    total_order = property(lambda self: self.indices[1],
                           doc="``ST_k = 1 - corr(Y_A, Y_Ck)``, ``(n_params, n_cells)``.")

    @property
    def indices(self) -> tuple[np.ndarray, np.ndarray]:
        """``(first_order, total_order)`` from one pass over the state."""
        return self._read(lambda rows: sobol_results.indices(rows, self.n_params))

    @property
    def second_order(self) -> np.ndarray:
        """``S_ij = corr(Y_Ci, Y_Dj) - S_i - S_j``, shape ``(n_pairs, n_cells)``,
        pairs in :attr:`pairs` order; needs ``second_order=True``."""
        if self._second is None:
            raise ValueError("second_order indices need SobolMartinez(..., second_order=True)")
        return self._second.indices(self.folded_state())  # S_i from the first-order state

    def confidence_interval(self, level: float = 0.95, method: str | None = None):
        """Two-sided confidence intervals of the first and total indices.

        Returns ``((first_low, first_high), (total_low, total_high))``, each
        array shaped ``(n_params, n_cells)``. ``method`` is ``"delta"``
        (default when the object keeps fourth-order moments, ``ci="delta"``),
        ``"fisher"`` (default with ``ci="fisher"``) or ``"delta-linear"``;
        see the class docstring. With second order, a third pair
        ``(second_low, second_high)``, each ``(n_pairs, n_cells)``: the
        prequential influence-function interval whatever ``method`` (see
        :mod:`melissa_sa.kernels.sobol_second`).
        """
        return self._interval(level, method, with_indices=False)[1]

    def indices_and_interval(self, level: float = 0.95, method: str | None = None):
        """``(indices, confidence_interval(level, method))`` from one pass over
        the state instead of two (the results writer's call, per time step);
        the same arrays as the two calls, bit for bit."""
        return self._interval(level, method, with_indices=True)

    def _interval(self, level, method, with_indices):
        self.flush()   # a cell-blocked state is read in place, the arrays written whole
        return sobol_results.interval(self._blocks or self._state, self._folded, self.n_params,
                                      self.ci, self._second, level, method, with_indices)

    def _read(self, read):
        """``read(state)`` of the folded row-layout state; of a cell-blocked
        one, by slices of cells (no copy of the whole state)."""
        self.flush()
        return read(self._state) if self._blocks is None else self._blocks.by_slices(read)

    def aggregated_sums(self) -> np.ndarray:
        """This object's partial sums for the field's aggregated indices.

        Shape ``(4, n_params)``, rows ``sum_c XY11(B, C_k)``,
        ``sum_c sqrt(B2 Ck2)``, ``sum_c XY11(A, C_k)``, ``sum_c sqrt(A2 Ck2)``
        over this object's cells: sums of disjoint cells (ranks) add up, for
        :func:`~melissa_sa.stats.sobol_aggregated.aggregate_indices`.
        """
        self.flush()
        state = self._blocks if self._blocks is not None else self._state
        return sobol_results.aggregated_sums(state, self.n_params)

    @property
    def nbytes(self) -> int:
        """Bytes held: the state (see **Memory**) and its scratch, the group
        buffer and the influence sums' scratch once made."""
        extra = self._second.nbytes if self._second is not None else 0
        infl = self._influence.nbytes if self._influence is not None else 0
        state = self._state.nbytes if self._blocks is None else self._blocks.nbytes
        return state + extra + infl + self._buffer.nbytes

    # -- checkpoint ------------------------------------------------------
    def save(self, group) -> None:
        """Write the state into an h5py group (attribute ``layout``: the
        meaning of the row's slots, see :mod:`melissa_sa.kernels.sobol`).
        Buffered groups are folded first: the saved state holds every group
        received. ``fold_batch`` is not saved (it is a choice of speed, not
        part of the state); the aggregated interval saves itself."""
        state = self.folded_state()
        save_martinez(group, state, None if self._second is None else self._second.array,
                      n=self._folded, n_params=self.n_params, ci=self.ci)

    @classmethod
    def load(cls, group, *, fold_batch: int | None = None,
             aggregated: SobolAggregatedInterval | None = None) -> SobolMartinez:
        """Rebuild a :class:`SobolMartinez` from a group written by :meth:`save`
        (``fold_batch``, ``aggregated``: as in the constructor and
        :meth:`attach`).

        A state saved before layout 2 (no ``layout`` attribute: centred
        fourth-order sums) is converted; a newer layout is refused. A state
        saved without a ``second_order`` attribute is first-order only.
        """
        saved = read_martinez(group)
        obj = cls(saved.n_cells, saved.n_params, ci=saved.ci,
                  second_order=saved.second_order, fold_batch=fold_batch)
        restore_martinez(group, saved, obj._blocks or obj._state,
                         None if obj._second is None else obj._second.array)
        obj._n = obj._folded = saved.n
        if aggregated is not None:
            obj.attach(aggregated)
        return obj
