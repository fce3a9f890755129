"""The layout-1 Sobol' fold (melissa-sa before layout 2), as a benchmark baseline.

Layout 1 kept block 2 of the state (see :mod:`melissa_sa.kernels.sobol`) as
*centred* third- and fourth-order sums, updated by Pébay's (2008)
recursions; layout 2 keeps power sums of the cell-shifted values instead.
This copy of the old update kernel (verbatim but for its name) exists only
so that ``benchmarks/kernels.py`` measures the old and the new fold side by
side in one run; nothing in melissa-sa uses it.
"""

from numba import njit, prange


@njit(cache=True, parallel=True, error_model="numpy")
def layout1_update(state, group, n):
    """Fold one group into a full state (blocks 1 and 2), in place.

    ``state``: (n_cells, 9 + 16p) float64; ``group``: (p + 2, n_cells)
    float32 or float64, rows A, B, C_1..C_p; ``n``: groups already folded in.
    """
    p = group.shape[0] - 2
    nf = float(n)
    r = 1.0 / (nf + 1.0)
    r2 = r * r
    c2 = nf * r
    c3 = nf * (nf - 1.0) * r2
    c4 = nf * (nf * nf - nf + 1.0) * r2 * r
    h = 5 + 4 * p
    first = n == 0
    for c in prange(group.shape[1]):
        row = state[c]
        if first:
            row[0] = group[0, c]
        s = row[0]
        da = (group[0, c] - s) - row[1]
        db = (group[1, c] - s) - row[2]
        a2 = row[3]
        b2 = row[4]
        a3 = row[h]
        a4 = row[h + 1]
        b3 = row[h + 2]
        b4 = row[h + 3]
        rda = r * da
        rdb = r * db
        for k in range(p):
            i = 5 + 4 * k
            j = h + 4 + 12 * k
            dc = (group[2 + k, c] - s) - row[i]
            rdc = r * dc
            y2 = row[i + 1]
            y3 = row[j]
            y4 = row[j + 1]
            # pair (A, C_k): slots i+2 and j+2 .. j+6
            m11 = row[i + 2]
            m21 = row[j + 2]
            m12 = row[j + 3]
            row[j + 4] += (-3.0 * rda * m21 - rdc * a3 + 3.0 * rda * rda * m11
                           + 3.0 * rda * rdc * a2 + c4 * da * da * da * dc)
            row[j + 5] += (-2.0 * rda * m12 - 2.0 * rdc * m21 + rda * rda * y2
                           + rdc * rdc * a2 + 4.0 * rda * rdc * m11
                           + c4 * da * da * dc * dc)
            row[j + 6] += (-3.0 * rdc * m12 - rda * y3 + 3.0 * rdc * rdc * m11
                           + 3.0 * rda * rdc * y2 + c4 * da * dc * dc * dc)
            row[j + 2] = m21 - 2.0 * rda * m11 - rdc * a2 + c3 * da * da * dc
            row[j + 3] = m12 - 2.0 * rdc * m11 - rda * y2 + c3 * da * dc * dc
            row[i + 2] = m11 + c2 * da * dc
            # pair (B, C_k): slots i+3 and j+7 .. j+11
            m11 = row[i + 3]
            m21 = row[j + 7]
            m12 = row[j + 8]
            row[j + 9] += (-3.0 * rdb * m21 - rdc * b3 + 3.0 * rdb * rdb * m11
                           + 3.0 * rdb * rdc * b2 + c4 * db * db * db * dc)
            row[j + 10] += (-2.0 * rdb * m12 - 2.0 * rdc * m21 + rdb * rdb * y2
                            + rdc * rdc * b2 + 4.0 * rdb * rdc * m11
                            + c4 * db * db * dc * dc)
            row[j + 11] += (-3.0 * rdc * m12 - rdb * y3 + 3.0 * rdc * rdc * m11
                            + 3.0 * rdb * rdc * y2 + c4 * db * dc * dc * dc)
            row[j + 7] = m21 - 2.0 * rdb * m11 - rdc * b2 + c3 * db * db * dc
            row[j + 8] = m12 - 2.0 * rdc * m11 - rdb * y2 + c3 * db * dc * dc
            row[i + 3] = m11 + c2 * db * dc
            # C_k itself
            row[j + 1] = y4 - 4.0 * rdc * y3 + 6.0 * rdc * rdc * y2 + c4 * dc * dc * dc * dc
            row[j] = y3 - 3.0 * rdc * y2 + c3 * dc * dc * dc
            row[i + 1] = y2 + c2 * dc * dc
            row[i] += rdc
        row[h + 1] = a4 - 4.0 * rda * a3 + 6.0 * rda * rda * a2 + c4 * da * da * da * da
        row[h] = a3 - 3.0 * rda * a2 + c3 * da * da * da
        row[h + 3] = b4 - 4.0 * rdb * b3 + 6.0 * rdb * rdb * b2 + c4 * db * db * db * db
        row[h + 2] = b3 - 3.0 * rdb * b2 + c3 * db * db * db
        row[3] = a2 + c2 * da * da
        row[4] = b2 + c2 * db * db
        row[1] += rda
        row[2] += rdb
