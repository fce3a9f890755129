"""The aggregated (whole-field) Sobol' indices and their confidence intervals.

The aggregated indices of a field (Gamboa, Janon, Klein & Lagnoux 2014, in
Martinez' correlation form; :func:`aggregate_indices`) are ratios
``S_k = N / D`` of sums over cells. Cells of one group are correlated, so
the variance of ``S_k`` needs, per group, the *whole field's* influence
value ``Phi_g - S_k Psi_g`` (below), which no server rank holds: each has a
slice of cells.

**Influence values.** With ``S_k = N / D``, ``N = sum_c Cov_c(B, C_k)``,
``D = sum_c sqrt(Var_c(B) Var_c(C_k))`` (total order: ``1 - N_A / D_A``
with ``A`` in place of ``B``), the delta method gives
``S_k_hat - S_k ~ (1/n) sum_g (Phi_g - S_k Psi_g) / D`` over the ``n``
groups ``g``, with the whole field's influence values of group ``g``::

    Phi_g = sum_c (b - m_b)(c - m_c) - cov
    Psi_g = sum_c 1/2 sqrt(v_c / v_b) ((b - m_b)^2 - v_b)
                + 1/2 sqrt(v_b / v_c) ((c - m_c)^2 - v_c)

(``b``, ``c``: the group's values of ``Y_B`` and ``Y_Ck`` in cell ``c``).
The means ``m``, variances ``v`` and covariance ``cov`` are the running
estimates from the ``n`` groups folded in *before* ``g`` (block 1 of the
:class:`~melissa_sa.stats.SobolMartinez` state, read in place), scaled to
predict the new group: ``E[(b - m_b)(c - m_c)] = cov (1 + 1/n)``, so
``v = X2 f`` and ``cov = XY11 f`` with ``f = (n + 1) / (n (n - 1))``. A
cell with a zero running variance on either side adds nothing to ``Psi``
(nor to ``D``); its ``Phi`` term is 0 for a constant cell; a NaN value or
state makes ``Phi`` NaN (so the interval, like the aggregated index, is
NaN). The kernels (:mod:`melissa_sa.kernels.sobol_influence`: the sums
alone, and fused with the batched fold) sum a group's terms over chunks of
256 cells, then the chunks in order: the sums do not depend on the thread
count nor on the path.

**Batch sums.** Group ``g`` (the study's group number, the same on every
rank) goes to batch ``g mod K``; each rank adds its cells' ``Phi`` and
``Psi`` into that batch, a ``(K, 4, p)`` array per time step. Arrays of
disjoint cells add up (:meth:`SobolAggregatedInterval.merge`, or a sum over
server ranks), so the batch sums of the whole field are known without a
gather of cells. At the end, with the final ``S_k`` and ``D``,
``T_j = Phi_j - S_k Psi_j`` is batch ``j``'s sum of influence values and::

    Var(S_k) = sum_j T_j^2 / (n m D_pop^2)

``n``: groups folded into the indices, ``m``: groups that contributed,
``D_pop = D / (n - 1)``. Which groups contribute is a rule on the group
number, the same on every rank: all groups numbered below ``dense`` (256),
then one in ``stride`` (16), each once the rank has folded ``warmup`` (10)
groups. The pass over the cells reads the Martinez state's block 1 and
costs about one fold on a full state alone (``benchmarks/kernels.py``),
0.7-0.8 of a batched fold fused into it (``benchmarks/server_group.py``): the
stride keeps it to a small fraction of the fold in a long study, and the
variance of the influence values is estimated as well from a few hundred
groups as from all. The influence
values are computed with the running estimates from before each group,
scaled so that each has mean exactly zero given the past (a martingale
difference sequence): batch sums are uncorrelated, no mean is estimated, and
``sum_j T_j^2`` has at most ``K'`` degrees of freedom (``K'``: the non-empty
batches), fewer when the influence values are heavy-tailed
(:func:`effective_dof`, Satterthwaite 1946). The interval is
``S_k +- q se`` with ``q`` the Student t quantile with that many degrees of
freedom (batch means: Schmeiser 1982; delta method for a ratio of means:
e.g. van der Vaart, *Asymptotic Statistics*, 1998, ch. 3). Total order:
``ST_k +- q se`` with the ``A`` sums. Coverage is measured in
``benchmarks/aggregated_coverage.py`` (``docs/statistics.md``).

Example: a field of two cells, ``Y = X1 + 2 X2`` and ``Y = X3`` (variances
``5/12`` and ``1/12``); aggregated first-order indices ``(1/6, 4/6, 1/6)``.

>>> import numpy as np
>>> from melissa_sa.stats import SobolMartinez
>>> rng = np.random.default_rng(1)
>>> s = SobolMartinez(2, 3, ci="fisher", aggregated=SobolAggregatedInterval(2, 3))
>>> for g in range(4000):
...     a, b = rng.random(3), rng.random(3)
...     runs = [a, b] + [np.where(np.arange(3) == k, b, a) for k in range(3)]
...     s.update(np.array([[x[0] + 2 * x[1], x[2]] for x in runs]), g)
>>> (low, high), _ = s.aggregated.confidence_interval(s, 0.95)
>>> truth = np.array([1, 4, 1]) / 6
>>> bool(np.all(low < truth)), bool(np.all(truth < high))
(True, True)
>>> bool(np.all(high - low < 0.06))     # 4000 groups: widths 0.02 to 0.05
True
"""

