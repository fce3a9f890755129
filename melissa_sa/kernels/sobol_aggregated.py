"""Influence sums for the interval of the aggregated (whole-field) Sobol' indices.

The aggregated first-order index of parameter ``k`` is a ratio of two sums
over the cells ``c`` of a field (Gamboa, Janon, Klein & Lagnoux 2014, in
Martinez' correlation form)::

    S_k = N / D,   N = sum_c Cov_c(B, C_k),   D = sum_c sqrt(Var_c(B) Var_c(C_k))

(total order: ``1 - N_A / D_A`` with ``A`` in place of ``B``). By the delta
method ``S_k_hat - S_k ~ (1/n) sum_g (Phi_g - S_k Psi_g) / D`` over the ``n``
groups ``g``, with the whole field's influence values of group ``g``::

    Phi_g = sum_c (b - m_b)(c - m_c) - cov
    Psi_g = sum_c 1/2 sqrt(v_c / v_b) ((b - m_b)^2 - v_b)
                + 1/2 sqrt(v_b / v_c) ((c - m_c)^2 - v_c)

(``b``, ``c``: the group's values of ``Y_B`` and ``Y_Ck`` in cell ``c``).
Here the means ``m``, variances ``v`` and covariance ``cov`` are the running
estimates from the ``n`` groups folded in *before* ``g`` (block 1 of a
:mod:`melissa_sa.kernels.sobol` state, read in place), scaled to predict the
new group: ``E[(b - m_b)(c - m_c)] = cov (1 + 1/n)``, so ``v = X2 f`` and
``cov = XY11 f`` with ``f = (n + 1) / (n (n - 1))``. Then ``Phi_g`` and
``Psi_g`` have mean exactly zero given the groups before ``g``: the sequence
is a martingale difference, its terms are uncorrelated, and the variance of
their sum is the sum of their variances whatever the cells' correlation.

:func:`aggregated_influence` adds one group's ``Phi`` and ``Psi`` for the
first and total order, summed over the cells given, into one row (batch) of
an ``(n_batches, 4, p)`` array; rows of the middle axis::

    0  Phi first  (B, C_k)      1  Psi first
    2  Phi total  (A, C_k)      3  Psi total

Sums over disjoint cells (server ranks) add up. A cell with a zero running
variance on either side adds nothing to ``Psi`` (it adds nothing to ``D``);
its ``Phi`` term is 0 for a constant cell. A NaN value or state makes
``Phi`` NaN (so the interval, like the aggregated index itself, is NaN). The cells are cut
into ``partial.shape[0]`` fixed chunks, one per prange iteration, each summed
into its own row of the caller's ``partial`` scratch array, then added in
chunk order: the result does not depend on the thread count. Nothing is
allocated. The rows ``AHEAD`` cells on are prefetched (``llvm.prefetch``):
the pass reads block 1 only (136 of a full row's 456 bytes at ``p = 3``), a
gapped pattern the hardware prefetcher serves badly; measured at 10^6 cells
and ``p = 3`` it brings the pass from 122-157 % to 89-99 % of the fold
(``docs/statistics.md``).
"""

import math

from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

#: rows ahead whose state is prefetched (measured: 4-16 all about halve the pass)
AHEAD = 8


@intrinsic
def _prefetch(typingctx, array, row, col):
    """Hint the CPU to fetch ``array[row, col]``'s cache line (``llvm.prefetch``,
    read, high locality): the pass reads 136 of a full state row's 456 bytes,
    which the hardware prefetcher does not anticipate."""
    sig = types.void(array, row, col)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]],
                                       wraparound=False, boundscheck=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


#: rows of the middle axis of the batch sums
PHI_FIRST = 0
PSI_FIRST = 1
PHI_TOTAL = 2
PSI_TOTAL = 3


@njit(cache=True, parallel=True, error_model="numpy")
def aggregated_influence(state, group, n, n_params, batch, partial, out):
    """Add one group's whole-slice influence sums into ``out[batch]``.

    ``state``: a SobolMartinez state (compact or full, block 1 read only)
    holding ``n >= 2`` groups, *before* this group is folded in; ``group``:
    ``(rows, n_cells)`` float32 or float64 whose first ``p + 2`` rows are
    ``A, B, C_1 .. C_p``; ``partial``: ``(n_chunks, 4, p)`` float64 scratch;
    ``out``: ``(n_batches, 4, p)`` float64, row ``batch`` incremented.
    """
    p = n_params
    nf = float(n)
    f = (nf + 1.0) / (nf * (nf - 1.0))
    n_cells = group.shape[1]
    n_chunks = partial.shape[0]
    size = (n_cells + n_chunks - 1) // n_chunks
    for t in prange(n_chunks):
        for q in range(4):
            for k in range(p):
                partial[t, q, k] = 0.0
        lo = t * size
        hi = min(lo + size, n_cells)
        last = 4 + 4 * p                    # block 1's last column
        for c in range(lo, hi):
            ahead = c + AHEAD
            if ahead < hi:
                for col in range(0, last + 8, 8):   # every cache line of block 1
                    _prefetch(state, ahead, min(col, last))
            s = state[c, 0]
            da = (group[0, c] - s) - state[c, 1]
            db = (group[1, c] - s) - state[c, 2]
            a2 = state[c, 3]
            b2 = state[c, 4]
            # Psi's term 1/2 (sqrt(c2/b2) eb + sqrt(b2/c2) ec) as sc hb + sb hc,
            # with hx = ex / (2 sx): one sqrt and one division per variable
            sa = math.sqrt(a2)
            sb = math.sqrt(b2)
            ha = 0.5 * (da * da - a2 * f) / sa if a2 > 0.0 else 0.0
            hb = 0.5 * (db * db - b2 * f) / sb if b2 > 0.0 else 0.0
            for k in range(p):
                i = 5 + 4 * k
                dc = (group[2 + k, c] - s) - state[c, i]
                c2 = state[c, i + 1]
                partial[t, 0, k] += db * dc - state[c, i + 3] * f
                partial[t, 2, k] += da * dc - state[c, i + 2] * f
                if c2 > 0.0:
                    sc = math.sqrt(c2)
                    hc = 0.5 * (dc * dc - c2 * f) / sc
                    if b2 > 0.0:
                        partial[t, 1, k] += sc * hb + sb * hc
                    if a2 > 0.0:
                        partial[t, 3, k] += sc * ha + sa * hc
    for t in range(n_chunks):
        for q in range(4):
            for k in range(p):
                out[batch, q, k] += partial[t, q, k]
