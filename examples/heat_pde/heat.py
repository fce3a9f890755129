#!/usr/bin/env python3
"""2-D heat equation on the unit square: the melissa-sa example simulation.

    u_t = alpha * (u_xx + u_yy)   on (0, 1) x (0, 1),  t > 0
    u = T0 inside at t = 0;  u = T_left, T_right, T_bottom, T_top on the walls

Command line (the launcher appends the run's parameter values)::

    python heat.py [options] T0 T1 [T2 [T3 [T4]]]

``T0`` is the initial temperature; ``T1..T4`` are the wall temperatures in
the order left (x = 0), right (x = 1), bottom (y = 0), top (y = 1). With
fewer than four wall values the remaining walls reuse the last one given:
``T0 T1`` puts every wall at T1, ``T0 T1 T2`` puts the left wall at T1 and the
right, bottom and top walls at T2 (the 3-parameter study), and so on.

Discretisation
--------------
Second-order finite differences on the ``nx x ny`` interior nodes
``x_i = (i + 1) / (nx + 1)``, ``y_j = (j + 1) / (ny + 1)`` (the walls are the
nodes on the boundary). Cell ``c = j * nx + i``: the field is numbered row by
row, bottom row first. Time schemes (``--scheme``):

``implicit`` (default)
    the walls are lifted out: ``u = w + e``, where ``w`` is the exact steady
    state of the discrete problem (the 5-point discrete Laplace solution,
    computed once in closed form by separation of variables), and ``e``
    solves the heat equation with zero walls by locally one-dimensional
    backward Euler: ``(I - dt A_x) e* = e^n``, then
    ``(I - dt A_y) e^{n+1} = e*``. Each half step is a tridiagonal solve
    (Thomas algorithm, factorised once, vectorised over the other axis).
    Unconditionally stable and strongly damping at any ``dt`` (no
    oscillation), first order in time, and it converges to the exact
    discrete steady state (splitting the walls' terms instead would leave an
    O(dt) error at the corners). The maximum principle holds up to an
    overshoot of at most about 0.1 % of the temperature range in the first
    steps near corners where the walls differ.
``explicit``
    forward Euler with the 5-point stencil, sub-stepped automatically so that
    every sub-step satisfies ``2 alpha dt_sub (1/hx^2 + 1/hy^2) <= 1``
    (stable, and monotone: the maximum principle holds exactly). Exact
    steady state too, but the cost grows with ``dt / h^2``. One output step
    is ``dt`` of physical time in both schemes.

Time step ``t`` (0-based) of the output is the field at time ``(t + 1) * dt``,
i.e. after ``t + 1`` advances from the initial state.

MPI
---
Run under ``mpiexec -n k`` (detected from the MPI launcher's environment, or
forced by ``--mpi``) the mesh is split by rows: rank ``r`` holds a contiguous
block of rows, i.e. the contiguous slice of the global cell numbering that
follows rank ``r - 1``'s. Rows are dealt as evenly as possible (the first
``ny % k`` ranks get one more row) unless ``--split 30,70`` gives the row
count of every rank. The explicit scheme exchanges halo rows with its two
neighbours (``Sendrecv``); the halo is up to 8 rows deep, so that one exchange
serves up to 8 sub-steps. The implicit scheme solves x-lines locally and
y-lines after a row-to-column transpose (``Alltoallv``) and back.
Every cell goes through the same floating-point operations whatever the
decomposition, so the field is bit-for-bit the same on any number of ranks.

Output
------
When ``MELISSA_SERVER_ADDRESS`` is set (the launcher sets it) and
``--no-melissa`` is not given, each time step is streamed to the melissa-sa
server: ``melissa_init(field, local_cells, comm)``, then after each advance
``melissa_send(field, local_values)``, then ``melissa_finalize()``.
``--output path.npy`` (in any mode) writes the whole history as one
``(steps, nx * ny)`` array (gathered on rank 0): the "classic way" baseline,
and what the tests check.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

#: Environment variables by which MPI launchers announce the world size.
_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
#: Environment variables that mean "started by an MPI launcher" (size unknown).
_MPI_RANK_VARS = ("PMIX_RANK",)

WALL_NAMES = ("left", "right", "bottom", "top")


# ---------------------------------------------------------------------------
# command line


def _is_negative_number(token: str) -> bool:
    if not token.startswith("-") or token.startswith("--"):
        return False
    try:
        float(token)
    except ValueError:
        return False
    return True


def protect_negative_numbers(argv: list[str]) -> list[str]:
    """Let argparse take ``-1e-05`` or ``-inf``-like values as arguments.

    argparse treats a token starting with ``-`` as an option unless it looks
    like a plain decimal; the launcher may pass any float ``repr`` (e.g.
    ``-1.2e-05``). A leading space hides the dash from argparse and
    :func:`float` ignores it.
    """
    return [" " + a if _is_negative_number(a) else a for a in argv]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text.strip()}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="heat.py",
        description="2-D heat equation on the unit square (melissa-sa example).",
        epilog="Walls: T1..T4 = left, right, bottom, top; missing walls reuse the last value.",
    )
    p.add_argument("temperatures", nargs="+", type=_finite_float, metavar="T",
                   help="T0 (initial temperature) then 1 to 4 wall temperatures")
    p.add_argument("--nx", type=_positive_int, default=100, help="interior nodes along x (100)")
    p.add_argument("--ny", type=_positive_int, default=100, help="interior nodes along y (100)")
    p.add_argument("--steps", type=_positive_int, default=100, help="time steps (100)")
    p.add_argument("--dt", type=_positive_float, default=1e-3, help="time step (1e-3)")
    p.add_argument("--alpha", type=_positive_float, default=1.0, help="diffusivity (1.0)")
    p.add_argument("--scheme", choices=("implicit", "explicit"), default="implicit",
                   help="implicit: LOD backward Euler (default); explicit: sub-stepped "
                        "forward Euler")
    p.add_argument("--split", default=None, metavar="N0,N1,...",
                   help="rows of each MPI rank, e.g. 30,70 (default: as even as possible)")
    p.add_argument("--field", default="temperature", help="field name sent to melissa")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="dtype of the values sent / written (float64)")
    p.add_argument("--output", default=None, metavar="PATH.npy",
                   help="write the history as a (steps, nx*ny) .npy array")
    p.add_argument("--no-melissa", action="store_true",
                   help="do not stream to melissa-sa even if MELISSA_SERVER_ADDRESS is set")
    p.add_argument("--mpi", action="store_true",
                   help="use MPI even if no MPI launcher is detected")
    p.add_argument("-v", "--verbose", action="store_true", help="timings on stderr")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(protect_negative_numbers(argv))
    if not 2 <= len(args.temperatures) <= 5:
        parser.error(f"expected T0 and 1 to 4 wall temperatures, got "
                     f"{len(args.temperatures)} value(s)")
    args.initial = args.temperatures[0]
    walls = list(args.temperatures[1:])
    walls += [walls[-1]] * (4 - len(walls))
    args.walls = tuple(walls)  # left, right, bottom, top
    return args


# ---------------------------------------------------------------------------
# MPI and decomposition


def mpi_requested() -> bool:
    """True when started by an MPI launcher with more than one process."""
    for var in _MPI_SIZE_VARS:
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return any(var in os.environ for var in _MPI_RANK_VARS)


def get_comm(force: bool = False):
    """``MPI.COMM_WORLD`` under an MPI launcher (or with ``force``), else None."""
    if not (force or mpi_requested()):
        return None
    from mpi4py import MPI  # noqa: PLC0415 (only MPI runs pay for it)

    return MPI.COMM_WORLD


def split_counts(n: int, size: int, split: str | None) -> list[int]:
    """Items per rank: ``split`` (``"30,70"``) or as even as possible."""
    if split is None:
        if size > n:
            raise ValueError(f"cannot split {n} rows over {size} ranks")
        base, extra = divmod(n, size)
        return [base + (1 if r < extra else 0) for r in range(size)]
    try:
        counts = [int(s) for s in split.split(",")]
    except ValueError:
        raise ValueError(f"--split {split!r}: expected comma-separated integers") from None
    if len(counts) != size:
        raise ValueError(f"--split {split}: {len(counts)} part(s) for {size} rank(s)")
    if any(c < 1 for c in counts):
        raise ValueError(f"--split {split}: every rank needs at least one row")
    if sum(counts) != n:
        raise ValueError(f"--split {split}: the parts add up to {sum(counts)}, not {n}")
    return counts


def offsets_of(counts: list[int]) -> list[int]:
    out, acc = [], 0
    for c in counts:
        out.append(acc)
        acc += c
    return out


# ---------------------------------------------------------------------------
# solvers


def _decay(kappa: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """``sinh(kappa (n - j)) / sinh(kappa (n + 1))``, without overflow: the discrete
    harmonic profile that is 1 at j = -1 and 0 at j = n. Shapes (modes, 1), (1, n)."""
    return np.exp(-kappa * (j + 1)) * (np.expm1(-2.0 * kappa * (n - j))
                                       / np.expm1(-2.0 * kappa * (n + 1)))


def discrete_steady_state(nx: int, ny: int, t_left: float, t_right: float,
                          t_bottom: float, t_top: float, hx: float, hy: float) -> np.ndarray:
    """The exact solution ``w`` (shape ``(ny, nx)``) of the 5-point discrete Laplace
    equation with the given wall temperatures, by separation of variables: a
    discrete sine series along each wall, a discrete sinh profile across.

    Computed from the full index ranges only (every rank computes the same
    array and keeps its rows), so it does not depend on the decomposition.
    """
    w = np.zeros((ny, nx))
    for n_along, n_across, h_along, h_across, lo, hi, axis in (
            (nx, ny, hx, hy, t_bottom, t_top, 0), (ny, nx, hy, hx, t_left, t_right, 1)):
        if lo == 0.0 and hi == 0.0:
            continue
        m = np.arange(1, n_along + 1, dtype=np.float64)[:, None]          # modes
        k = np.arange(n_along, dtype=np.float64)[None, :]                # nodes along
        sines = np.sin(m * np.pi * (k + 1) / (n_along + 1))
        coef = 2.0 / (n_along + 1) * sines.sum(axis=1, keepdims=True)   # sine series of 1
        lam = 4.0 / h_along**2 * np.sin(m * np.pi / (2 * (n_along + 1))) ** 2
        kappa = np.arccosh(1.0 + 0.5 * h_across**2 * lam)
        j = np.arange(n_across, dtype=np.float64)[None, :]               # nodes across
        across = lo * _decay(kappa, j, n_across) + hi * _decay(kappa, n_across - 1 - j, n_across)
        # w[across, along] += sum over modes of coef * across-profile * sine
        part = np.zeros((n_across, n_along))
        for q in range(n_along):
            part += np.multiply.outer(coef[q, 0] * across[q], sines[q])
        w += part if axis == 0 else part.T
    return w


class Tridiagonal:
    """``tridiag(-r, 1 + 2r, -r)`` of size n, factorised once (Thomas algorithm).

    :meth:`solve` works in place along axis 0 of a C-contiguous ``(n, m)``
    array, vectorised over the m right-hand sides. Each right-hand side goes
    through the same operations whatever m, so results do not depend on how
    the lines are batched (i.e. on the MPI decomposition).
    """

    def __init__(self, n: int, r: float) -> None:
        self.n, self.r = n, r
        diag = 1.0 + 2.0 * r
        self.inv = np.empty(n)     # 1 / pivot
        self.cprime = np.empty(n)  # modified super-diagonal
        self.inv[0] = 1.0 / diag
        self.cprime[0] = -r * self.inv[0]
        for i in range(1, n):
            self.inv[i] = 1.0 / (diag + r * self.cprime[i - 1])
            self.cprime[i] = -r * self.inv[i]

    def solve(self, d: np.ndarray, tmp: np.ndarray) -> None:
        r, inv, cp = self.r, self.inv, self.cprime
        d[0] *= inv[0]
        for i in range(1, self.n):
            np.multiply(d[i - 1], r, out=tmp)
            d[i] += tmp
            d[i] *= inv[i]
        for i in range(self.n - 2, -1, -1):
            np.multiply(d[i + 1], cp[i], out=tmp)
            d[i] -= tmp


class HeatSolver:
    """The local part (a block of rows) of the global field and its time stepping."""

    def __init__(self, args: argparse.Namespace, comm=None) -> None:
        self.comm = comm
        self.size = comm.Get_size() if comm is not None else 1
        self.rank = comm.Get_rank() if comm is not None else 0
        self.nx, self.ny = nx, ny = args.nx, args.ny
        self.dt, self.alpha = args.dt, args.alpha
        self.scheme = args.scheme
        self.t_left, self.t_right, self.t_bottom, self.t_top = args.walls

        self.row_counts = split_counts(ny, self.size, args.split)
        self.row_offsets = offsets_of(self.row_counts)
        self.nrows = self.row_counts[self.rank]
        self.row0 = self.row_offsets[self.rank]
        self.is_bottom = self.rank == 0
        self.is_top = self.rank == self.size - 1

        self.hx, self.hy = 1.0 / (nx + 1), 1.0 / (ny + 1)
        self.u = np.full((self.nrows, nx), float(args.initial))
        self.steps_done = 0

        if self.scheme == "implicit":
            self._setup_implicit()
        else:
            self._setup_explicit()

    # -- global numbering ------------------------------------------------------
    @property
    def n_cells(self) -> int:
        return self.nx * self.ny

    @property
    def local_cells(self) -> int:
        return self.nrows * self.nx

    @property
    def cell_offset(self) -> int:
        return self.row0 * self.nx

    def values(self) -> np.ndarray:
        """The local field, flat, in global cell order (a view)."""
        return self.u.reshape(-1)

    # -- implicit: lifting + LOD backward Euler ----------------------------------
    def _setup_implicit(self) -> None:
        nx, ny = self.nx, self.ny
        self.rx = self.alpha * self.dt / self.hx**2
        self.ry = self.alpha * self.dt / self.hy**2
        self.solver_x = Tridiagonal(nx, self.rx)
        self.solver_y = Tridiagonal(ny, self.ry)
        self.tmp_x = np.empty(self.nrows)
        self.xlines = np.empty((nx, self.nrows))
        rows = slice(self.row0, self.row0 + self.nrows)
        self.w = discrete_steady_state(nx, ny, self.t_left, self.t_right,
                                       self.t_bottom, self.t_top, self.hx, self.hy)[rows]
        self.e = self.u - self.w
        if self.size > 1:
            # column layout for the y-solves: this rank owns columns [c0, c1) of all rows
            self.col_counts = (split_counts(nx, self.size, None) if nx >= self.size
                               else [1 if r < nx else 0 for r in range(self.size)])
            self.col_offsets = offsets_of(self.col_counts)
            ncols = self.col_counts[self.rank]
            self.ylines = np.empty((ny, ncols))
            self.tmp_y = np.empty(ncols)
            # row layout -> column layout: to rank s go my rows x its columns
            self.send_counts = [self.nrows * c for c in self.col_counts]
            self.recv_counts = [n * ncols for n in self.row_counts]
            self.send_buf = np.empty(self.local_cells)
            self.back_buf = np.empty(self.local_cells)
        else:
            self.tmp_y = np.empty(nx)

    def _to_columns(self) -> None:
        from mpi4py import MPI  # noqa: PLC0415

        xl, buf = self.xlines, self.send_buf  # xl: (nx, nrows), the x-solved field
        pos = 0
        for c0, nc in zip(self.col_offsets, self.col_counts):
            block = buf[pos:pos + self.nrows * nc].reshape(self.nrows, nc)
            block[...] = xl[c0:c0 + nc].T
            pos += self.nrows * nc
        self.comm.Alltoallv(
            [buf, (self.send_counts, offsets_of(self.send_counts)), MPI.DOUBLE],
            [self.ylines, (self.recv_counts, offsets_of(self.recv_counts)), MPI.DOUBLE])

    def _from_columns(self) -> np.ndarray:
        from mpi4py import MPI  # noqa: PLC0415

        buf = self.back_buf
        self.comm.Alltoallv(
            [self.ylines, (self.recv_counts, offsets_of(self.recv_counts)), MPI.DOUBLE],
            [buf, (self.send_counts, offsets_of(self.send_counts)), MPI.DOUBLE])
        e = np.empty((self.nrows, self.nx))
        pos = 0
        for c0, nc in zip(self.col_offsets, self.col_counts):
            e[:, c0:c0 + nc] = buf[pos:pos + self.nrows * nc].reshape(self.nrows, nc)
            pos += self.nrows * nc
        return e

    def _step_implicit(self) -> None:
        # e = u - w solves the heat equation with zero walls: (I - dt A_x) e* = e,
        # then (I - dt A_y) e' = e*. x-lines are local (solved as columns of e.T);
        # y-lines need whole columns (a transpose across the ranks).
        xl = self.xlines
        xl[...] = self.e.T
        self.solver_x.solve(xl, self.tmp_x)
        if self.size > 1:
            self._to_columns()
            self.solver_y.solve(self.ylines, self.tmp_y)
            self.e = self._from_columns()
        else:
            e = np.ascontiguousarray(xl.T)
            self.solver_y.solve(e, self.tmp_y)
            self.e = e
        self.u = self.w + self.e

    # -- explicit: sub-stepped forward Euler --------------------------------------
    #: most sub-steps between two halo exchanges (the halo is this many rows deep)
    MAX_HALO = 8

    def _setup_explicit(self) -> None:
        inv_h2 = 1.0 / self.hx**2 + 1.0 / self.hy**2
        self.substeps = max(1, math.ceil(2.0 * self.alpha * self.dt * inv_h2 * (1 + 1e-12)))
        dts = self.dt / self.substeps
        self.rx = self.alpha * dts / self.hx**2
        self.ry = self.alpha * dts / self.hy**2
        self.c0 = 1.0 - 2.0 * self.rx - 2.0 * self.ry
        # A deep halo: H rows from each neighbour let a rank do H sub-steps per
        # exchange (the stale rows at the edge of the extended block spoil one
        # more row per sub-step, and never reach the rank's own rows).
        if self.size > 1:
            self.halo = min(self.substeps, self.MAX_HALO, min(self.row_counts))
        else:
            self.halo = self.substeps
        g_lo = max(self.row0 - self.halo, 0)
        g_hi = min(self.row0 + self.nrows + self.halo, self.ny)
        self.n_below = self.row0 - g_lo                   # halo rows from rank - 1
        self.n_above = g_hi - (self.row0 + self.nrows)    # halo rows from rank + 1
        # extended block: global rows g_lo - 1 .. g_hi, plus the wall columns
        ext = np.full((g_hi - g_lo + 2, self.nx + 2), float(self.u[0, 0]))
        ext[:, 0] = self.t_left
        ext[:, -1] = self.t_right
        if g_lo == 0:
            ext[0, 1:-1] = self.t_bottom
        if g_hi == self.ny:
            ext[-1, 1:-1] = self.t_top
        self.ext = ext
        self.own = slice(1 + self.n_below, 1 + self.n_below + self.nrows)
        shape = (ext.shape[0] - 2, self.nx)
        self.work = np.empty(shape)
        self.work2 = np.empty(shape)
        if self.size > 1:
            from mpi4py import MPI  # noqa: PLC0415

            self.below = MPI.PROC_NULL if self.is_bottom else self.rank - 1
            self.above = MPI.PROC_NULL if self.is_top else self.rank + 1

    def _halo_exchange(self) -> None:
        """Whole rows (wall columns included, so the buffers are contiguous)."""
        e, comm, h = self.ext, self.comm, self.halo
        own0, own1 = self.own.start, self.own.stop
        # my bottom rows go down; the halo above comes from the rank above
        comm.Sendrecv(e[own0:own0 + h] if self.n_below else e[0:0], dest=self.below,
                      sendtag=1, recvbuf=e[own1:own1 + self.n_above], source=self.above,
                      recvtag=1)
        # my top rows go up; the halo below comes from the rank below
        comm.Sendrecv(e[own1 - h:own1] if self.n_above else e[0:0], dest=self.above,
                      sendtag=2, recvbuf=e[own0 - self.n_below:own0], source=self.below,
                      recvtag=2)

    def _substep(self) -> None:
        e, w, w2 = self.ext, self.work, self.work2
        inner = e[1:-1, 1:-1]
        # u <- c0 u + rx (W + E) + ry (S + N): a convex combination
        np.add(e[1:-1, :-2], e[1:-1, 2:], out=w)
        w *= self.rx
        np.add(e[:-2, 1:-1], e[2:, 1:-1], out=w2)
        w2 *= self.ry
        w += w2
        np.multiply(inner, self.c0, out=w2)
        w += w2
        inner[...] = w

    def _step_explicit(self) -> None:
        own = self.ext[self.own, 1:-1]
        own[...] = self.u
        remaining = self.substeps
        while remaining:
            if self.size > 1:
                self._halo_exchange()
            k = min(self.halo, remaining)
            for _ in range(k):
                self._substep()
            remaining -= k
        self.u = own.copy()

    # -- public -----------------------------------------------------------------
    def step(self) -> None:
        """Advance by dt. ``self.u`` is then a new array, never modified later
        (so a zero-copy send of the previous step's values stays valid)."""
        if self.scheme == "implicit":
            self._step_implicit()
        else:
            self._step_explicit()
        self.steps_done += 1

    def gather_history(self, history: np.ndarray) -> np.ndarray | None:
        """``(steps, local_cells)`` on every rank -> ``(steps, n_cells)`` on rank 0."""
        if self.size == 1:
            return history
        steps = history.shape[0]
        cell_counts = [n * self.nx for n in self.row_counts]
        counts = [steps * c for c in cell_counts]
        displs = offsets_of(counts)
        recv = np.empty(steps * self.n_cells, dtype=history.dtype) if self.rank == 0 else None
        from mpi4py import MPI  # noqa: PLC0415

        mpi_type = MPI.DOUBLE if history.dtype == np.float64 else MPI.FLOAT
        sendbuf = np.ascontiguousarray(history)
        self.comm.Gatherv([sendbuf, mpi_type],
                          [recv, (counts, displs), mpi_type] if self.rank == 0 else None,
                          root=0)
        if self.rank != 0:
            return None
        out = np.empty((steps, self.n_cells), dtype=history.dtype)
        for c0, nc, d in zip(offsets_of(cell_counts), cell_counts, displs):
            out[:, c0:c0 + nc] = recv[d:d + steps * nc].reshape(steps, nc)
        return out


# ---------------------------------------------------------------------------
# melissa


def import_melissa_client():
    """``melissa_sa.client``'s three calls; falls back to this source tree."""
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


def use_melissa(args: argparse.Namespace) -> bool:
    return not args.no_melissa and bool(os.environ.get("MELISSA_SERVER_ADDRESS"))


# ---------------------------------------------------------------------------
# main


def run(args: argparse.Namespace, comm) -> None:
    t_start = time.perf_counter()
    sim = HeatSolver(args, comm)
    dtype = np.dtype(args.dtype)
    melissa = use_melissa(args)
    if melissa:
        m_init, m_send, m_finalize = import_melissa_client()
        m_init(args.field, sim.local_cells, comm)
    history = np.empty((args.steps, sim.local_cells), dtype=dtype) if args.output else None
    if args.verbose and sim.rank == 0:
        print(f"heat.py: {args.nx}x{args.ny} cells, {args.steps} steps of dt={args.dt}, "
              f"{args.scheme}, {sim.size} rank(s) with rows {sim.row_counts}, "
              f"T0={args.initial}, walls (l, r, b, t)={args.walls}, "
              f"melissa={'on' if melissa else 'off'}", file=sys.stderr, flush=True)
    t_solve = 0.0
    for t in range(args.steps):
        t0 = time.perf_counter()
        sim.step()
        t_solve += time.perf_counter() - t0
        # a new array each step (never modified afterwards), in the requested dtype
        values = sim.values().astype(dtype, copy=True)
        if melissa:
            m_send(args.field, values)
        if history is not None:
            history[t] = values
    if melissa:
        m_finalize()
    if history is not None:
        full = sim.gather_history(history)
        if full is not None:
            np.save(args.output, full)
    if args.verbose and sim.rank == 0:
        total = time.perf_counter() - t_start
        print(f"heat.py: {total:.3f} s ({1e3 * t_solve / args.steps:.3f} ms/step solving)",
              file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    comm = get_comm(force=args.mpi)
    size = comm.Get_size() if comm is not None else 1
    try:
        split_counts(args.ny, size, args.split)
    except ValueError as exc:
        build_parser().error(str(exc))  # the same on every rank: all exit 2
    try:
        run(args, comm)
    except BaseException:
        if comm is not None and size > 1:
            # do not leave the other ranks blocked in a collective
            import traceback  # noqa: PLC0415

            traceback.print_exc()
            sys.stderr.flush()
            comm.Abort(1)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
