#!/usr/bin/env python3
"""A "simulation" whose every cell is an Ishigami function with known Sobol' indices.

Command line (the launcher appends the run's parameter values)::

    python ishigami.py [options] x1 x2 x3

The field has ``--cells N`` cells (default 1000) and ``--steps T`` time steps
(default 5). Cell c at time step t (0-based) holds::

    Y[t, c] = (1 + t) * (sin(x1) + a_c sin(x2)^2 + b_c x3^4 sin(x1))

with (a_c, b_c) going linearly from (7, 0.1) at cell 0 (the classic Ishigami
function) to (2, 0.3) at cell N - 1 (``analytic.cell_coefficients``). With
x_k ~ U(-pi, pi) every cell has closed-form first and total Sobol' indices
(``analytic.analytic_indices(a_c, b_c)``), mean ``(1 + t) a_c / 2`` and
variance ``(1 + t)^2 V(a_c, b_c)``. The factor ``1 + t`` changes no index; it
makes every time step different, so a step mixed up with another shows.

Under ``mpiexec -n k`` rank r holds a contiguous block of cells following rank
r - 1's; as even as possible (the first ``N % k`` ranks get one more) or as
given by ``--split 300,700``. ``MELISSA_SERVER_ADDRESS`` set and no
``--no-melissa``: each step goes to the melissa-sa server (field ``--field``,
default ``y``). ``--output path.npy`` writes the ``(steps, N)`` history
(gathered on rank 0). ``--sleep S`` waits S seconds per step (a slower
"simulation", for timeout and fault-tolerance experiments).

The study (``study.json``: x_k ~ U(-pi, pi), 256 Sobol' groups of 5 runs, 2
server ranks; the launcher runs ``python ishigami.py x1 x2 x3`` from this
directory)::

    melissa-sa run examples/ishigami/study.json     # 1280 runs: minutes on 2 cores

and a comparison of its results with the closed form::

    import sys, h5py, numpy as np
    sys.path.insert(0, "examples/ishigami")
    import analytic
    with h5py.File("examples/ishigami/study_out/results.h5") as f:
        s1 = f["y/sobol_first"][:, -1]                   # (3, cells), last step
    a, b = analytic.cell_coefficients(s1.shape[1])
    exact = np.array(analytic.analytic_indices(a, b)[0])
    print(np.abs(s1 - exact).max(axis=1))

What to expect (one run of this study, seed 0, 256 groups): total indices
within 0.01 of the closed form in every cell; first-order indices within
0.02 (x1) and 0.12 (x2); S3 (exactly 0) is the worst, off by up to 0.4: the
x3^4 term makes the output heavy-tailed and the Martinez (correlation)
estimator of a zero first-order index noisy, and its Fisher-z confidence
interval, which assumes near-normal outputs, is then too narrow to cover 0.
Errors shrink like 1/sqrt(groups); all cells share the same samples, so their
errors are correlated.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
from analytic import cell_coefficients, ishigami, step_scale  # noqa: E402

_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
_MPI_RANK_VARS = ("PMIX_RANK",)


def _is_negative_number(token: str) -> bool:
    if not token.startswith("-") or token.startswith("--"):
        return False
    try:
        float(token)
    except ValueError:
        return False
    return True


def protect_negative_numbers(argv: list[str]) -> list[str]:
    """A leading space hides the dash of ``-1.2e-05`` from argparse (float() ignores it)."""
    return [" " + a if _is_negative_number(a) else a for a in argv]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text.strip()}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ishigami.py",
                                description="Per-cell Ishigami field (melissa-sa example).")
    p.add_argument("x", nargs=3, type=_finite_float, metavar="X", help="x1 x2 x3")
    p.add_argument("--cells", type=_positive_int, default=1000, help="cells (1000)")
    p.add_argument("--steps", type=_positive_int, default=5, help="time steps (5)")
    p.add_argument("--split", default=None, metavar="N0,N1,...",
                   help="cells of each MPI rank, e.g. 300,700 (default: as even as possible)")
    p.add_argument("--field", default="y", help="field name sent to melissa (y)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--output", default=None, metavar="PATH.npy",
                   help="write the history as a (steps, cells) .npy array")
    p.add_argument("--sleep", type=_nonnegative_float, default=0.0,
                   help="seconds to wait per step (0)")
    p.add_argument("--no-melissa", action="store_true",
                   help="do not stream to melissa-sa even if MELISSA_SERVER_ADDRESS is set")
    p.add_argument("--mpi", action="store_true",
                   help="use MPI even if no MPI launcher is detected")
    return p


def mpi_requested() -> bool:
    for var in _MPI_SIZE_VARS:
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return any(var in os.environ for var in _MPI_RANK_VARS)


def get_comm(force: bool = False):
    if not (force or mpi_requested()):
        return None
    from mpi4py import MPI  # noqa: PLC0415

    return MPI.COMM_WORLD


def split_counts(n: int, size: int, split: str | None) -> list[int]:
    if split is None:
        if size > n:
            raise ValueError(f"cannot split {n} cells over {size} ranks")
        base, extra = divmod(n, size)
        return [base + (1 if r < extra else 0) for r in range(size)]
    try:
        counts = [int(s) for s in split.split(",")]
    except ValueError:
        raise ValueError(f"--split {split!r}: expected comma-separated integers") from None
    if len(counts) != size:
        raise ValueError(f"--split {split}: {len(counts)} part(s) for {size} rank(s)")
    if any(c < 1 for c in counts):
        raise ValueError(f"--split {split}: every rank needs at least one cell")
    if sum(counts) != n:
        raise ValueError(f"--split {split}: the parts add up to {sum(counts)}, not {n}")
    return counts


def import_melissa_client():
    try:
        from melissa_sa.client import melissa_finalize, melissa_init, melissa_send
    except ModuleNotFoundError as exc:
        if exc.name not in ("melissa_sa", "melissa_sa.client"):
            raise
        root = Path(__file__).resolve().parents[2]
        if not (root / "melissa_sa").is_dir() or str(root) in sys.path:
            raise
        sys.path.insert(0, str(root))
        from melissa_sa.client import melissa_finalize, melissa_init, melissa_send
    return melissa_init, melissa_send, melissa_finalize


def gather(history: np.ndarray, counts: list[int], comm) -> np.ndarray | None:
    """``(steps, local)`` on every rank -> ``(steps, total)`` on rank 0."""
    if comm is None or comm.Get_size() == 1:
        return history
    from mpi4py import MPI  # noqa: PLC0415

    steps = history.shape[0]
    sizes = [steps * c for c in counts]
    displs = [sum(sizes[:r]) for r in range(len(sizes))]
    mpi_type = MPI.DOUBLE if history.dtype == np.float64 else MPI.FLOAT
    root = comm.Get_rank() == 0
    recv = np.empty(sum(sizes), dtype=history.dtype) if root else None
    comm.Gatherv([np.ascontiguousarray(history), mpi_type],
                 [recv, (sizes, displs), mpi_type] if root else None, root=0)
    if not root:
        return None
    out = np.empty((steps, sum(counts)), dtype=history.dtype)
    c0 = 0
    for c, d in zip(counts, displs):
        out[:, c0:c0 + c] = recv[d:d + steps * c].reshape(steps, c)
        c0 += c
    return out


def run(args: argparse.Namespace, comm) -> None:
    size = comm.Get_size() if comm is not None else 1
    rank = comm.Get_rank() if comm is not None else 0
    counts = split_counts(args.cells, size, args.split)
    lo = sum(counts[:rank])
    n = counts[rank]
    a, b = cell_coefficients(args.cells)
    x1, x2, x3 = args.x
    base = ishigami(x1, x2, x3, a[lo:lo + n], b[lo:lo + n])
    dtype = np.dtype(args.dtype)

    melissa = not args.no_melissa and bool(os.environ.get("MELISSA_SERVER_ADDRESS"))
    if melissa:
        m_init, m_send, m_finalize = import_melissa_client()
        m_init(args.field, n, comm)
    history = np.empty((args.steps, n), dtype=dtype) if args.output else None
    for t in range(args.steps):
        if args.sleep:
            time.sleep(args.sleep)
        values = (base * step_scale(t)).astype(dtype, copy=False)  # a new array each step
        if melissa:
            m_send(args.field, values)
        if history is not None:
            history[t] = values
    if melissa:
        m_finalize()
    if history is not None:
        full = gather(history, counts, comm)
        if full is not None:
            np.save(args.output, full)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(protect_negative_numbers(list(sys.argv[1:] if argv is None
                                                            else argv)))
    comm = get_comm(force=args.mpi)
    size = comm.Get_size() if comm is not None else 1
    try:
        split_counts(args.cells, size, args.split)
    except ValueError as exc:
        parser.error(str(exc))  # the same on every rank: all exit 2
    try:
        run(args, comm)
    except BaseException:
        if comm is not None and size > 1:
            import traceback  # noqa: PLC0415

            traceback.print_exc()
            sys.stderr.flush()
            comm.Abort(1)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
