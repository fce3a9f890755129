"""A test simulation with a closed-form field, run by the launcher.

``python analytic_client.py [--split 3,8] x1 x2 ...``: a field of
``sum(split)`` cells over ``NB_STEPS`` steps, cell c at step t equal to
:func:`field_values`. Under ``mpiexec -n 2`` each rank sends its own,
uneven, contiguous part (``--split``).
"""

import argparse
import os
import sys

import numpy as np

NB_STEPS = 3


def field_values(x: np.ndarray, n_cells: int, step: int) -> np.ndarray:
    """The whole field at one step for parameters ``x`` (any length >= 2)."""
    c = np.arange(n_cells, dtype=np.float64)
    a = 1.0 + 0.1 * c
    y = np.sin(x[0]) * a + x[1] ** 2 * (1.0 + 0.05 * step) + 0.3 * x[0] * x[1] * np.cos(c)
    if len(x) > 2:
        y = y + 0.5 * x[2] * c / n_cells
    y[0] = 3.0  # a constant cell
    return y + 1e3 * step


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="3,8")
    parser.add_argument("--fail-once", default="", help="a marker file: crash if absent")
    parser.add_argument("params", nargs="+", type=float)
    args = parser.parse_args()
    split = [int(v) for v in args.split.split(",")]
    comm = None
    rank, size = 0, 1
    if os.environ.get("PMI_RANK") is not None or os.environ.get("PMI_SIZE") is not None:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        rank, size = comm.Get_rank(), comm.Get_size()
    if size == 1:
        split = [sum(split)]
    n_cells = sum(split)
    lo = sum(split[:rank])
    hi = lo + split[rank]
    from melissa_sa.client import melissa_finalize, melissa_init, melissa_send

    melissa_init("f", hi - lo, comm)
    x = np.asarray(args.params)
    for step in range(NB_STEPS):
        melissa_send("f", field_values(x, n_cells, step)[lo:hi])
    melissa_finalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
