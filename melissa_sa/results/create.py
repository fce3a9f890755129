"""Creating ``OUT/results.h5.tmp``: every dataset of a study's file at full size.

:func:`create_results_file` is rank 0's first step of every write
(:mod:`.writer`): from a :class:`~melissa_sa.results.layout.ResultsLayout` it
makes the file's attributes (format, version, config, creation time), the
design table, and per field every statistic's dataset, chunked and filled
with :data:`~melissa_sa.results.schema.FLOAT_FILL` (counts with
:data:`~melissa_sa.results.schema.COUNT_FILL`), with its dimension scales and
``definition`` attributes (:mod:`.schema`). The ranks then write their
slices into it.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from melissa_sa.result_groups import PARAMETERS_GROUP
from melissa_sa.results.layout import ResultsLayout, as_table
from melissa_sa.results.schema import (
    AGGREGATED,
    AGGREGATED_CI_METHOD,
    CI_METHODS,
    COUNT_FILL,
    FLOAT_FILL,
    FORMAT,
    STATISTICS,
    version,
)
from melissa_sa.results.step_views import MAX_SERVER_VIEWS, count_step_views
from melissa_sa.results.xdmf import field_arrays, results_fields, write_geometry, write_views

__all__ = ["create_results_file"]

log = logging.getLogger("melissa_sa.results")


def _str_scale(group, name: str, values) -> h5py.Dataset:
    return group.create_dataset(name, data=np.array(list(values), dtype=object),
                                dtype=h5py.string_dtype())


def _chunks(layout: ResultsLayout, shape: tuple[int, ...]) -> tuple[int, ...]:
    T, N = shape[-2], shape[-1]
    cells = min(N, layout.chunk_elements)
    steps = max(1, min(T, layout.chunk_elements // cells))
    return (1,) * (len(shape) - 2) + (steps, cells)


def create_results_file(path, layout: ResultsLayout, config_json: str | Mapping | None = None,
                        parameters=None, attrs: Mapping | None = None, mesh=None) -> Path:
    """Create ``path`` with every dataset of ``layout`` at full size (rank 0's job).

    Statistics are float64, filled with NaN until written; counts are int64,
    filled with -1. ``config_json`` is the study config (a JSON string or a
    mapping); ``parameters`` a :class:`ParameterTable`, a mapping of its
    fields, an ``(n_runs, n_params)`` array or None. The file is marked
    incomplete (root attr ``complete = False``) until
    :func:`complete_results_file`. Memory used is independent of the mesh size.
    ``attrs`` adds root attributes (e.g. the server's dropped-message counts).
    ``mesh``: ``(geometry, description)`` of the study's mesh, written as
    ``/mesh`` (:func:`~melissa_sa.results.xdmf.write_geometry`) and the
    ``/by_step`` views of the XDMF files (:mod:`.step_views`) with the rest,
    before the file is complete.
    """
    path = Path(path)
    if config_json is None:
        config_json = "{}"
    elif not isinstance(config_json, str):
        config_json = json.dumps(config_json)
    else:
        json.loads(config_json)  # must be valid JSON
    table = as_table(parameters, layout)
    T = layout.n_time_steps
    comp = {} if layout.gzip is None else {"compression": "gzip",
                                            "compression_opts": int(layout.gzip)}
    with h5py.File(path, "w", libver=("v108", "v110"), track_order=True) as f:
        f.attrs["format"] = FORMAT
        f.attrs["melissa_sa_version"] = version()
        f.attrs["config"] = config_json
        f.attrs["fields"] = list(layout.fields)
        f.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        f.attrs["complete"] = False
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        if mesh is not None:
            write_geometry(f, *mesh)

        # -- /parameters
        pg = f.create_group(PARAMETERS_GROUP, track_order=True)
        pg.attrs["description"] = ("the design actually run, one row per run; member 0 = A, "
                                   "1 = B, 2 + k = C_k (A with column k from B) under Sobol', "
                                   "and 2 + p + k = D_k (B with column k from A) with "
                                   "second order")
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
            if layout.has_second_order:
                scales["pair"] = _str_scale(g, "pair", layout.pair_names)
            for name, ds in scales.items():
                ds.make_scale(name)

            for stat in layout.statistics:
                shape = layout.shape(fname, stat)
                d = g.create_dataset(stat, shape=shape, dtype=np.float64,
                                     chunks=_chunks(layout, shape), fillvalue=FLOAT_FILL, **comp)
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
                d = g.create_dataset(cname, shape=(T,), dtype=np.int64, fillvalue=COUNT_FILL)
                d.dims[0].attach_scale(ts)
                d.attrs["definition"] = layout.definition(cname)
            if layout.has_sobol:
                for aname in AGGREGATED:
                    d = g.create_dataset(aname, shape=(len(layout.parameter_names), T),
                                         dtype=np.float64, fillvalue=FLOAT_FILL)
                    d.dims[0].attach_scale(scales["parameter"])
                    d.dims[1].attach_scale(ts)
                    d.attrs["definition"] = layout.definition(aname)
                    if aname.endswith(("_low", "_high")):
                        d.attrs["confidence_level"] = layout.confidence_level
                        d.attrs["method"] = AGGREGATED_CI_METHOD
        if mesh is not None:
            _views_with_results(f)
    return path


def _views_with_results(f: h5py.File) -> None:
    """The ``/by_step`` views, unless there are more than :data:`MAX_SERVER_VIEWS`
    (each costs rank 0 0.6-0.9 ms): ``results.xmf`` then reads the rows with
    HyperSlab items, and ``melissa-sa export`` writes the views later."""
    n = count_step_views(f, results_fields(f), field_arrays)
    if n <= MAX_SERVER_VIEWS:
        write_views(f)
        return
    log.info("results.h5: %d /by_step views is more than %d: not written with the results; "
             "results.xmf reads the rows with HyperSlab items (ParaView's XDMF Reader); "
             "melissa-sa export RESULTS --mesh MESH writes the views and "
             "results.meshio.xmf later", n, MAX_SERVER_VIEWS)
