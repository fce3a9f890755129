"""The pick-freeze group layout: the one place that knows which run is which row.

A study without Sobol' indices runs independent samples: groups of one run.
With Sobol' indices each group holds

* first order and total order (Saltelli 2002, Martinez 2011): p + 2 runs,
  rows ``A, B, C_1 .. C_p`` where ``C_k`` is A with column k taken from B;
* with second order too: 2p + 2 runs, rows ``A, B, C_1 .. C_p, D_1 .. D_p``
  where ``D_k`` is B with column k taken from A.

Simulation ids number runs group by group: ``sim_id = group * size + member``.
Moments, extrema, thresholds and quantiles use the independent rows A and B
only. Everything that maps a run to its role (sampler, kernels, server,
results) asks a :class:`GroupLayout`.

>>> layout = GroupLayout(n_params=3)
>>> layout.size, layout.C(0), layout.member_name(4)
(5, 2, 'C_3')
>>> GroupLayout(3, second_order=True).size, GroupLayout(3, second_order=True).D(0)
(8, 5)
>>> layout.split(13)                       # sim id -> (group, member)
(2, 3)
>>> GroupLayout(2).build(np.array([[0., 0.]]), np.array([[1., 1.]]))[0]
array([[0., 0.],
       [1., 1.],
       [1., 0.],
       [0., 1.]])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GroupLayout", "A", "B"]

#: row of the first independent sample
A = 0
#: row of the second independent sample
B = 1


@dataclass(frozen=True)
class GroupLayout:
    """Rows of one group: ``sobol=False`` gives groups of one independent run."""

    n_params: int
    sobol: bool = True
    second_order: bool = False

    def __post_init__(self):
        if self.n_params < 1:
            raise ValueError(f"a group needs at least one parameter, got {self.n_params}")
        if self.second_order and not self.sobol:
            raise ValueError("second-order indices need the Sobol' layout")

    @property
    def size(self) -> int:
        """Runs per group."""
        if not self.sobol:
            return 1
        return 2 * self.n_params + 2 if self.second_order else self.n_params + 2

    @property
    def independent_rows(self) -> tuple[int, ...]:
        """Rows that are independent samples of the inputs (A and B, or the one run)."""
        return (A, B) if self.sobol else (0,)

    def C(self, k: int) -> int:  # noqa: N802 - the estimators' name
        """Row of C_k: A with column k from B (k from 0)."""
        self._check_param(k)
        return 2 + k

    def D(self, k: int) -> int:  # noqa: N802
        """Row of D_k: B with column k from A (k from 0); second order only."""
        if not self.second_order:
            raise ValueError("D rows exist only with second_order")
        self._check_param(k)
        return 2 + self.n_params + k

    def member_name(self, member: int) -> str:
        """``"A"``, ``"B"``, ``"C_k"`` or ``"D_k"`` (k from 1), or ``"run"``."""
        if not 0 <= member < self.size:
            raise ValueError(f"member {member} outside a group of {self.size}")
        if not self.sobol:
            return "run"
        if member < 2:
            return "AB"[member]
        k = member - 2
        return f"C_{k + 1}" if k < self.n_params else f"D_{k - self.n_params + 1}"

    def sim_id(self, group: int, member: int) -> int:
        return group * self.size + member

    def split(self, sim_id: int) -> tuple[int, int]:
        """``(group, member)`` of a simulation id."""
        return divmod(int(sim_id), self.size)

    def group_of(self, sim_id):
        """Group of a simulation id (works on arrays)."""
        return sim_id // self.size

    def member_of(self, sim_id):
        """Member of a simulation id (works on arrays)."""
        return sim_id % self.size

    def is_independent(self, member: int) -> bool:
        return member in self.independent_rows

    def build(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Groups from matrices A and B (n, p): an array (n, size, p).

        Without Sobol' (``sobol=False``) only ``a`` is used.
        """
        a = np.asarray(a, dtype=np.float64)
        if not self.sobol:
            return a[:, None, :].copy()
        b = np.asarray(b, dtype=np.float64)
        n, p = a.shape
        if p != self.n_params or b.shape != a.shape:
            raise ValueError(f"A {a.shape} and B {b.shape} must both be (n, {self.n_params})")
        out = np.empty((n, self.size, p))
        out[:, A] = a
        out[:, B] = b
        for k in range(p):
            out[:, self.C(k)] = a
            out[:, self.C(k), k] = b[:, k]
            if self.second_order:
                out[:, self.D(k)] = b
                out[:, self.D(k), k] = a[:, k]
        return out

    def _check_param(self, k: int) -> None:
        if not 0 <= k < self.n_params:
            raise ValueError(f"parameter index {k} outside 0..{self.n_params - 1}")
