"""Before a study starts: can ``output_dir`` be written, and is there room?

:func:`check_output_dir` is run by ``melissa-sa run`` before anything starts
(no directory created, no process started). It answers an :class:`OutputCheck`:

* ``error``: ``output_dir`` (or the first of its parents that exists) is not a
  directory, or cannot be written (a read-only file system, no permission):
  one line naming the key and the path; the command exits with
  :data:`~melissa_sa.exit_codes.USAGE`;
* ``warning``: the file system holds less free space than one checkpoint set
  plus the results file need;
* ``note``: what one checkpoint set and the results file need per cell, when
  the number of cells is not known (the config declares no cell count: the
  first client's hello fixes it), so the size was not checked.

:func:`bytes_per_cell` estimates the bytes of one checkpoint set (the state
of every statistic kept, every field and time step) and of ``results.h5``
(float64 datasets) per cell of each field, from the config alone.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from melissa_sa.disk_space import existing_parent, format_bytes, free_bytes

__all__ = ["OutputCheck", "check_output_dir", "bytes_per_cell"]

#: cells of the sample slice :func:`bytes_per_cell` measures the state on
_SAMPLE_CELLS = 64


@dataclass(frozen=True)
class OutputCheck:
    """What :func:`check_output_dir` found; each text is one line, or None."""

    error: str | None = None
    warning: str | None = None
    note: str | None = None
    #: bytes free on the output directory's file system (None if unknown)
    free: int | None = None


def bytes_per_cell(cfg) -> tuple[int, int]:
    """(one checkpoint set, the results file): bytes per cell of every field,
    all the fields and time steps of the study counted."""
    from melissa_sa.results.layout import ResultsLayout
    from melissa_sa.server.field_stats import StepStatistics

    so = cfg.study_options
    n_fields, n_steps = len(so.field_names), so.nb_time_steps
    step = StepStatistics(_SAMPLE_CELLS, cfg)
    state = sum(stat.nbytes for _, stat in step.items())
    checkpoint = -(-state * n_fields * n_steps // _SAMPLE_CELLS)
    layout = ResultsLayout.from_config(cfg, 1, ci_method=cfg.sa_config.confidence_method)
    values = sum(int(_prod(layout.shape(f, s))) for f in layout.fields
                 for s in layout.statistics)
    return int(checkpoint), 8 * values


def _prod(shape) -> int:
    n = 1
    for k in shape:
        n *= int(k)
    return n


def _unwritable(directory: Path) -> str | None:
    """Why no file can be created in ``directory`` (None if one can)."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return ("read-only file system" if _read_only(directory)
                else "no permission to write there")
    try:  # root passes os.access; a probe file says what the file system does
        fd, probe = tempfile.mkstemp(prefix=".melissa-sa-probe-", dir=directory)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(probe)
    return None


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output_dir(cfg, n_cells: int | None = None) -> OutputCheck:
    """Check ``cfg.output_dir`` without creating it; ``n_cells`` (cells of
    each field) enables the size check, otherwise the note says why it was
    skipped."""
    out = Path(cfg.output_dir)
    where = existing_parent(out)
    if not where.is_dir():
        what = "is not a directory" if where == out else f"cannot be created: {where} is a file"
        return OutputCheck(error=f"output_dir: {out} {what}")
    why = _unwritable(where)
    if why is not None:
        what = "cannot be written" if where == out else f"cannot be created in {where}"
        return OutputCheck(error=f"output_dir: {out} {what} ({why})")
    free = free_bytes(where)
    if free is None:
        return OutputCheck()
    try:
        checkpoint, results = bytes_per_cell(cfg)
    except Exception as exc:  # an estimate only: never stop a study on it
        return OutputCheck(free=free, note=f"no size estimate ({exc})")
    if n_cells is None:
        return OutputCheck(free=free, note=(
            f"output_dir: {format_bytes(free)} free; one checkpoint set needs about "
            f"{format_bytes(checkpoint)} and results.h5 {format_bytes(results)} per cell of "
            f"each field (the cells are known once a client says hello: size not checked)"))
    need = (checkpoint + results) * int(n_cells)
    if free < need:
        return OutputCheck(free=free, warning=(
            f"output_dir: {out} has {format_bytes(free)} free, less than one checkpoint "
            f"set ({format_bytes(checkpoint * n_cells)}) and results.h5 "
            f"({format_bytes(results * n_cells)}) need for {n_cells} cells per field"))
    return OutputCheck(free=free)

