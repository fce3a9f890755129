"""Reading a results file: :func:`open_results` and :class:`Results`.

Arrays are read lazily, on request; :meth:`Results.summary` is what
``melissa-sa info`` prints, reading the mesh in bounded blocks.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import h5py
import numpy as np

from melissa_sa.results.layout import ParameterTable
from melissa_sa.results.schema import (
    COUNTS,
    FORMAT,
    SOBOL_STATISTICS,
    STATISTICS,
    ResultsFileError,
    as_text,
    version,
)

__all__ = ["Results", "open_results"]


def open_results(path) -> Results:
    """Open a results file for reading; raises :class:`ResultsFileError` naming it
    if it is not a complete melissa-sa results file."""
    return Results(path)


class Results:
    """Read access to a results file. Arrays are read lazily, on request.

    Use as a context manager, or call :meth:`close`; one left open warns
    (``ResourceWarning``) when it is garbage collected.
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
        fmt = as_text(fmt)
        if fmt != FORMAT:
            raise ResultsFileError(f"{self.path}: format {fmt!r} is not {FORMAT!r}; this "
                                   f"reader (melissa-sa {version()}) cannot read it")
        if not bool(attrs.get("complete", False)):
            raise ResultsFileError(f"{self.path} is incomplete: its writer did not finish "
                                   "(a crashed or interrupted run)")
        fields = tuple(as_text(x) for x in np.atleast_1d(attrs.get("fields", [])))
        missing = [f for f in fields if f not in self._f]
        if missing or "parameters" not in self._f:
            raise ResultsFileError(f"{self.path}: damaged results file, missing group(s) "
                                   f"{missing or ['parameters']}")
        self._fields = fields

    # -- basics
    def close(self) -> None:
        self._f.close()

    def __del__(self) -> None:
        # like an unclosed Python file: say so (visible with -W error::ResourceWarning)
        f = getattr(self, "_f", None)
        if f is not None and f.id.valid:
            warnings.warn(f"unclosed results file {self.path}: use `with open_results(...)`"
                          " or call close()", ResourceWarning, stacklevel=2)
            f.close()

    def __enter__(self) -> Results:
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
        return as_text(self._f.attrs["format"])

    @property
    def version(self) -> str:
        """The melissa-sa version that wrote the file."""
        return as_text(self._f.attrs.get("melissa_sa_version", "unknown"))

    @property
    def created(self) -> str:
        return as_text(self._f.attrs.get("created", ""))

    @property
    def config(self) -> dict:
        """The study config the file was written for."""
        return json.loads(as_text(self._f.attrs.get("config", "{}")))

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
        return as_text(self._dataset(field, stat).attrs.get("definition", ""))

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

    def aggregated(self, field: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Whole-field (first, total) Sobol' indices, each (parameter, time_step), or None."""
        g = self._group(field)
        if "sobol_first_aggregated" not in g:
            return None
        return g["sobol_first_aggregated"][...], g["sobol_total_aggregated"][...]

    def pair_names(self, field: str) -> tuple[str, ...]:
        """Names of the second-order pairs (``"x1:x2"``, in
        ``itertools.combinations`` order), or ``()`` without second order."""
        g = self._group(field)
        return tuple(as_text(x) for x in g["pair"][...]) if "pair" in g else ()

    def aggregated_interval(self, field: str):
        """Bounds of the whole-field indices: ``((first_low, first_high),
        (total_low, total_high), confidence_level)``, each array (parameter,
        time_step); None for a file written without them."""
        g = self._group(field)
        if "sobol_first_aggregated_low" not in g:
            return None
        arrays = [g[f"sobol_{kind}_aggregated_{side}"][...]
                  for kind in ("first", "total") for side in ("low", "high")]
        level = float(g["sobol_first_aggregated_low"].attrs["confidence_level"])
        return (arrays[0], arrays[1]), (arrays[2], arrays[3]), level

    def confidence(self, field: str) -> tuple[float, str] | None:
        """``(confidence_level, method)`` of the Sobol' bounds, or None."""
        g = self._group(field)
        if "sobol_first_low" not in g:
            return None
        a = g["sobol_first_low"].attrs
        return float(a["confidence_level"]), as_text(a["method"])

    @property
    def parameters(self) -> ParameterTable:
        """The design actually run (a :class:`ParameterTable`)."""
        pg = self._f["parameters"]
        names = tuple(as_text(x) for x in np.atleast_1d(pg["value"].attrs.get("names", [])))
        return ParameterTable(names=names, values=pg["value"][...],
                              **{c: pg[c][...] for c in
                                 ("sim_id", "group_id", "member", "redrawn", "folded")})

    def to_xarray(self, field: str):
        """``field`` as a lazily loaded :class:`xarray.Dataset` (dims time_step, cell,
        threshold, quantile_level, parameter). Needs xarray and h5netcdf."""
        self._group(field)
        try:
            import h5netcdf  # noqa: F401
            import xarray as xr
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
        shown = [s for s in stats if s not in SOBOL_STATISTICS[2:]
                 and not s.startswith("sobol_second_")]
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
            names = tuple(as_text(x) for x in g["parameter"][...])
            for kind in ("first", "total"):
                widths = _block_width(g[f"sobol_{kind}_low"], g[f"sobol_{kind}_high"], last)
                cells = "  ".join(f"{n} {w:.3g}" for n, w in zip(names, widths, strict=True))
                hints.append(f"    mean {_pct(conf[0])} CI width, {kind}-order: {cells}")
        if hints:
            out.append(f"    convergence at the last time step ({last}):")
            out.extend("  " + h for h in hints)
        out.extend(self._aggregated_summary(fname))
        out.extend(self._second_order_summary(fname))
        return out

    def _second_order_summary(self, fname: str) -> list[str]:
        """Second-order indices per pair at the last time step: mean and largest
        value over cells and the mean interval width (read in bounded blocks)."""
        g = self._group(fname)
        if "sobol_second" not in g:
            return []
        last = self.n_time_steps(fname) - 1
        pairs = self.pair_names(fname)
        mean, largest = _block_mean_max(g["sobol_second"], last)
        widths = _block_width(g["sobol_second_low"], g["sobol_second_high"], last)
        conf = self.confidence(fname)
        level = _pct(conf[0]) if conf else ""
        out = [f"    second-order Sobol' indices at the last time step ({last}), over cells:"]
        width = max([len(p) for p in pairs] + [4])
        for name, m, x, w in zip(pairs, mean, largest, widths, strict=True):
            out.append(f"      {name:<{width}s}  mean {m:.3g}  max {x:.3g}  "
                       f"mean {level} CI width {w:.3g}")
        return out

    def _aggregated_summary(self, fname: str) -> list[str]:
        """Whole-field indices: the last time step's value and the range over steps."""
        agg = self.aggregated(fname)
        if agg is None:
            return []
        if np.isnan(agg[0]).all():
            return ["    aggregated Sobol' indices of the whole field: not written"]
        names = self.parameter_names() or tuple(f"p{i + 1}" for i in range(agg[0].shape[0]))
        bounds = self.aggregated_interval(fname)
        ci = f" ({_pct(bounds[2])} interval)" if bounds else ""
        out = ["    aggregated Sobol' indices of the whole field, "
               f"last time step{ci} [min, max over steps]:"]
        for i, (kind, values) in enumerate(zip(("first", "total"), agg, strict=True)):
            cells = []
            for k, (n, v) in enumerate(zip(names, values, strict=False)):
                text = f"{n} {v[-1]:.3f}"
                if bounds:
                    low, high = bounds[i][0][k, -1], bounds[i][1][k, -1]
                    text += (f" ({low:.3f}, {high:.3f})" if np.isfinite([low, high]).all()
                             else " (no interval: too few groups)")
                cells.append(text + f" [{np.nanmin(v):.3f}, {np.nanmax(v):.3f}]")
            out.append(f"      {kind:5s}: {'  '.join(cells)}")
        return out


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


def _block_mean_max(d: h5py.Dataset, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Per leading index (pair), the mean and max over cells at time step t (NaN skipped)."""
    k, _, N = d.shape
    total, count = np.zeros(k), np.zeros(k)
    largest = np.full(k, -np.inf)
    for lo in range(0, N, _BLOCK):
        a = d[:, t, lo:lo + _BLOCK]
        ok = np.isfinite(a)
        total += np.where(ok, a, 0.0).sum(axis=1)
        count += ok.sum(axis=1)
        if a.shape[1]:
            largest = np.maximum(largest, np.where(ok, a, -np.inf).max(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean, np.where(count > 0, largest, np.nan)


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
