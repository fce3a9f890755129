"""Closed-form moments and Sobol' indices of the Ishigami function.

    Y = sin(x1) + a sin(x2)^2 + b x3^4 sin(x1),   x1, x2, x3 ~ U(-pi, pi) independent

Variance decomposition (Ishigami & Homma 1990; Sobol' & Levitan 1999)::

    V   = a^2/8 + b pi^4/5 + b^2 pi^8/18 + 1/2
    V1  = (1 + b pi^4/5)^2 / 2,   V2 = a^2/8,   V3 = 0
    V13 = b^2 pi^8 (1/18 - 1/50)  (= 8 b^2 pi^8 / 225),  V12 = V23 = V123 = 0
    S_i = V_i / V;   ST1 = (V1 + V13)/V, ST2 = V2/V, ST3 = V13/V

For a = 7, b = 0.1: S = (0.3139, 0.4424, 0), ST = (0.5576, 0.4424, 0.2437).

The example simulation (``ishigami.py``) gives every mesh cell its own
(a, b), from :func:`cell_coefficients`, so every cell has known indices, and
multiplies the whole field by ``1 + t`` at time step t (:func:`step_scale`),
which scales the mean by ``1 + t`` and the variance by ``(1 + t)^2`` and leaves
every Sobol' index unchanged.

The formulas use only ``+ - * /`` on their arguments, so they take plain
floats (no NumPy needed) or NumPy arrays (elementwise, e.g. per cell).
"""

from __future__ import annotations

import math

PI4 = math.pi**4
PI8 = math.pi**8

#: Parameter bounds of the study: each x_k ~ U(-pi, pi).
BOUNDS = ((-math.pi, math.pi),) * 3

#: The (a, b) of the first and of the last cell; cells in between interpolate linearly.
#: The first cell is the classic Ishigami function (a = 7, b = 0.1), where x2
#: dominates; at the last one (a = 2, b = 0.3) the x1-x3 interaction does.
A_RANGE = (7.0, 2.0)
B_RANGE = (0.1, 0.3)


def ishigami(x1, x2, x3, a=7.0, b=0.1):
    """The Ishigami function (floats or broadcastable NumPy arrays)."""
    if isinstance(x1, float | int) and isinstance(x2, float | int) and isinstance(x3, float | int):
        s1 = math.sin(x1)
        return s1 + a * math.sin(x2) ** 2 + b * x3**4 * s1
    import numpy as np  # noqa: PLC0415

    s1 = np.sin(x1)
    return s1 + a * np.sin(x2) ** 2 + b * np.asarray(x3) ** 4 * s1


def partial_variances(a, b):
    """``(V, V1, V2, V13)``: total variance, first-order parts, the x1-x3 interaction."""
    v1 = 0.5 * (1.0 + b * PI4 / 5.0) ** 2
    v2 = a * a / 8.0
    v13 = b * b * PI8 * (1.0 / 18.0 - 1.0 / 50.0)
    v = a * a / 8.0 + b * PI4 / 5.0 + b * b * PI8 / 18.0 + 0.5
    return v, v1, v2, v13


def analytic_mean(a, b):
    """E[Y] = a/2 (E[sin x1] = 0, E[sin^2 x2] = 1/2)."""
    return a / 2.0 + 0.0 * b


def analytic_variance(a, b):
    """Var[Y] = a^2/8 + b pi^4/5 + b^2 pi^8/18 + 1/2."""
    return partial_variances(a, b)[0]


def analytic_indices(a, b):
    """``(S1, ST)``, each a tuple of 3 (floats, or arrays shaped like a and b).

    >>> S1, ST = analytic_indices(7.0, 0.1)
    >>> [round(s, 4) for s in S1], [round(s, 4) for s in ST]
    ([0.3139, 0.4424, 0.0], [0.5576, 0.4424, 0.2437])
    """
    v, v1, v2, v13 = partial_variances(a, b)
    zero = 0.0 * v
    first = (v1 / v, v2 / v, zero)
    total = ((v1 + v13) / v, v2 / v, v13 / v)
    return first, total


def cell_coefficients(n_cells, a_range=A_RANGE, b_range=B_RANGE):
    """Per-cell ``(a, b)`` as two float64 arrays of n_cells: linear from the first
    to the last value of each range (cell 0 has the first; one cell has the first)."""
    import numpy as np  # noqa: PLC0415

    s = np.arange(n_cells, dtype=np.float64) / max(n_cells - 1, 1)
    a = a_range[0] + (a_range[1] - a_range[0]) * s
    b = b_range[0] + (b_range[1] - b_range[0]) * s
    return a, b


def step_scale(t):
    """The factor applied to the field at time step t (0-based)."""
    return 1.0 + t


def expected_field(x, n_cells, steps):
    """The field ``ishigami.py`` outputs for parameters x: ``(steps, n_cells)``."""
    import numpy as np  # noqa: PLC0415

    a, b = cell_coefficients(n_cells)
    base = ishigami(float(x[0]), float(x[1]), float(x[2]), a, b)
    scale = np.array([step_scale(t) for t in range(steps)])
    return scale[:, None] * base[None, :]
