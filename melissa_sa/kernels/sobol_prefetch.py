"""Software prefetch for the Sobol' kernels: LLVM's ``llvm.prefetch``.

:func:`prefetch` asks the caches for the line of one element (read, keep in
every cache level): a hint, never a fault. Two kernels need it:

* the batched cell-blocked fold (:mod:`melissa_sa.kernels.sobol_blocked_fold`)
  reads ``m (p + 2)`` rows of groups side by side, a block of 16 cells of
  each at a time (20 rows at ``m = 4``, ``p = 3``): more streams than the
  hardware prefetcher follows, so each row's next lines came from memory on
  demand. :func:`prefetch_cells` fetches a block of every row a chunk ahead
  (measured at 10^6 cells, four groups a pass, 2 threads: 9.2 ms CPU per
  group against 14.5 without; with the same group repeated, so that its rows
  stay in cache, the fold took half the time before);
* the influence pass (:mod:`melissa_sa.kernels.sobol_influence`) reads
  block 1 of each row of the row layout, a gapped pattern.

>>> import numpy as np
>>> from numba import njit
>>> @njit
... def touch(a):
...     prefetch(a, 0)
...     return a[0]
>>> float(touch(np.ones(4)))
1.0
"""

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["prefetch", "prefetch_cells"]

#: float64 per 64-byte cache line
LINE = 8


@intrinsic
def prefetch(typingctx, arr, index):
    """Ask the caches for the line of ``arr[index]`` (a 1-D array, an index
    inside it: no bounds check, no wrap-around)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1
            and isinstance(index, types.Integer)):
        return None
    sig = types.void(arr, index)

    def codegen(context, builder, signature, args):
        aryty, idxty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = context.cast(builder, args[1], idxty, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx],
                                       wraparound=False, boundscheck=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read (0), locality 3 (keep in every level), data cache (1)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def prefetch_cells(group, lo):
    """Prefetch cells ``lo .. lo + 15`` (two lines of float64, one of
    float32) of every row of ``group`` (``(rows, n_cells)``), those inside it."""
    n_cells = group.shape[1]
    if lo < n_cells:
        for row in range(group.shape[0]):
            src = group[row]
            prefetch(src, lo)
            if lo + LINE < n_cells:
                prefetch(src, lo + LINE)
