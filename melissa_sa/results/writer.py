"""Writing ``OUT/results.h5``: serial or MPI, never gathered.

**Parallel write without gathering.** The PyPI h5py has no MPI-IO driver, so
the ranks take turns: rank 0 creates ``results.h5.tmp`` with every dataset at
full size and writes its own slices; each rank ``k > 0`` waits for a token
from rank ``k - 1`` (polling ``Iprobe`` with short sleeps: a blocking MPI
receive busy-spins), opens the file ``r+``, writes its hyperslabs, closes it
and passes the token on. The last rank checks that the slices tile every
field exactly and that the sample counts were written, marks the file
complete, ``fsync``\\ s it and renames it to ``results.h5``: a ``results.h5``
that exists is complete. No rank ever holds more than its own slice.

Rank 0 creates the file with :func:`~melissa_sa.results.create.create_results_file`
(:mod:`.create`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from melissa_sa.disk_space import describe_error, file_system_errno, reserve_room
from melissa_sa.durable import durable_replace, start_writeback
from melissa_sa.mpi_wait import recv_when_ready, wait_requests
from melissa_sa.results.create import create_results_file
from melissa_sa.results.layout import ResultsLayout
from melissa_sa.results.schema import (
    AGGREGATED,
    COUNT_FILL,
    COUNTS,
    SCALES,
    STATISTICS,
    ResultsWriteError,
)
from melissa_sa.results.write_behind import WriteBehind

__all__ = [
    "FieldSlice", "write_field_slice", "complete_results_file", "write_results_parallel",
    "write_results",
]

_DEFAULT_TAG = 0x4D5352  # "MSR": token tag of write_results_parallel


def write_field_slice(h5file, field: str, lo: int, hi: int,
                      stats: Mapping[str, Any], *, writeback: bool = False) -> list[str]:
    """Write one rank's cells ``[lo, hi)`` of ``field`` into an open results file.

    ``stats`` maps statistic names to arrays shaped ``(time_step, hi - lo)``
    (or ``(k, time_step, hi - lo)`` for thresholds, quantiles and Sobol'), or
    to a callable ``t -> array`` giving one time step (``(hi - lo,)`` or
    ``(k, hi - lo)``), which keeps at most two steps in memory: step ``t``
    is written by a worker thread while step ``t + 1`` is computed (in this
    thread). A tuple key ``(name1, name2, ...)`` maps to a callable
    ``t -> (array1, array2, ...)`` for statistics computed together (the
    Sobol' indices and intervals): they are written step by step the same
    way, two steps held at most. Values are
    fetched one at a time and released before the next, so a lazy Mapping
    holds at most one statistic. ``n_samples`` / ``n_groups`` entries (shape
    ``(time_step,)``) are written whole: rank 0 passes them. Any real dtype
    is accepted and stored as float64. Returns the names written.

    ``writeback=True`` (for a file that is fsync'd next, as
    :func:`write_results_parallel` does when ``durable``) starts the file's
    write-back to disk after each step of a callable, so that the disk works
    while the next steps are computed (:func:`~melissa_sa.durable.start_writeback`).
    """
    if field not in h5file or not isinstance(h5file[field], h5py.Group):
        raise KeyError(f"{h5file.filename}: no field {field!r}")
    g = h5file[field]
    N = int(g.attrs["n_cells"])
    T = int(g.attrs["n_time_steps"])
    lo, hi = int(lo), int(hi)
    if not 0 <= lo <= hi <= N:
        raise ValueError(f"field {field!r}: slice [{lo}, {hi}) outside [0, {N})")
    n = hi - lo
    written = []
    for name in list(stats):
        if isinstance(name, tuple):
            written += _write_step_group(g, field, lo, hi, name, stats[name], writeback)
            continue
        if name not in g or name in SCALES or not isinstance(g[name], h5py.Dataset):
            present = [s for s in list(STATISTICS) + list(COUNTS) + list(AGGREGATED)
                       if s in g]
            raise KeyError(f"field {field!r}: statistic {name!r} is not in the results "
                           f"file; it holds {present}")
        d = g[name]
        value = stats[name]
        if name in COUNTS:
            arr = np.asarray(value)
            if arr.shape != (T,):
                raise ValueError(f"field {field!r}: {name} shape {arr.shape}, expected ({T},)")
            d[...] = arr
        elif name in AGGREGATED:
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != d.shape:
                raise ValueError(f"field {field!r}: {name} shape {arr.shape}, "
                                 f"expected {d.shape}")
            d[...] = arr
        elif callable(value):
            _write_steps(g, field, lo, hi, (name,), lambda t, f=value: (f(t),), writeback)
        else:
            arr = np.asarray(value)
            expected = d.shape[:-1] + (n,)
            if arr.shape != expected:
                raise ValueError(f"field {field!r}: {name} slice shape {arr.shape}, expected "
                                 f"{expected} for cells [{lo}, {hi})")
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"field {field!r}: {name} dtype {arr.dtype} is not real")
            if n:
                d[..., lo:hi] = arr
        del value
        written.append(name)
    return written


def _write_step_group(g, field: str, lo: int, hi: int, names: tuple[str, ...],
                      step_values, writeback: bool) -> list[str]:
    """Write several statistics computed together, one time step at a time.

    ``step_values(t)`` returns one array per name in ``names`` (each
    ``(k, hi - lo)``) for time step ``t``; see :func:`_write_steps`.
    """
    for name in names:
        if name not in g or name in SCALES or not isinstance(g[name], h5py.Dataset):
            raise KeyError(f"field {field!r}: statistic {name!r} is not in the results file")
    _write_steps(g, field, lo, hi, names, step_values, writeback)
    return list(names)


def _write_steps(g, field: str, lo: int, hi: int, names, step_values,
                 writeback: bool) -> None:
    """Write ``step_values(t)`` (one array per dataset of ``names``) for every time step.

    Step ``t`` is written by a worker thread while step ``t + 1`` is computed
    here (:class:`~melissa_sa.results.write_behind.WriteBehind`), so at most
    two steps of arrays are alive: the one being written, the one being
    computed. The computation and the shape checks stay in this thread, so
    their errors are raised here as from a plain loop; a failed write raises
    its own error (the first error in the loop's order wins). With
    ``writeback``, the file's write-back to disk is started after each step
    (:func:`~melissa_sa.durable.start_writeback`).

    Chunks of several time steps (small meshes) are written whole, once their
    steps are gathered (:class:`GatheredSteps`; those before an error too).
    """
    n = hi - lo
    T = int(g.attrs["n_time_steps"])
    span = _gathered_steps(g, names, n)
    datasets = [_step_dataset(g, name) if span == 1 else GatheredSteps(g, name, span)
                for name in names]
    step_shapes = [g[name].shape[:-2] + (n,) for name in names]
    # the file descriptor of the default (sec2) driver; other drivers: no hint
    fd = g.file.id.get_vfd_handle() if writeback and g.file.driver == "sec2" else None
    try:
        with WriteBehind() as behind:
            for t in range(T):
                arrays = step_values(t)
                if len(arrays) != len(names):
                    raise ValueError(f"field {field!r}: time step {t} gave {len(arrays)} "
                                     f"arrays for {names}")
                arrays = [np.asarray(a) for a in arrays]
                for name, arr, step_shape in zip(names, arrays, step_shapes, strict=True):
                    if arr.shape != step_shape:
                        raise ValueError(f"field {field!r}: {name} at time step {t} has "
                                         f"shape {arr.shape}, expected {step_shape}")
                if n:
                    behind.submit(_write_step, g, datasets, t, lo, hi, arrays, fd)
                del arrays
    except BaseException:  # write the steps gathered; the first error stands
        for d in datasets:
            if isinstance(d, GatheredSteps):
                with contextlib.suppress(Exception):
                    d.flush()
        raise


#: bytes of the blocks of time steps :class:`GatheredSteps` hold for one call
#: of :func:`_write_steps`, past which they hold fewer steps than a chunk (the
#: six Sobol' datasets of 99,856 cells at p = 3: 4 of a chunk's 10 steps)
GATHER_BYTES = 1 << 26


def _gathered_steps(g, names, n: int) -> int:
    """Time steps per write of :func:`_write_steps` into the datasets
    ``names`` of ``n`` cells: 1 when a chunk holds one step (or they are not
    chunked alike), else a chunk's steps, fewer if their blocks would exceed
    :data:`GATHER_BYTES`."""
    spans = {g[name].chunks[-2] if g[name].chunks else 1 for name in names}
    if len(spans) != 1:
        return 1
    rows = sum(int(np.prod(g[name].shape[:-2], dtype=np.int64)) for name in names)
    return max(1, min(spans.pop(), GATHER_BYTES // max(1, 8 * rows * n)))


class GatheredSteps:
    """A dataset of ``g`` whose chunks span several time steps, written ``span``
    steps at a time (one step written into a chunk of ``s`` steps makes HDF5
    read and write back the chunk, ``s`` times over: docs/performance.md). The
    writes ``d[..., t, lo:hi] = arr`` of :func:`_write_step` (steps in order,
    one slice of cells) fill a block, written once full (or by :meth:`flush`)
    without a chunk cache; a block never crosses a chunk's first step."""

    def __init__(self, g, name: str, span: int):
        self.dataset = _uncached(g, name)
        self.span = span
        self.block: np.ndarray | None = None
        self.first = self.filled = 0
        self.cells = slice(0, 0)

    def __setitem__(self, key, value) -> None:
        _, t, cells = key
        if self.block is None:
            per_chunk = self.dataset.chunks[-2]
            n_steps = min(self.span, self.dataset.shape[-2] - t, per_chunk - t % per_chunk)
            self.block = np.empty(self.dataset.shape[:-2] + (n_steps, cells.stop - cells.start))
            self.first, self.filled, self.cells = t, 0, cells
        if t != self.first + self.filled or cells != self.cells:
            raise ValueError(f"{self.dataset.name}: step {t}, cells {cells} after "
                             f"{self.filled} steps from {self.first}, cells {self.cells}")
        self.block[..., self.filled, :] = value
        self.filled += 1
        if self.filled == self.block.shape[-2]:
            self.flush()

    def flush(self) -> None:
        """Write the steps gathered, if any."""
        block, self.block = self.block, None
        if block is not None and self.filled:
            steps = slice(self.first, self.first + self.filled)
            self.dataset[..., steps, self.cells] = block[..., :self.filled, :]


def _uncached(g, name: str):
    """The dataset ``name`` of ``g`` without a chunk cache: a write of whole
    chunks goes from the caller's array to the file (a cache, 64 MB per open
    dataset, would copy it once more and hold it until closed)."""
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_chunk_cache(0, 0, 1.0)
    return h5py.Dataset(h5py.h5d.open(g.id, name.encode(), dapl))


def _step_dataset(g, name: str):
    """What :func:`_write_step` writes into: the dataset without a chunk cache
    (:func:`_uncached`) when its chunks hold one time step each; else the name
    (opened for each step with the file's cache, flushed when closed)."""
    chunks = g[name].chunks
    if chunks is None or chunks[-2] != 1:
        return name
    return _uncached(g, name)


def _write_step(g, datasets, t: int, lo: int, hi: int, arrays, fd: int | None) -> None:
    for d, arr in zip(datasets, arrays, strict=True):
        (g[d] if isinstance(d, str) else d)[..., t, lo:hi] = arr
    if fd is not None:
        start_writeback(fd)


def _check_coverage(layout: ResultsLayout, covered) -> list[str]:
    problems = []
    for fname in layout.fields:
        N = layout.n_cells[fname]
        spans = sorted((lo, hi, rank) for f, lo, hi, rank in covered if f == fname and hi > lo)
        pos = 0
        for lo, hi, rank in spans:
            if lo < pos:
                problems.append(f"field {fname!r}: rank {rank}'s cells [{lo}, {hi}) overlap "
                                f"cells already written (up to {pos})")
            elif lo > pos:
                problems.append(f"field {fname!r}: no rank wrote cells [{pos}, {lo})")
            pos = max(pos, hi)
        if pos < N:
            problems.append(f"field {fname!r}: no rank wrote cells [{pos}, {N})")
    return problems


def complete_results_file(tmp_path, final_path=None, *, durable: bool = True) -> Path:
    """Check the counts, mark ``tmp_path`` complete, fsync it and rename it.

    ``final_path`` defaults to ``tmp_path`` without its ``.tmp`` suffix. The
    rename is atomic: a file under the final name is always complete.
    Raises :class:`ResultsWriteError` if a field's sample counts were never
    written.
    """
    tmp_path = Path(tmp_path)
    if final_path is None:
        if tmp_path.suffix != ".tmp":
            raise ValueError(f"{tmp_path}: give final_path (the name has no .tmp suffix)")
        final_path = tmp_path.with_suffix("")
    final_path = Path(final_path)
    with h5py.File(tmp_path, "r+") as f:
        for fname in f.attrs["fields"]:
            for cname in COUNTS:
                if cname in f[fname] and np.any(f[fname][cname][...] == COUNT_FILL):
                    raise ResultsWriteError(
                        f"{tmp_path}: field {fname!r}: {cname} was not written for every "
                        f"time step (rank 0 passes it in its slice)")
        f.attrs["complete"] = True
    return durable_replace(tmp_path, final_path, durable=durable)


class FieldSlice(NamedTuple):
    """One rank's part of one field: cells ``[lo, hi)`` and their statistics."""

    lo: int
    hi: int
    stats: Mapping[str, Any]


SliceSource = Mapping[str, Any] | Callable[[str], Any]


def _get_slice(local_slices: SliceSource, field: str) -> FieldSlice | None:
    if callable(local_slices) and not isinstance(local_slices, Mapping):
        s = local_slices(field)
    else:
        s = local_slices.get(field)
    if s is None:
        return None
    return s if isinstance(s, FieldSlice) else FieldSlice(*s)


def _write_local(path: Path, layout: ResultsLayout, local_slices: SliceSource,
                 rank: int, writeback: bool) -> list[tuple[str, int, int, int]]:
    covered = []
    with h5py.File(path, "r+", rdcc_nbytes=64 << 20, rdcc_nslots=10007) as f:
        for fname in layout.fields:
            s = _get_slice(local_slices, fname)
            if s is None:
                continue
            if s.hi > s.lo:
                given = {n for key in s.stats
                         for n in (key if isinstance(key, tuple) else (key,))}
                missing = [st for st in layout.statistics if st not in given]
                if missing:
                    raise ValueError(f"rank {rank}, field {fname!r}: slice [{s.lo}, {s.hi}) "
                                     f"lacks enabled statistic(s) {missing}")
            write_field_slice(f, fname, s.lo, s.hi, s.stats, writeback=writeback)
            covered.append((fname, int(s.lo), int(s.hi), rank))
            del s
    return covered


def _wait_message(comm, source: int, tag: int, poll_interval: float,
                  timeout: float | None, what: str):
    """Receive one message without spinning (see :mod:`melissa_sa.mpi_wait`)."""
    return recv_when_ready(comm, source, tag, what, timeout=timeout,
                           poll_interval=poll_interval)


def _send_all(comm, messages, poll_interval: float) -> None:
    """Non-blocking sends, completed without spinning."""
    wait_requests([comm.isend(obj, dest=dest, tag=tag) for dest, tag, obj in messages],
                  "the results file's messages to the other ranks",
                  poll_interval=poll_interval)


def write_results_parallel(comm, path, layout: ResultsLayout, local_slices: SliceSource, *,
                           config_json: str | Mapping | None = None, parameters=None,
                           attrs: Mapping | None = None, poll_interval: float = 0.02,
                           timeout: float | None = None, durable: bool = True,
                           tag: int = _DEFAULT_TAG, reserve: int = 0, mesh=None) -> Path:
    """Write ``path`` (``OUT/results.h5``) from every rank's own slices; call on every rank.

    ``comm`` is an mpi4py communicator or None (one process). ``local_slices``
    gives this rank's part of each field: a mapping ``field -> FieldSlice(lo,
    hi, stats)`` (or a ``(lo, hi, stats)`` tuple), or a callable ``field ->``
    the same, called during this rank's turn only, so the statistics can be
    finalised lazily, one field at a time. ``stats`` is as in
    :func:`write_field_slice`; a rank with a non-empty slice must give every
    enabled statistic, and the rank that writes the counts (rank 0 by
    convention) adds ``n_samples`` (and ``n_groups`` with Sobol'). A missing
    field or ``lo == hi`` means the rank owns no cells of it.

    ``config_json``, ``parameters`` and ``mesh`` are used on rank 0 only (see
    :func:`create_results_file`). Ranks write in turn into
    ``path + ".tmp"``, waiting by ``Iprobe`` polling (sleeps up to
    ``poll_interval`` s; ``timeout``: seconds allowed per rank's turn, None =
    wait forever; on expiry :class:`TimeoutError`); ``tag`` (and ``tag + 1``)
    are the MPI tags used on ``comm``, distinct from the server's. The last
    rank checks that the slices tile ``[0, n_cells)`` of every field exactly,
    then renames the file to ``path``. Every rank returns the final path
    after the rename, or raises :class:`ResultsWriteError` (naming the rank
    that failed) on every rank if any rank failed; the ``.tmp`` file is then
    left for inspection.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    token = {"error": None, "covered": []}
    local_exc: BaseException | None = None
    if rank > 0:
        token = _wait_message(comm, rank - 1, tag, poll_interval, timeout, "results token")
    if token["error"] is None:
        try:
            if rank == 0:
                if tmp.exists():
                    tmp.unlink()
                reserve_room(tmp, reserve)
                create_results_file(tmp, layout, config_json, parameters, attrs, mesh=mesh)
            token["covered"].extend(_write_local(tmp, layout, local_slices, rank, durable))
        except Exception as exc:  # passed on so that no rank waits forever
            local_exc = exc
            token.update(_failure(rank, exc))
    if rank < size - 1:
        _send_all(comm, [(rank + 1, tag, token)], poll_interval)
        # the outcome comes after every later rank's turn: allow each its timeout
        final = _wait_message(comm, size - 1, tag + 1, poll_interval,
                              None if timeout is None else timeout * (size - rank),
                              "results outcome")
    else:
        final = {key: token.get(key) for key in ("error", "cause", "file_system")}
        if final["error"] is None:
            try:
                problems = _check_coverage(layout, token["covered"])
                if problems:
                    raise ResultsWriteError(f"{tmp}: " + "; ".join(problems))
                complete_results_file(tmp, path, durable=durable)
            except Exception as exc:
                local_exc = exc
                final.update(_failure(rank, exc))
        if size > 1:
            _send_all(comm, [(r, tag + 1, final) for r in range(size - 1)], poll_interval)
    if final["error"] is not None:
        error = ResultsWriteError(f"writing {path} failed: {final['error']}")
        error.cause, error.file_system = final["cause"], bool(final["file_system"])
        raise error from local_exc
    return path


def _failure(rank: int, exc: BaseException) -> dict:
    """What the ranks pass on about ``exc``: the error in full, its cause in a
    few words, and whether the file system refused the write."""
    return {"error": f"rank {rank}: {type(exc).__name__}: {exc}",
            "cause": f"rank {rank}: {describe_error(exc)}",
            "file_system": file_system_errno(exc) is not None}


def write_results(path, layout: ResultsLayout, slices: SliceSource, *,
                  config_json: str | Mapping | None = None, parameters=None,
                  durable: bool = True, mesh=None) -> Path:
    """One-process :func:`write_results_parallel` (``comm=None``)."""
    return write_results_parallel(None, path, layout, slices, config_json=config_json,
                                  parameters=parameters, durable=durable, mesh=mesh)