from __future__ import annotations

import numpy as np

from melissa_sa.stats._state import load_state, restore_array, save_state
from melissa_sa.stats.base import MergeError, Statistic

__all__ = ["SobolAggregatedInterval", "aggregate_indices", "aggregated_interval",
           "combine_slices", "effective_dof", "N_BATCHES", "WARMUP", "DENSE", "STRIDE"]

#: batches of groups (group g -> batch g mod K); degrees of freedom of the variance
N_BATCHES = 256
#: groups folded before the influence values start to count
WARMUP = 10
#: groups with a number below DENSE all count; above it, one in STRIDE (see
#: :meth:`SobolAggregatedInterval.counts_group`): the sums cost about one
#: fold on a full state (0.7-0.8 of it fused), so they run on a fraction of the groups
DENSE = 256
STRIDE = 16
#: rows of the middle axis of the batch sums: Phi and Psi, first then total order
PHI_FIRST = 0
PSI_FIRST = 1
PHI_TOTAL = 2
PSI_TOTAL = 3


def aggregate_indices(sums) -> tuple[np.ndarray, np.ndarray]:
    """Aggregated first- and total-order indices of a whole field.

    ``sums``: :meth:`SobolMartinez.aggregated_sums`, summed over every part
    of the field. Gamboa, Janon, Klein & Lagnoux (2014) in Martinez'
    correlation form, per parameter ``k``::

        S_k  = sum_c Cov_c(Y_B, Y_Ck) / sum_c sqrt(Var_c(Y_B) Var_c(Y_Ck))
        ST_k = 1 - sum_c Cov_c(Y_A, Y_Ck) / sum_c sqrt(Var_c(Y_A) Var_c(Y_Ck))

    (the ``1/(n-1)`` factors cancel). Constant cells add nothing to either
    sum; a field with no variance at all gives 0, like a constant cell.
    Returns ``(first, total)``, each of shape ``(n_params,)``.
    """
    sums = np.asarray(sums, dtype=np.float64)
    if sums.ndim != 2 or sums.shape[0] != 4:
        raise ValueError(f"sums shape {sums.shape}, expected (4, n_params) "
                         "from SobolMartinez.aggregated_sums")
    with np.errstate(invalid="ignore", divide="ignore"):
        first = np.where(sums[1] == 0, 0.0, sums[0] / sums[1])
        total = np.where(sums[3] == 0, 0.0, 1.0 - sums[2] / sums[3])
    return first, total


