"""The heterogeneous field behind the aggregated Sobol' tests and benchmark.

Every cell ``c`` is an Ishigami function of the same three inputs, with its
own coefficients, weight, offset and independent noise::

    Y_c = o_c + w_c (sin X1 + a_c sin^2 X2 + b_c X3^4 sin X1) + s_c E,
    X_k ~ U(-pi, pi),  E ~ N(0, 1) drawn anew for every run

so cells are correlated through the shared inputs, as in a real field. The
whole-field (aggregated) indices have a closed form (see
:func:`aggregated_truth`). ``tests/test_sobol_aggregated.py`` and
``benchmarks/aggregated_coverage.py`` both draw from here, so the test suite
stays self-contained and the benchmark measures the field the tests check.
"""

from __future__ import annotations

import math

import numpy as np

P = 3  # Ishigami's inputs


def field_groups(rng, n_groups: int, a, b, s, offset=0.0, weight=1.0) -> np.ndarray:
    """``(n_groups, P + 2, n_cells)`` pick-freeze groups (rows A, B, C_1..C_3) of the field.

    ``a``, ``b``, ``s`` (and ``offset``, ``weight`` if not scalars) are the
    cells' coefficients, each ``(n_cells,)``. Draws the inputs A, B, then the
    noise, from ``rng``.
    """
    xa = rng.uniform(-math.pi, math.pi, (n_groups, P))
    xb = rng.uniform(-math.pi, math.pi, (n_groups, P))
    runs = [xa, xb]
    for k in range(P):
        c = xa.copy()
        c[:, k] = xb[:, k]
        runs.append(c)
    x = np.stack(runs, axis=1)                              # (n, P + 2, P)
    s1 = np.sin(x[..., 0:1])
    y = s1 + a * np.sin(x[..., 1:2]) ** 2 + b * x[..., 2:3] ** 4 * s1
    return offset + weight * y + s * rng.standard_normal(y.shape)


def aggregated_truth(a, b, s, weight=1.0):
    """Exact aggregated ``(first, total)`` indices of the field, each ``(P,)``.

    Per cell ``Var(Y_B) = Var(Y_Ck) = V_c`` and ``Cov(Y_B, Y_Ck) = V_kc`` (the
    first-order partial variance), ``Cov(Y_A, Y_Ck) = V_c - VT_kc - s_c^2``
    (the noise is not shared), so::

        S_k  = sum_c V_kc / sum_c V_c
        ST_k = sum_c (VT_kc + s_c^2) / sum_c V_c

    with Ishigami's ``V_1 = w^2 (1 + b pi^4 / 5)^2 / 2``, ``V_2 = w^2 a^2 / 8``,
    ``V_3 = 0``, ``V_13 = w^2 b^2 pi^8 (1/18 - 1/50)``, ``VT_1 = V_1 + V_13``,
    ``VT_2 = V_2``, ``VT_3 = V_13``, ``V_c = V_1 + V_2 + V_13 + s^2``. The
    offsets do not enter.
    """
    w2 = weight * weight
    v1 = w2 * 0.5 * (1.0 + b * math.pi ** 4 / 5.0) ** 2
    v2 = w2 * a * a / 8.0
    v13 = w2 * b * b * math.pi ** 8 * (1.0 / 18.0 - 1.0 / 50.0)
    v = v1 + v2 + v13 + s * s
    first = np.array([v1.sum(), v2.sum(), 0.0]) / v.sum()
    total = np.array([(v1 + v13 + s * s).sum(), (v2 + s * s).sum(),
                      (v13 + s * s).sum()]) / v.sum()
    return first, total
