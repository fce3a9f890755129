"""A pick-freeze group as the Sobol' accumulator takes it: the one check of its
shape and dtype.

:meth:`~melissa_sa.stats.SobolMartinez.update` passes every group through
:func:`as_group` before anything else (the aggregated interval counts it),
so a wrong group fails naming the rows expected and changes nothing.

>>> import numpy as np
>>> as_group(np.zeros((4, 3), dtype=np.int32), n_params=2, n_cells=3).dtype
dtype('float64')
>>> as_group(np.zeros((3, 3)), n_params=2, n_cells=3)
Traceback (most recent call last):
    ...
ValueError: group shape (3, 3), expected (4, 3) (rows A, B, C_1, C_2; one column per cell)
"""

from __future__ import annotations

import numpy as np

from melissa_sa.design import GroupLayout


def as_group(group, n_params: int, n_cells: int, second_order: bool = False) -> np.ndarray:
    """Return ``group`` as a C-contiguous float32/float64 (p + 2, n_cells) array.

    The rows are those of :class:`melissa_sa.design.GroupLayout`: A, B,
    C_1..C_p, and with ``second_order`` D_1..D_p too (``2p + 2`` rows).

    float32 and float64 C-contiguous arrays pass through without a copy; other
    real dtypes become float64. Raises ``ValueError`` naming the expected
    shape and ``TypeError`` for a non-real dtype.
    """
    group = np.asarray(group)
    if group.dtype not in (np.float32, np.float64):
        if group.dtype.kind not in "biuf":
            raise TypeError(f"group dtype {group.dtype} is not a real number type")
        group = group.astype(np.float64)
    layout = GroupLayout(n_params, second_order=second_order)
    expected = (layout.size, n_cells)
    if group.shape != expected:
        rows = ", ".join(layout.member_name(m) for m in range(layout.size))
        raise ValueError(
            f"group shape {group.shape}, expected {expected} "
            f"(rows {rows}; one column per cell)"
        )
    if not group.flags.c_contiguous:
        group = np.ascontiguousarray(group)
    return group