class SobolAggregatedInterval(Statistic):
    """Batch sums of the influence values of the aggregated Sobol' indices.

    ``SobolAggregatedInterval(n_cells, n_params, n_batches=256, warmup=10)``
    keeps ``8 (4 p + 1) n_batches`` bytes whatever ``n_cells``. It does not
    fold anything: the :class:`~melissa_sa.stats.SobolMartinez` of the same
    cells it is attached to (``SobolMartinez(..., aggregated=this)``) counts
    each group here (:meth:`update`) and adds the group's influence sums to
    :attr:`batches` during its fold, computed with its state as it was
    before the group. Buffered groups' sums are added when it folds its
    buffer: read this object as ``sobol.aggregated``, which folds first.
    :attr:`batch_counts` and :attr:`batch_ids` count a group at once.

    ``merge(other)`` adds the sums of *other cells* of the same groups (a
    server rank's slice): the result is the object of the union of cells.
    (Unlike the per-cell statistics, two objects that saw different groups do
    not merge.) See the module docstring for the interval.
    """

    def __init__(self, n_cells: int, n_params: int, *, n_batches: int = N_BATCHES,
                 warmup: int = WARMUP, dense: int = DENSE, stride: int = STRIDE):
        for key, value, least in (("n_cells", n_cells, 1), ("n_params", n_params, 1),
                                  ("n_batches", n_batches, 1), ("warmup", warmup, 2),
                                  ("dense", dense, 0), ("stride", stride, 1)):
            if isinstance(value, bool) or int(value) != value or int(value) < least:
                raise ValueError(f"{key} must be an integer >= {least}, got {value!r}")
        self.n_cells = int(n_cells)
        self.n_params = int(n_params)
        self.n_batches = int(n_batches)
        self.warmup = int(warmup)
        self.dense = int(dense)
        self.stride = int(stride)
        self._n = 0
        #: the batch sums ``(n_batches, 4, p)``, added to in place
        self.batches = np.zeros((self.n_batches, 4, self.n_params))
        self.batch_counts = np.zeros(self.n_batches, dtype=np.int64)
        self.batch_ids = np.zeros(self.n_batches, dtype=np.int64)   # sum of group ids

    def __repr__(self) -> str:
        return (f"SobolAggregatedInterval(n_cells={self.n_cells}, n_params={self.n_params}, "
                f"n_batches={self.n_batches}, warmup={self.warmup}; {self._n} groups)")

    def update(self, group_id: int) -> int:
        """Count group ``group_id``, the next group of the attached
        SobolMartinez (it calls this, then adds the sums): the row of
        :attr:`batches` its influence sums go to, or -1 if it adds none
        (warm-up, or not a counted group, see :meth:`counts_group`). The
        sums need a state of at least ``warmup`` (>= 2) groups."""
        group_id = int(group_id)
        row = -1
        if self._n >= self.warmup and self.counts_group(group_id):
            row = group_id % self.n_batches
            self.batch_counts[row] += 1
            self.batch_ids[row] += group_id
        self._n += 1
        return row

    def start_after(self, n_groups: int) -> None:
        """Follow a SobolMartinez that already holds ``n_groups`` groups this
        object never saw (a checkpoint written before it existed): they add
        no influence values. Only on a fresh object."""
        if self._n != 0:
            raise ValueError(f"{self!r} has seen groups already: start_after({n_groups}) "
                             "applies to a fresh object")
        self._n = int(n_groups)

    def counts_group(self, group_id: int) -> bool:
        """Whether group ``group_id`` adds influence values (past the warm-up):
        every group numbered below ``dense``, then one in ``stride``. A rule on
        the group number, the same on every server rank."""
        return group_id < self.dense or group_id % self.stride == 0

    def merge(self, other: SobolAggregatedInterval) -> None:
        """Add ``other``'s sums: the same groups over other cells."""
        self._check_merge(other, n_params=self.n_params, n_batches=self.n_batches,
                          warmup=self.warmup, dense=self.dense, stride=self.stride,
                          n=self._n)
        if not (np.array_equal(other.batch_counts, self.batch_counts)
                and np.array_equal(other.batch_ids, self.batch_ids)):
            raise MergeError(f"cannot merge {other!r} into {self!r}: they did not add the "
                             "same groups to their batches (batch_counts or batch_ids "
                             "differ); combine_slices leaves such batches out")
        if other is self:
            raise MergeError(f"cannot merge {self!r} with itself: its cells would count twice")
        self.batches += other.batches
        self.n_cells += other.n_cells

    @property
    def count(self) -> int:
        """Groups seen (the warm-up ones included)."""
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes of state held (independent of the number of cells)."""
        return self.batches.nbytes + self.batch_counts.nbytes + self.batch_ids.nbytes

    def confidence_interval(self, sobol, level: float = 0.95):
        """``((first_low, first_high), (total_low, total_high))``, each ``(p,)``.

        For a field whose cells are all in this object and in ``sobol`` (its
        :meth:`~melissa_sa.stats.SobolMartinez.aggregated_sums`, which folds
        its buffer first, so the buffered groups' sums are added here too).
        """
        if sobol.count != self._n or sobol.n_cells != self.n_cells:
            raise ValueError(f"{self!r} and {sobol!r} did not see the same groups and cells")
        sums = sobol.aggregated_sums()
        return aggregated_interval(sums, self.batches, self.batch_counts, self._n, level)

    def save(self, group) -> None:
        """Write the batch sums into an h5py group."""
        save_state(group, "SobolAggregatedInterval",
                   {"batches": self.batches, "batch_counts": self.batch_counts,
                    "batch_ids": self.batch_ids},
                   {"n": self._n, "n_cells": self.n_cells, "n_params": self.n_params,
                    "n_batches": self.n_batches, "warmup": self.warmup,
                    "dense": self.dense, "stride": self.stride})

    @classmethod
    def load(cls, group) -> SobolAggregatedInterval:
        """Rebuild from a group written by :meth:`save`."""
        arrays, attrs = load_state(group, "SobolAggregatedInterval",
                                   ["batches", "batch_counts", "batch_ids"])
        obj = cls(int(attrs["n_cells"]), int(attrs["n_params"]),
                  n_batches=int(attrs["n_batches"]), warmup=int(attrs["warmup"]),
                  dense=int(attrs["dense"]), stride=int(attrs["stride"]))
        for name in ("batches", "batch_counts", "batch_ids"):
            restore_array(group, name, getattr(obj, name), arrays[name])
        obj._n = int(attrs["n"])
        return obj


def combine_slices(parts):
    """Whole-field ``(batches, batch_counts)`` from the slices of server ranks.

    ``parts``: one ``(batches, batch_counts, batch_ids)`` per slice of cells
    (arrays of :class:`SobolAggregatedInterval`). Batches are added; a batch
    whose count or sum of group numbers differs between slices (a group that
    one rank folded during its warm-up and another did not: ranks fold groups
    in their own order) holds part of a group's cells and is left out
    (its sums and count set to 0). Returns ``(batches, batch_counts,
    n_dropped)``.
    """
    parts = list(parts)
    batches = sum(np.asarray(b, dtype=np.float64) for b, _, _ in parts)
    counts = np.asarray(parts[0][1], dtype=np.int64).copy()
    ids = np.asarray(parts[0][2], dtype=np.int64)
    bad = np.zeros(counts.shape, dtype=bool)
    for _, c, i in parts[1:]:
        bad |= (np.asarray(c) != counts) | (np.asarray(i) != ids)
    batches[bad] = 0.0
    counts[bad] = 0
    return batches, counts, int(bad.sum())


def effective_dof(t_sums, counts) -> np.ndarray:
    """Degrees of freedom of ``sum_j T_j^2``, per column of ``t_sums`` (Satterthwaite).

    ``t_sums``: the non-empty batches' sums ``(K', p)``; ``counts``: their
    groups ``(K',)``. With ``u_j = T_j^2 / c_j`` (each an estimate of one
    group's variance), ``nu = 2 K' mean(u)^2 / mean((u - mean(u))^2)``,
    at most ``K'``: ``K'`` for normal batch sums, fewer when heavy-tailed
    influence values make the variance estimate noisier (measured: it
    brings the coverage at 200 groups from 92.9-95.4 % to 94.2-96.2 %).
    """
    u = t_sums ** 2 / np.asarray(counts, dtype=np.float64)[:, None]
    k = u.shape[0]
    mean = u.mean(axis=0)
    spread = ((u - mean) ** 2).mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        nu = np.where(spread > 0, 2.0 * k * mean ** 2 / spread, float(k))
    return np.minimum(nu, float(k))


def aggregated_interval(sums, batches, batch_counts, n: int, level: float):
    """Intervals of the aggregated indices from whole-field sums.

    ``sums``: :meth:`SobolMartinez.aggregated_sums` over the whole field
    ``(4, p)``; ``batches``: the whole field's batch sums ``(K, 4, p)``;
    ``batch_counts``: groups per batch ``(K,)``; ``n``: groups folded into
    ``sums``. Returns ``((first_low, first_high), (total_low, total_high))``,
    each ``(p,)``: NaN with fewer than two contributing groups or a field
    without variance (the index itself is then 0 or NaN).
    """
    # the t quantile from scipy.special: scipy.stats would cost the server
    # about 0.7 s of CPU to import at the end of the study
    from scipy.special import stdtrit

    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    sums = np.asarray(sums, dtype=np.float64)
    batches = np.asarray(batches, dtype=np.float64)
    counts = np.asarray(batch_counts)
    first, total = aggregate_indices(sums)
    m = int(counts.sum())
    p = sums.shape[1]
    if m < 2 or np.count_nonzero(counts) < 2 or n < 2:
        nan = np.full(p, np.nan)
        return (nan, nan.copy()), (nan.copy(), nan.copy())
    full = counts > 0
    out = []
    for value, ratio, phi, psi, d in ((first, first, PHI_FIRST, PSI_FIRST, sums[1]),
                                      (total, 1.0 - total, PHI_TOTAL, PSI_TOTAL, sums[3])):
        t_sums = batches[:, phi, :] - ratio * batches[:, psi, :]        # (K, p)
        with np.errstate(invalid="ignore", divide="ignore"):
            d_pop = d / (n - 1.0)
            se = np.sqrt((t_sums ** 2).sum(axis=0) / (float(n) * m)) / d_pop
            q = stdtrit(effective_dof(t_sums[full], counts[full]), 0.5 + 0.5 * level)
        se = np.where(d == 0.0, np.nan, se)
        out.append((value - q * se, value + q * se))
    return out[0], out[1]
