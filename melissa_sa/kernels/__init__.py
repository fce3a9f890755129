"""Numba one-pass kernels: pure functions updating per-cell state in place.

Every kernel is ``@njit(cache=True, parallel=True)`` with a ``prange`` loop
over cells, takes float32 or float64 samples, keeps float64 (or int64)
state in a per-cell row layout, and allocates nothing in its loop. Kernels
know nothing of sockets, files or MPI.
"""
