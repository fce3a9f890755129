"""A software prefetch for the Sobol' fold's input rows.

The batched cell-blocked fold (:mod:`melissa_sa.kernels.sobol_blocked_fold`)
reads ``m (p + 2)`` rows of groups side by side, 256 cells of each per
chunk (40 rows at ``m = 8``, ``p = 3``): more streams than the hardware
prefetcher follows, so each row's next lines came from memory on demand
(measured: with the same group repeated, so that the rows stay in cache,
the fold of 10^6 cells took half the time). :func:`prefetch` asks for a line
a chunk ahead, as LLVM's ``llvm.prefetch`` (read, keep in every cache level):
a hint, never a fault, whatever the address.

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
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["prefetch"]


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
