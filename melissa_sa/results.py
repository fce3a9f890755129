"""The results file ``OUT/results.h5``: writer (serial or MPI, never gathered) and reader.

Layout (see ``docs/results.md`` for the user's view)::

    /                          attrs: format = "melissa-sa/1", config (JSON),
                               melissa_sa_version, fields, created, complete
    /parameters/               the design actually run, one row per run
        run         (run,)            dimension scale 0..n_runs-1
        parameter   (parameter,)      dimension scale, the parameter names
        value       (run, parameter)  float64, attr names
        sim_id, group_id, member (run,) int64; redrawn, folded (run,) bool
    /<field>/                  one group per field; attrs n_cells, n_time_steps
        time_step (T,) cell (N,) [threshold] [quantile_level] [parameter]
                                      dimension scales of this field
        mean variance skewness kurtosis min max          (time_step, cell)
        threshold_exceedance                             (threshold, time_step, cell)
        quantiles                                        (quantile_level, time_step, cell)
        sobol_first sobol_total sobol_{first,total}_{low,high}
                                                         (parameter, time_step, cell)
        n_samples (time_step,) int64; n_groups (time_step,) int64 with Sobol'

Every statistic carries a one-line ``definition`` attribute; the confidence
bounds also ``confidence_level`` and ``method``.

**Parallel write without gathering.** The PyPI h5py has no MPI-IO driver, so
the ranks take turns: rank 0 creates ``results.h5.tmp`` with every dataset at
full size and writes its own slices; each rank ``k > 0`` waits for a token
from rank ``k - 1`` (polling ``Iprobe`` with short sleeps: a blocking MPI
receive busy-spins), opens the file ``r+``, writes its hyperslabs, closes it
and passes the token on. The last rank checks that the slices tile every
field exactly and that the sample counts were written, marks the file
complete, ``fsync``\\ s it and renames it to ``results.h5``: a ``results.h5``
that exists is complete. No rank ever holds more than its own slice.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field as _dc_field
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from melissa_sa.durable import durable_replace
from melissa_sa.mpi_wait import recv_when_ready, wait_requests

FORMAT = "melissa-sa/1"

#: Per-cell statistics in canonical order, with the name of their leading
#: dimension (``None``: shaped (time_step, cell)).
STATISTICS: dict[str, str | None] = {
    "mean": None,
    "variance": None,
    "skewness": None,
    "kurtosis": None,
    "min": None,
    "max": None,
    "threshold_exceedance": "threshold",
    "quantiles": "quantile_level",
    "sobol_first": "parameter",
    "sobol_total": "parameter",
    "sobol_first_low": "parameter",
    "sobol_first_high": "parameter",
    "sobol_total_low": "parameter",
    "sobol_total_high": "parameter",
}
SOBOL_STATISTICS = ("sobol_first", "sobol_total", "sobol_first_low", "sobol_first_high",
                    "sobol_total_low", "sobol_total_high")
#: Per-time-step counts, shaped (time_step,), int64.
COUNTS = ("n_samples", "n_groups")
#: Names of the dimension-scale datasets inside a field group.
SCALES = ("time_step", "cell", "threshold", "quantile_level", "parameter")

DEFINITIONS: dict[str, str] = {
    "mean": "sample mean over independent runs",
    "variance": "unbiased sample variance M2/(n-1)",
    "skewness": "Fisher-Pearson skewness g1 = m3/m2^1.5 (biased, as scipy.stats.skew); "
                "0 for a constant cell",
    "kurtosis": "Fisher excess kurtosis g2 = m4/m2^2 - 3 (biased, as scipy.stats.kurtosis); "
                "0 for a constant cell",
    "min": "sample minimum over independent runs",
    "max": "sample maximum over independent runs",
    "threshold_exceedance": "empirical probability P(Y > threshold) (strict inequality)",
    "quantiles": "one-pass estimate of the quantile of the given level",
    "sobol_first": "Martinez first-order index corr(Y_B, Y_Ck); 0 for a constant cell",
    "sobol_total": "Martinez total-order index 1 - corr(Y_A, Y_Ck); 0 for a constant cell",
    "sobol_first_low": "lower confidence bound of sobol_first",
    "sobol_first_high": "upper confidence bound of sobol_first",
    "sobol_total_low": "lower confidence bound of sobol_total",
    "sobol_total_high": "upper confidence bound of sobol_total",
    "n_samples": "independent runs folded in per time step (A and B of each group under Sobol')",
    "n_groups": "pick-freeze groups folded into the Sobol' indices per time step",
}

CI_METHODS: dict[str, str] = {
    "delta": "delta-method standard error of the correlation (any law), "
             "interval on Fisher's z scale, z = atanh(r) +- q se_r/(1-r^2)",
    "fisher": "Fisher's z-transform, atanh(r) +- q/sqrt(n-3)",
    "delta-linear": "delta-method standard error of the correlation, r +- q se_r",
}

_FLOAT_FILL = np.nan
_COUNT_FILL = -1
_DEFAULT_TAG = 0x4D5352  # "MSR": token tag of write_results_parallel

__all__ = [
    "FORMAT", "STATISTICS", "COUNTS", "DEFINITIONS", "CI_METHODS",
    "ResultsLayout", "ParameterTable", "FieldSlice",
    "ResultsFileError", "ResultsWriteError",
    "create_results_file", "write_field_slice", "complete_results_file",
    "write_results_parallel", "write_results",
    "Results", "open_results",
]


class ResultsFileError(ValueError):
    """A file that is not a complete, readable melissa-sa results file."""


class ResultsWriteError(RuntimeError):
    """Writing the results file failed (on this rank or another one)."""


def _version() -> str:
    try:
        from melissa_sa import __version__
        return str(__version__)
    except Exception:  # pragma: no cover
        return "unknown"


# ---------------------------------------------------------------------------
# layout


def _expand_statistics(names) -> tuple[str, ...]:
    wanted: set[str] = set()
    for name in names:
        if name in ("sobol", "sobol_indices"):
            wanted.update(SOBOL_STATISTICS)
        elif name in STATISTICS:
            wanted.add(name)
        else:
            raise ValueError(f"unknown statistic {name!r}; known: {', '.join(STATISTICS)} "
                             "(or 'sobol' for all six Sobol' datasets)")
    if wanted & set(SOBOL_STATISTICS):
        wanted.update(SOBOL_STATISTICS)  # indices always come with their bounds
    return tuple(s for s in STATISTICS if s in wanted)


@dataclass(frozen=True)
class ResultsLayout:
    """What a results file holds: the shapes and the enabled statistics.

    ``statistics`` names entries of :data:`STATISTICS`; ``"sobol"`` stands for
    the six Sobol' datasets, and any one of them enables all six. It is
    normalised to canonical order. ``gzip`` (a level 0-9, or None) compresses
    the statistics; off by default for speed. ``chunk_elements`` bounds a
    chunk's size (one time step x up to that many cells; several time steps
    per chunk when the mesh is smaller). ``definitions`` overrides entries of
    :data:`DEFINITIONS` (e.g. to name the quantile algorithm).
    """

    fields: tuple[str, ...]
    n_cells: Mapping[str, int]
    n_time_steps: int
    statistics: tuple[str, ...] = ("mean", "variance")
    thresholds: tuple[float, ...] = ()
    quantile_levels: tuple[float, ...] = ()
    parameter_names: tuple[str, ...] = ()
    confidence_level: float = 0.95
    ci_method: str = "delta"
    gzip: int | None = None
    chunk_elements: int = 1 << 20
    definitions: Mapping[str, str] = _dc_field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        fields = (self.fields,) if isinstance(self.fields, str) else tuple(self.fields)
        if not fields:
            raise ValueError("ResultsLayout.fields: at least one field is needed")
        for f in fields:
            if not isinstance(f, str) or not f or "/" in f or f.startswith("."):
                raise ValueError(f"ResultsLayout.fields: invalid field name {f!r}")
            if f in ("parameters",) or f in COUNTS:
                raise ValueError(f"ResultsLayout.fields: field name {f!r} is reserved")
        if len(set(fields)) != len(fields):
            raise ValueError(f"ResultsLayout.fields: duplicate field names in {list(fields)}")
        set_(self, "fields", fields)
        if isinstance(self.n_cells, Mapping):
            n_cells = {f: self.n_cells[f] for f in fields if f in self.n_cells}
            missing = [f for f in fields if f not in n_cells]
            if missing:
                raise ValueError(f"ResultsLayout.n_cells: no size for field(s) {missing}")
        else:  # one size for every field
            n_cells = {f: self.n_cells for f in fields}
        for f, n in n_cells.items():
            if isinstance(n, bool) or int(n) != n or int(n) < 1:
                raise ValueError(f"ResultsLayout.n_cells[{f!r}] must be a positive integer, "
                                 f"got {n!r}")
        set_(self, "n_cells", {f: int(n) for f, n in n_cells.items()})
        T = self.n_time_steps
        if isinstance(T, bool) or int(T) != T or int(T) < 1:
            raise ValueError(f"ResultsLayout.n_time_steps must be a positive integer, got {T!r}")
        set_(self, "n_time_steps", int(T))
        stats = (self.statistics,) if isinstance(self.statistics, str) else self.statistics
        set_(self, "statistics", _expand_statistics(stats))
        set_(self, "thresholds", tuple(float(t) for t in np.ravel(self.thresholds)))
        set_(self, "quantile_levels", tuple(float(q) for q in np.ravel(self.quantile_levels)))
        names = ((self.parameter_names,) if isinstance(self.parameter_names, str)
                 else tuple(str(p) for p in self.parameter_names))
        set_(self, "parameter_names", names)
        stats = self.statistics
        if ("threshold_exceedance" in stats) != bool(self.thresholds):
            raise ValueError("ResultsLayout: threshold_exceedance needs thresholds and "
                             "thresholds need threshold_exceedance")
        if ("quantiles" in stats) != bool(self.quantile_levels):
            raise ValueError("ResultsLayout: quantiles need quantile_levels and "
                             "quantile_levels need quantiles")
        if any(not 0.0 < q < 1.0 for q in self.quantile_levels):
            raise ValueError(f"ResultsLayout.quantile_levels must lie in (0, 1), "
                             f"got {list(self.quantile_levels)}")
        if self.has_sobol and not names:
            raise ValueError("ResultsLayout: Sobol' indices need parameter_names")
        if not 0.0 < float(self.confidence_level) < 1.0:
            raise ValueError(f"ResultsLayout.confidence_level must lie in (0, 1), "
                             f"got {self.confidence_level!r}")
        set_(self, "confidence_level", float(self.confidence_level))
        if self.gzip is not None and not (0 <= int(self.gzip) <= 9):
            raise ValueError(f"ResultsLayout.gzip must be None or a level 0-9, got {self.gzip!r}")
        if int(self.chunk_elements) < 1:
            raise ValueError("ResultsLayout.chunk_elements must be positive")
        unknown = set(self.definitions) - set(DEFINITIONS)
        if unknown:
            raise ValueError(f"ResultsLayout.definitions: unknown statistic(s) {sorted(unknown)}")
        set_(self, "definitions", dict(self.definitions))

    @property
    def has_sobol(self) -> bool:
        return "sobol_first" in self.statistics

    @property
    def counts(self) -> tuple[str, ...]:
        """The per-time-step count datasets of each field group."""
        return COUNTS if self.has_sobol else COUNTS[:1]

    def leading_size(self, stat: str) -> int | None:
        dim = STATISTICS[stat]
        return {None: None, "threshold": len(self.thresholds),
                "quantile_level": len(self.quantile_levels),
                "parameter": len(self.parameter_names)}[dim]

    def shape(self, field: str, stat: str) -> tuple[int, ...]:
        """The full dataset shape of ``stat`` in ``field``."""
        T, N = self.n_time_steps, self.n_cells[field]
        if stat in COUNTS:
            return (T,)
        k = self.leading_size(stat)
        return (T, N) if k is None else (k, T, N)

    def definition(self, stat: str) -> str:
        text = self.definitions.get(stat, DEFINITIONS[stat])
        if stat.endswith(("_low", "_high")):
            text += (f" (two-sided {self.confidence_level:g} confidence interval, "
                     f"method {self.ci_method!r})")
        return text

    @classmethod
    def from_config(cls, cfg, n_cells: Mapping[str, int] | int, *, ci_method: str = "delta",
                    **overrides) -> "ResultsLayout":
        """The layout of a study: ``cfg`` is a :class:`melissa_sa.config.StudyConfig`."""
        so, sa = cfg.study_options, cfg.sa_config
        stats = [s for s in ("mean", "variance", "skewness", "kurtosis", "min", "max")
                 if getattr(sa, s)]
        if sa.threshold_exceedance:
            stats.append("threshold_exceedance")
        if sa.quantiles:
            stats.append("quantiles")
        if sa.sobol_indices:
            stats.append("sobol")
        names = tuple(so.parameter_names) or tuple(f"p{k + 1}" for k in range(so.nb_parameters))
        kw = dict(fields=tuple(so.field_names), n_cells=n_cells,
                  n_time_steps=so.nb_time_steps, statistics=tuple(stats),
                  thresholds=tuple(sa.threshold_exceedance),
                  quantile_levels=tuple(sa.quantiles), parameter_names=names,
                  confidence_level=sa.confidence_level, ci_method=ci_method)
        kw.update(overrides)
        return cls(**kw)


# ---------------------------------------------------------------------------
# the design table


@dataclass
class ParameterTable:
    """The parameter sets actually run, one row per run.

    ``values`` (n_runs, n_params) float64; ``sim_id``, ``group_id`` and
    ``member`` (n_runs,) int64 (member 0 is A, 1 is B, ``2 + k`` is C_k under
    Sobol', always 0 otherwise); ``redrawn`` (n_runs,) bool: the group's
    parameters are a redraw that replaced a group which crashed too often;
    ``folded`` (n_runs,) bool: the run's data was folded into the statistics
    (a crashed-and-replaced draw is kept with ``folded = False``).
    """

    names: tuple[str, ...]
    values: np.ndarray
    sim_id: np.ndarray | None = None
    group_id: np.ndarray | None = None
    member: np.ndarray | None = None
    redrawn: np.ndarray | None = None
    folded: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.names = tuple(str(n) for n in self.names)
        p = len(self.names)
        values = np.asarray(self.values, dtype=np.float64)
        if values.ndim == 1 and values.size == 0:
            values = values.reshape(0, p)
        if values.ndim != 2 or values.shape[1] != p:
            raise ValueError(f"ParameterTable.values: shape {values.shape}, expected "
                             f"(n_runs, {p}) for parameters {list(self.names)}")
        self.values = values
        n = values.shape[0]
        defaults = {"sim_id": np.arange(n), "group_id": np.arange(n),
                    "member": np.zeros(n), "redrawn": np.zeros(n, bool),
                    "folded": np.ones(n, bool)}
        for col, default in defaults.items():
            v = getattr(self, col)
            dtype = bool if col in ("redrawn", "folded") else np.int64
            v = np.asarray(default if v is None else v).astype(dtype, copy=False)
            if v.shape != (n,):
                raise ValueError(f"ParameterTable.{col}: shape {v.shape}, expected ({n},)")
            setattr(self, col, v)

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def n_runs(self) -> int:
        return len(self)

    @classmethod
    def from_groups(cls, groups, names, *, group_ids=None, redrawn=None,
                    folded=None) -> "ParameterTable":
        """From pick-freeze groups ``(n_groups, p + 2, p)`` (rows A, B, C_1..C_p).

        ``sim_id = group_id * (p + 2) + member``; ``redrawn`` and ``folded`` are
        per group ``(n_groups,)`` (or per run ``(n_groups * (p + 2),)``).
        """
        groups = np.asarray(groups, dtype=np.float64)
        if groups.ndim != 3 or groups.shape[1] != groups.shape[2] + 2:
            raise ValueError(f"groups: shape {groups.shape}, expected (n_groups, p + 2, p)")
        g, size, p = groups.shape
        gid = np.arange(g) if group_ids is None else np.asarray(group_ids, np.int64)

        def per_run(v):
            if v is None:
                return None
            v = np.asarray(v, bool)
            return np.repeat(v, size) if v.shape == (g,) else v

        return cls(names=names, values=groups.reshape(g * size, p),
                   sim_id=(gid[:, None] * size + np.arange(size)).ravel(),
                   group_id=np.repeat(gid, size), member=np.tile(np.arange(size), g),
                   redrawn=per_run(redrawn), folded=per_run(folded))


def _as_table(parameters, layout: ResultsLayout) -> ParameterTable:
    if parameters is None:
        names = layout.parameter_names
        return ParameterTable(names=names, values=np.zeros((0, len(names))))
    if isinstance(parameters, ParameterTable):
        return parameters
    if isinstance(parameters, Mapping):
        kw = dict(parameters)
        kw.setdefault("names", layout.parameter_names)
        return ParameterTable(**kw)
    values = np.asarray(parameters, dtype=np.float64)
    names = layout.parameter_names or tuple(f"p{k + 1}" for k in range(values.shape[-1]))
    return ParameterTable(names=names, values=values)


# ---------------------------------------------------------------------------
# writer


def _str_scale(group, name: str, values) -> h5py.Dataset:
    return group.create_dataset(name, data=np.array(list(values), dtype=object),
                                dtype=h5py.string_dtype())


def _chunks(layout: ResultsLayout, shape: tuple[int, ...]) -> tuple[int, ...]:
    T, N = shape[-2], shape[-1]
    cells = min(N, layout.chunk_elements)
    steps = max(1, min(T, layout.chunk_elements // cells))
    return (1,) * (len(shape) - 2) + (steps, cells)


def create_results_file(path, layout: ResultsLayout, config_json: str | Mapping | None = None,
                        parameters=None, attrs: Mapping | None = None) -> Path:
    """Create ``path`` with every dataset of ``layout`` at full size (rank 0's job).

    Statistics are float64, filled with NaN until written; counts are int64,
    filled with -1. ``config_json`` is the study config (a JSON string or a
    mapping); ``parameters`` a :class:`ParameterTable`, a mapping of its
    fields, an ``(n_runs, n_params)`` array or None. The file is marked
    incomplete (root attr ``complete = False``) until
    :func:`complete_results_file`. Memory used is independent of the mesh size.
    ``attrs`` adds root attributes (e.g. the server's dropped-message counts).
    """
    path = Path(path)
    if config_json is None:
        config_json = "{}"
    elif not isinstance(config_json, str):
        config_json = json.dumps(config_json)
    else:
        json.loads(config_json)  # must be valid JSON
    table = _as_table(parameters, layout)
    T = layout.n_time_steps
    comp = {} if layout.gzip is None else {"compression": "gzip",
                                            "compression_opts": int(layout.gzip)}
    with h5py.File(path, "w", libver=("v108", "v110"), track_order=True) as f:
        f.attrs["format"] = FORMAT
        f.attrs["melissa_sa_version"] = _version()
        f.attrs["config"] = config_json
        f.attrs["fields"] = list(layout.fields)
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        f.attrs["complete"] = False
        for key, value in (attrs or {}).items():
            f.attrs[key] = value

        # -- /parameters
        pg = f.create_group("parameters", track_order=True)
        pg.attrs["description"] = ("the design actually run, one row per run; member 0 = A, "
                                   "1 = B, 2 + k = C_k (A with column k from B) under Sobol'")
        run = pg.create_dataset("run", data=np.arange(len(table), dtype=np.int64))
        run.make_scale("run")
        pscale = _str_scale(pg, "parameter", table.names)
        pscale.make_scale("parameter")
        v = pg.create_dataset("value", data=table.values)
        v.attrs["names"] = list(table.names)
        v.dims[0].attach_scale(run)
        v.dims[1].attach_scale(pscale)
        for col in ("sim_id", "group_id", "member", "redrawn", "folded"):
            d = pg.create_dataset(col, data=getattr(table, col))
            d.dims[0].attach_scale(run)
        pg["redrawn"].attrs["definition"] = ("parameters redrawn to replace a group that "
                                             "crashed too often")
        pg["folded"].attrs["definition"] = "the run's data was folded into the statistics"

        # -- one group per field
        for fname in layout.fields:
            N = layout.n_cells[fname]
            g = f.create_group(fname, track_order=True)
            g.attrs["n_cells"] = N
            g.attrs["n_time_steps"] = T
            scales = {}
            ts = g.create_dataset("time_step", data=np.arange(T, dtype=np.int64))
            cell = g.create_dataset("cell", shape=(N,), dtype=np.int64,
                                    chunks=(min(N, layout.chunk_elements),))
            block = 1 << 20  # bounded memory, whatever the mesh size
            for lo in range(0, N, block):
                hi = min(N, lo + block)
                cell[lo:hi] = np.arange(lo, hi, dtype=np.int64)
            scales["time_step"], scales["cell"] = ts, cell
            if layout.thresholds:
                scales["threshold"] = g.create_dataset(
                    "threshold", data=np.array(layout.thresholds, dtype=np.float64))
            if layout.quantile_levels:
                scales["quantile_level"] = g.create_dataset(
                    "quantile_level", data=np.array(layout.quantile_levels, dtype=np.float64))
            if layout.has_sobol:
                scales["parameter"] = _str_scale(g, "parameter", layout.parameter_names)
                g.attrs["confidence_level"] = layout.confidence_level
                g.attrs["ci_method"] = layout.ci_method
            for name, ds in scales.items():
                ds.make_scale(name)

            for stat in layout.statistics:
                shape = layout.shape(fname, stat)
                d = g.create_dataset(stat, shape=shape, dtype=np.float64,
                                     chunks=_chunks(layout, shape), fillvalue=_FLOAT_FILL, **comp)
                lead = STATISTICS[stat]
                dims = ([lead] if lead else []) + ["time_step", "cell"]
                for i, dim in enumerate(dims):
                    d.dims[i].attach_scale(scales[dim])
                d.attrs["definition"] = layout.definition(stat)
                if stat.endswith(("_low", "_high")):
                    d.attrs["confidence_level"] = layout.confidence_level
                    d.attrs["method"] = layout.ci_method
                    if layout.ci_method in CI_METHODS:
                        d.attrs["method_description"] = CI_METHODS[layout.ci_method]
            for cname in layout.counts:
                d = g.create_dataset(cname, shape=(T,), dtype=np.int64, fillvalue=_COUNT_FILL)
                d.dims[0].attach_scale(ts)
                d.attrs["definition"] = layout.definition(cname)
    return path


def write_field_slice(h5file, field: str, lo: int, hi: int,
                      stats: Mapping[str, Any]) -> list[str]:
    """Write one rank's cells ``[lo, hi)`` of ``field`` into an open results file.

    ``stats`` maps statistic names to arrays shaped ``(time_step, hi - lo)``
    (or ``(k, time_step, hi - lo)`` for thresholds, quantiles and Sobol'), or
    to a callable ``t -> array`` giving one time step (``(hi - lo,)`` or
    ``(k, hi - lo)``), which keeps only one step in memory. Values are
    fetched one at a time and released before the next, so a lazy Mapping
    holds at most one statistic. ``n_samples`` / ``n_groups`` entries (shape
    ``(time_step,)``) are written whole: rank 0 passes them. Any real dtype
    is accepted and stored as float64. Returns the names written.
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
        if name not in g or name in SCALES or not isinstance(g[name], h5py.Dataset):
            present = [s for s in list(STATISTICS) + list(COUNTS) if s in g]
            raise KeyError(f"field {field!r}: statistic {name!r} is not in the results "
                           f"file; it holds {present}")
        d = g[name]
        value = stats[name]
        if name in COUNTS:
            arr = np.asarray(value)
            if arr.shape != (T,):
                raise ValueError(f"field {field!r}: {name} shape {arr.shape}, expected ({T},)")
            d[...] = arr
        elif callable(value):
            step_shape = d.shape[:-2] + (n,)
            for t in range(T):
                arr = np.asarray(value(t))
                if arr.shape != step_shape:
                    raise ValueError(f"field {field!r}: {name} at time step {t} has shape "
                                     f"{arr.shape}, expected {step_shape}")
                if n:
                    d[..., t, lo:hi] = arr
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
                if cname in f[fname] and np.any(f[fname][cname][...] == _COUNT_FILL):
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
                 rank: int) -> list[tuple[str, int, int, int]]:
    covered = []
    with h5py.File(path, "r+", rdcc_nbytes=64 << 20, rdcc_nslots=10007) as f:
        for fname in layout.fields:
            s = _get_slice(local_slices, fname)
            if s is None:
                continue
            if s.hi > s.lo:
                missing = [st for st in layout.statistics if st not in s.stats]
                if missing:
                    raise ValueError(f"rank {rank}, field {fname!r}: slice [{s.lo}, {s.hi}) "
                                     f"lacks enabled statistic(s) {missing}")
            write_field_slice(f, fname, s.lo, s.hi, s.stats)
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
                           attrs: Mapping | None = None, poll_interval: float = 0.02, timeout: float | None = None,
                           durable: bool = True, tag: int = _DEFAULT_TAG) -> Path:
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

    ``config_json`` and ``parameters`` are used on rank 0 only (see
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
                create_results_file(tmp, layout, config_json, parameters, attrs)
            token["covered"].extend(_write_local(tmp, layout, local_slices, rank))
        except Exception as exc:  # passed on so that no rank waits forever
            local_exc = exc
            token["error"] = f"rank {rank}: {type(exc).__name__}: {exc}"
    if rank < size - 1:
        _send_all(comm, [(rank + 1, tag, token)], poll_interval)
        # the outcome comes after every later rank's turn: allow each its timeout
        final = _wait_message(comm, size - 1, tag + 1, poll_interval,
                              None if timeout is None else timeout * (size - rank),
                              "results outcome")
    else:
        final = {"error": token["error"]}
        if final["error"] is None:
            try:
                problems = _check_coverage(layout, token["covered"])
                if problems:
                    raise ResultsWriteError(f"{tmp}: " + "; ".join(problems))
                complete_results_file(tmp, path, durable=durable)
            except Exception as exc:
                local_exc = exc
                final["error"] = f"rank {rank}: {type(exc).__name__}: {exc}"
        if size > 1:
            _send_all(comm, [(r, tag + 1, final) for r in range(size - 1)], poll_interval)
    if final["error"] is not None:
        raise ResultsWriteError(f"writing {path} failed: {final['error']}") from local_exc
    return path


def write_results(path, layout: ResultsLayout, slices: SliceSource, *,
                  config_json: str | Mapping | None = None, parameters=None,
                  durable: bool = True) -> Path:
    """One-process :func:`write_results_parallel` (``comm=None``)."""
    return write_results_parallel(None, path, layout, slices, config_json=config_json,
                                  parameters=parameters, durable=durable)


# ---------------------------------------------------------------------------
# reader


def open_results(path) -> "Results":
    """Open a results file for reading; raises :class:`ResultsFileError` naming it
    if it is not a complete melissa-sa results file."""
    return Results(path)


class Results:
    """Read access to a results file. Arrays are read lazily, on request.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such results file")
        if self.path.is_dir():
            raise ResultsFileError(f"{self.path} is a directory, not a results file")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise ResultsFileError(
                f"{self.path} is not a readable HDF5 file (truncated, or not a melissa-sa "
                f"results file): {exc}") from None
        try:
            self._validate()
        except BaseException:
            self._f.close()
            raise

    def _validate(self) -> None:
        attrs = self._f.attrs
        fmt = attrs.get("format")
        if fmt is None:
            raise ResultsFileError(f"{self.path} is not a melissa-sa results file "
                                   "(no 'format' attribute)")
        fmt = _text(fmt)
        if fmt != FORMAT:
            raise ResultsFileError(f"{self.path}: format {fmt!r} is not {FORMAT!r}; this "
                                   f"reader (melissa-sa {_version()}) cannot read it")
        if not bool(attrs.get("complete", False)):
            raise ResultsFileError(f"{self.path} is incomplete: its writer did not finish "
                                   "(a crashed or interrupted run)")
        fields = tuple(_text(x) for x in np.atleast_1d(attrs.get("fields", [])))
        missing = [f for f in fields if f not in self._f]
        if missing or "parameters" not in self._f:
            raise ResultsFileError(f"{self.path}: damaged results file, missing group(s) "
                                   f"{missing or ['parameters']}")
        self._fields = fields

    # -- basics
    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Results":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Results({str(self.path)!r}, fields={list(self._fields)})"

    @property
    def h5(self) -> h5py.File:
        """The underlying open h5py file."""
        return self._f

    @property
    def format(self) -> str:
        return _text(self._f.attrs["format"])

    @property
    def version(self) -> str:
        """The melissa-sa version that wrote the file."""
        return _text(self._f.attrs.get("melissa_sa_version", "unknown"))

    @property
    def created(self) -> str:
        return _text(self._f.attrs.get("created", ""))

    @property
    def config(self) -> dict:
        """The study config the file was written for."""
        return json.loads(_text(self._f.attrs.get("config", "{}")))

    @property
    def fields(self) -> tuple[str, ...]:
        return self._fields

    def _group(self, field: str) -> h5py.Group:
        if field not in self._fields:
            raise KeyError(f"{self.path}: no field {field!r}; fields: {list(self._fields)}")
        return self._f[field]

    def statistics(self, field: str) -> tuple[str, ...]:
        """The statistics present for ``field``, in canonical order."""
        g = self._group(field)
        return tuple(s for s in STATISTICS if s in g)

    def n_cells(self, field: str) -> int:
        return int(self._group(field).attrs["n_cells"])

    def n_time_steps(self, field: str) -> int:
        return int(self._group(field).attrs["n_time_steps"])

    def thresholds(self, field: str) -> np.ndarray:
        g = self._group(field)
        return g["threshold"][...] if "threshold" in g else np.zeros(0)

    def quantile_levels(self, field: str) -> np.ndarray:
        g = self._group(field)
        return g["quantile_level"][...] if "quantile_level" in g else np.zeros(0)

    def parameter_names(self) -> tuple[str, ...]:
        return self.parameters.names

    def definition(self, field: str, stat: str) -> str:
        return _text(self._dataset(field, stat).attrs.get("definition", ""))

    def _dataset(self, field: str, stat: str) -> h5py.Dataset:
        g = self._group(field)
        if stat not in STATISTICS and stat not in COUNTS or stat not in g:
            raise KeyError(f"{self.path}: field {field!r} has no statistic {stat!r}; it has "
                           f"{list(self.statistics(field))}")
        return g[stat]

    def get(self, field: str, stat: str, time_step: int | slice | None = None) -> np.ndarray:
        """``stat`` of ``field`` as float64: shaped (time_step, cell), or (k, time_step,
        cell) for thresholds, quantiles and Sobol'. ``time_step`` selects steps
        (an int drops that axis) and reads only those."""
        d = self._dataset(field, stat)
        if time_step is None:
            return d[...]
        if isinstance(time_step, (int, np.integer)):
            T = d.shape[-2] if stat not in COUNTS else d.shape[0]
            t = int(time_step)
            if not -T <= t < T:
                raise IndexError(f"time step {t} out of range [0, {T})")
            time_step = t % T
        return d[..., time_step, :] if stat not in COUNTS else d[time_step]

    def n_samples(self, field: str) -> np.ndarray:
        """Independent runs folded in per time step, (time_step,) int64."""
        return self._group(field)["n_samples"][...]

    def n_groups(self, field: str) -> np.ndarray | None:
        """Pick-freeze groups folded into Sobol' per time step, or None without Sobol'."""
        g = self._group(field)
        return g["n_groups"][...] if "n_groups" in g else None

    def confidence(self, field: str) -> tuple[float, str] | None:
        """``(confidence_level, method)`` of the Sobol' bounds, or None."""
        g = self._group(field)
        if "sobol_first_low" not in g:
            return None
        a = g["sobol_first_low"].attrs
        return float(a["confidence_level"]), _text(a["method"])

    @property
    def parameters(self) -> ParameterTable:
        """The design actually run (a :class:`ParameterTable`)."""
        pg = self._f["parameters"]
        names = tuple(_text(x) for x in np.atleast_1d(pg["value"].attrs.get("names", [])))
        return ParameterTable(names=names, values=pg["value"][...],
                              **{c: pg[c][...] for c in
                                 ("sim_id", "group_id", "member", "redrawn", "folded")})

    def to_xarray(self, field: str):
        """``field`` as a lazily loaded :class:`xarray.Dataset` (dims time_step, cell,
        threshold, quantile_level, parameter). Needs xarray and h5netcdf."""
        self._group(field)
        try:
            import xarray as xr
            import h5netcdf  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                f"Results.to_xarray needs xarray and h5netcdf ({exc}); install them with "
                "`pip install xarray h5netcdf`, or read the arrays with Results.get") from None
        return xr.open_dataset(self.path, group=field, engine="h5netcdf")

    # -- summary
    def summary(self) -> str:
        """A human-readable description: what ``melissa-sa info`` prints."""
        lines = [f"{self.path}", f"  format {self.format}, written by melissa-sa {self.version}"
                 + (f" on {self.created}" if self.created else "")]
        table = self.parameters
        n_groups = len(np.unique(table.group_id)) if len(table) else 0
        lines.append(f"  parameters: {len(table.names)} ({', '.join(table.names)})")
        extra = []
        if table.redrawn.any():
            extra.append(f"{int(table.redrawn.sum())} redrawn")
        if not table.folded.all():
            extra.append(f"{int((~table.folded).sum())} not folded in")
        lines.append(f"  runs: {len(table)} in {n_groups} group(s)"
                     + (f" ({', '.join(extra)})" if extra else ""))
        lines.append(f"  fields: {', '.join(self.fields)}")
        for fname in self.fields:
            lines.extend(self._field_summary(fname))
        return "\n".join(lines)

    def _field_summary(self, fname: str) -> list[str]:
        g = self._group(fname)
        N, T = self.n_cells(fname), self.n_time_steps(fname)
        out = [f"  field {fname}: {N} cells x {T} time steps"]
        stats = self.statistics(fname)
        shown = [s for s in stats if s not in SOBOL_STATISTICS[2:]]
        conf = self.confidence(fname)
        text = ", ".join(shown) if shown else "(none)"
        if conf:
            text += f" (+ {_pct(conf[0])} confidence bounds, method {conf[1]})"
        out.append(f"    statistics: {text}")
        if "threshold" in g:
            out.append(f"    thresholds: {_nums(self.thresholds(fname))}")
        if "quantile_level" in g:
            out.append(f"    quantile levels: {_nums(self.quantile_levels(fname))}")
        ns = self.n_samples(fname)
        out.append(f"    samples per time step: {_minmax(ns)}")
        ng = self.n_groups(fname)
        if ng is not None:
            out.append(f"    Sobol' groups per time step: {_minmax(ng)}")
        last = T - 1
        hints = []
        if "variance" in g and ns[last] > 0:
            var = _block_reduce(g["variance"], last, lambda a: np.sqrt(np.maximum(a, 0)))
            hints.append(f"    standard error of the mean, mean over cells: "
                         f"{var / math.sqrt(ns[last]):.3g}")
        if conf:
            names = tuple(_text(x) for x in g["parameter"][...])
            for kind in ("first", "total"):
                widths = _block_width(g[f"sobol_{kind}_low"], g[f"sobol_{kind}_high"], last)
                cells = "  ".join(f"{n} {w:.3g}" for n, w in zip(names, widths))
                hints.append(f"    mean {_pct(conf[0])} CI width, {kind}-order: {cells}")
        if hints:
            out.append(f"    convergence at the last time step ({last}):")
            out.extend("  " + h for h in hints)
        return out


# ---------------------------------------------------------------------------
# helpers


def _text(x) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, np.ndarray) and x.shape == ():
        return _text(x[()])
    return str(x)


def _pct(level: float) -> str:
    return f"{100 * level:g}%"


def _nums(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _minmax(a: np.ndarray) -> str:
    if a.size == 0:
        return "(none)"
    lo, hi = int(a.min()), int(a.max())
    return f"{lo}" if lo == hi else f"min {lo}, max {hi}"


_BLOCK = 1 << 20


def _block_reduce(d: h5py.Dataset, t: int, fn) -> float:
    """Mean over cells of fn(d[t, :]), read in blocks (bounded memory); NaN skipped."""
    N = d.shape[-1]
    total, count = 0.0, 0
    for lo in range(0, N, _BLOCK):
        a = fn(d[t, lo:lo + _BLOCK])
        ok = np.isfinite(a)
        total += float(a[ok].sum())
        count += int(ok.sum())
    return total / count if count else float("nan")


def _block_width(low: h5py.Dataset, high: h5py.Dataset, t: int) -> np.ndarray:
    """Per parameter, the mean over cells of high - low at time step t."""
    k, _, N = low.shape
    total = np.zeros(k)
    count = np.zeros(k)
    for lo in range(0, N, _BLOCK):
        w = high[:, t, lo:lo + _BLOCK] - low[:, t, lo:lo + _BLOCK]
        ok = np.isfinite(w)
        total += np.where(ok, w, 0.0).sum(axis=1)
        count += ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
