"""Writing one time step of a statistic while the next one is computed.

The results writer takes lazy statistics: a callable ``t -> arrays`` per
statistic (or per group of statistics computed together, the Sobol' indices
and intervals). Computing a step (the interval kernel: about 0.4 s per 10^6
cells and p = 3 on 2 threads) and writing it (HDF5 copying its 144 MB into
the page cache: 0.1 to 0.3 s) are independent, so :class:`WriteBehind` hands the
write of step ``t`` to one worker thread while the caller computes step
``t + 1``. At most two steps are alive: the one being written and the one
being computed.

**Why the writes go to the worker, not the computations.** The kernels stay
in the calling thread, so nothing changes for them: Numba's thread count
(kept per Python thread, see :func:`~melissa_sa.stats.set_threads`) is the
caller's, two threads never run kernels at once (Numba's ``workqueue``
threading layer aborts on that; ``tests/test_results_pipeline.py`` runs a
finalisation under it), and a computation's errors are raised where they
always were. The overlap is real because both sides release the
GIL: h5py around HDF5's write, the kernels by ``nogil=True``
(``martinez_interval``, ``martinez_indices``, the folds that flush buffered
groups, the second-order interval, the quantile values). h5py's own lock
serialises HDF5 calls, so the caller may still use h5py meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["WriteBehind"]


class WriteBehind:
    """One write at a time in a worker thread, behind the caller's computing.

    Use it as a context manager::

        with WriteBehind() as behind:
            for t in range(T):
                arrays = compute(t)       # while step t - 1 is being written
                behind.submit(write, t, arrays)

    :meth:`submit` first waits for the previous write, so writes happen one
    after another in submission order, and raises that write's exception
    (the same object) if it failed. Leaving the block waits for the last
    write and raises its exception; when the block is left by an exception
    of the caller's, the write in flight is still waited for, and its own
    exception, if any, is raised instead, with the caller's as its context:
    the first error in program order wins, as in a plain loop.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def __enter__(self) -> WriteBehind:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="melissa-results-write")
        return self

    def submit(self, write: Callable[..., object], *args) -> None:
        """Wait for the previous write, then start ``write(*args)`` in the worker."""
        if self._pool is None:
            raise RuntimeError("WriteBehind.submit is called inside its with block")
        self.wait()
        self._pending = self._pool.submit(write, *args)

    def wait(self) -> None:
        """Wait for the write in flight, if any; raise its exception."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __exit__(self, *exc_info) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
            self._pool = None
