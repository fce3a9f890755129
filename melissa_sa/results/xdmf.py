"""``results.xmf``: every statistic of ``results.h5`` on the solver's mesh, for ParaView.

:func:`write_xdmf` writes the mesh's points and cells once into ``results.h5``
(group ``/mesh``), a virtual dataset per statistic and time step
(``/by_step``, :mod:`.step_views`: no value copied) and, next to it, two XDMF
files referring to ``results.h5`` by its relative name (the files may move
together):

* ``results.xmf`` (XDMF 2), which ParaView's ``XDMFReader`` opens: a
  temporal collection with one grid per time step, each holding, for every
  field, every statistic of that step as a cell (or point) attribute, and
  interval widths as ``Function`` items (``$0 - $1`` of the bounds);
  ParaView's Xdmf3 readers read the same file but skip the widths.
* ``results.meshio.xmf`` (XDMF 3), the same without the widths, which
  ``meshio.xdmf.TimeSeriesReader`` reads (meshio has no ``Function`` items).

Names read ``"<field> mean"``, ``"<field> P(>300)"``, ``"<field> quantile 0.95"``,
``"<field> S1 x2"``, ``"<field> ST x2 width"``, ``"<field> S2 x1:x2"``.
``docs/results.md`` describes the layout.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import h5py
import numpy as np

from melissa_sa.mesh.errors import MeshError
from melissa_sa.mesh.geometry import Geometry, geometry_of
from melissa_sa.mesh.spec import MeshFile, StructuredGrid
from melissa_sa.result_groups import MESH_GROUP, STEPS_GROUP
from melissa_sa.results.step_views import (
    MAX_SERVER_VIEWS,
    VIEW_BYTES,
    has_step_views,
    view_path,
    write_step_views,
)

__all__ = ["write_xdmf", "write_xdmf_file", "write_geometry", "xdmf_path", "meshio_xdmf_path",
           "write_views", "attribute_names",
           "field_arrays", "results_fields", "study_geometry", "geometry_bytes",
           "xdmf_after_study", "XDMF_TYPES"]

log = logging.getLogger("melissa_sa.results")

#: meshio cell type -> (XDMF topology name, XDMF mixed type code)
XDMF_TYPES = {
    "vertex": ("Polyvertex", 1), "line": ("Polyline", 2), "triangle": ("Triangle", 4),
    "quad": ("Quadrilateral", 5), "tetra": ("Tetrahedron", 6), "pyramid": ("Pyramid", 7),
    "wedge": ("Wedge", 8), "hexahedron": ("Hexahedron", 9), "line3": ("Edge_3", 34),
    "triangle6": ("Triangle_6", 36), "quad8": ("Quadrilateral_8", 37),
    "tetra10": ("Tetrahedron_10", 38), "hexahedron20": ("Hexahedron_20", 48),
}

#: per-cell statistics of shape (time_step, cell)
_PLAIN = ("mean", "variance", "skewness", "kurtosis", "min", "max")


def xdmf_path(results_path: str | os.PathLike) -> Path:
    """``results.xmf`` next to ``results.h5`` (same stem)."""
    return Path(results_path).with_suffix(".xmf")


def meshio_xdmf_path(results_path: str | os.PathLike) -> Path:
    """``results.meshio.xmf`` next to ``results.h5``: the XDMF 3 file meshio reads."""
    return Path(results_path).with_suffix(".meshio.xmf")


def write_views(h5: h5py.File) -> int:
    """Add to the open results file the ``/by_step`` views (:mod:`.step_views`)
    of every array the XDMF files show; the number added."""
    return write_step_views(h5, results_fields(h5), field_arrays)


def write_geometry(h5: h5py.File, geometry: Geometry, description: dict) -> None:
    """Write ``/mesh`` (points, and connectivity for one cell type or the XDMF
    mixed topology for several) into the open results file, replacing an old one."""
    if MESH_GROUP in [str(f) for f in h5.attrs.get("fields", ())]:
        raise MeshError("RESULTS", f"{h5.filename}: /{MESH_GROUP} holds the results of the "
                                   f"field {MESH_GROUP!r}: not replaced by the mesh (rename "
                                   "the field in study_options.field_names)")
    if MESH_GROUP in h5:
        del h5[MESH_GROUP]
    g = h5.create_group(MESH_GROUP)
    g.create_dataset("points", data=geometry.points)
    for cell_type, _ in geometry.blocks:
        if cell_type not in XDMF_TYPES:
            raise MeshError("--mesh", f"cell type {cell_type!r} has no XDMF equivalent "
                                      f"(known: {', '.join(XDMF_TYPES)})")
    if len(geometry.blocks) == 1:
        g.create_dataset("connectivity", data=geometry.blocks[0][1])
    else:
        parts = []
        for cell_type, conn in geometry.blocks:
            code = XDMF_TYPES[cell_type][1]
            head = [np.full(len(conn), code)]
            if code in (1, 2):  # polyvertex and polyline carry their node count
                head.append(np.full(len(conn), conn.shape[1]))
            parts.append(np.column_stack([*head, conn]).ravel())
        g.create_dataset("topology", data=np.concatenate(parts).astype(np.int64))
    g.attrs["centering"] = geometry.centering
    g.attrs["cell_types"] = json.dumps([t for t, _ in geometry.blocks])
    g.attrs["n_cells"] = geometry.n_cells
    g.attrs["n_points"] = geometry.n_points
    g.attrs["description"] = json.dumps(description)


def field_arrays(g: h5py.Group, field: str) -> list[tuple[str, str, tuple | None]]:
    """The arrays of one field's group: ``(name, dataset, leading index or None)``;
    an interval width has dataset ``"<stat>_high - <stat>_low"``."""
    def scale(name):
        return [v.decode() if isinstance(v, bytes) else v for v in g[name][...]] \
            if name in g else []

    out: list[tuple[str, str, tuple | None]] = []
    for stat in _PLAIN:
        if stat in g:
            out.append((f"{field} {stat}", stat, None))
    for k, thr in enumerate(scale("threshold") if "threshold_exceedance" in g else []):
        out.append((f"{field} P(>{thr:g})", "threshold_exceedance", (k,)))
    for k, level in enumerate(scale("quantile_level") if "quantiles" in g else []):
        out.append((f"{field} quantile {level:g}", "quantiles", (k,)))
    for label, stat, names in (("S1", "sobol_first", scale("parameter")),
                               ("ST", "sobol_total", scale("parameter")),
                               ("S2", "sobol_second", scale("pair"))):
        if stat not in g:
            continue
        for k, name in enumerate(names):
            out.append((f"{field} {label} {name}", stat, (k,)))
            if f"{stat}_low" in g and f"{stat}_high" in g:
                out.append((f"{field} {label} {name} width",
                            f"{stat}_high - {stat}_low", (k,)))
    return out


def attribute_names(results_path: str | os.PathLike) -> list[str]:
    """Every attribute name :func:`write_xdmf` gives, in file order."""
    with h5py.File(results_path, "r") as h5:
        return [name for field in results_fields(h5)
                for name, _, _ in field_arrays(h5[field], field)]


def results_fields(h5: h5py.File) -> list[str]:
    fields = h5.attrs.get("fields")
    if fields is None:
        raise MeshError("RESULTS", f"{h5.filename}: not a melissa-sa results file (no "
                                   "'fields' attribute)")
    return [f.decode() if isinstance(f, bytes) else str(f) for f in fields]


def _item(h5name: str, path: str, n: int) -> str:
    return (f'<DataItem Format="HDF" NumberType="Float" Precision="8" Dimensions="{n}">'
            f"{h5name}:{path}</DataItem>")


def _hyperslab(h5: h5py.File, h5name: str, field: str, stat: str, lead: tuple,
               t: int, n: int) -> str:
    """Row ``[lead, t]`` of ``/<field>/<stat>`` as an XDMF 2 ``HyperSlab`` item
    (start, stride, count per axis), for a file without the ``/by_step`` views."""
    shape = h5[field][stat].shape
    start = [*lead, t, 0]
    count = [1] * (len(shape) - 1) + [n]
    slab = " ".join(str(v) for v in (*start, *([1] * len(shape)), *count))
    return (f'<DataItem ItemType="HyperSlab" Dimensions="{" ".join(map(str, count))}" '
            f'Type="HyperSlab"><DataItem Dimensions="3 {len(shape)}" Format="XML">{slab}'
            f'</DataItem><DataItem Format="HDF" NumberType="Float" Precision="8" '
            f'Dimensions="{" ".join(map(str, shape))}">{h5name}:/{field}/{stat}</DataItem>'
            "</DataItem>")


def _topology(h5name: str, geometry: Geometry) -> str:
    if len(geometry.blocks) == 1:
        cell_type, conn = geometry.blocks[0]
        n, k = conn.shape
        extra = f' NodesPerElement="{k}"' if cell_type in ("line", "vertex") else ""
        return (f'<Topology TopologyType="{XDMF_TYPES[cell_type][0]}" NumberOfElements="{n}"'
                f'{extra}><DataItem Format="HDF" NumberType="Int" Precision="8" '
                f'Dimensions="{n} {k}">{h5name}:/{MESH_GROUP}/connectivity</DataItem>'
                "</Topology>")
    size = sum(conn.size + len(conn) * (2 if t in ("line", "vertex") else 1)
               for t, conn in geometry.blocks)
    return (f'<Topology TopologyType="Mixed" NumberOfElements="{geometry.n_cells}">'
            f'<DataItem Format="HDF" NumberType="Int" Precision="8" Dimensions="{size}">'
            f"{h5name}:/{MESH_GROUP}/topology</DataItem></Topology>")


def _check_sizes(h5: h5py.File, geometry: Geometry) -> int:
    """The number of time steps every field has; a :class:`MeshError` when a
    field's size differs from the mesh's values."""
    n_steps = None
    for field in results_fields(h5):
        g = h5[field]
        n_values = int(g.attrs.get("n_cells", g["cell"].shape[0] if "cell" in g else -1))
        if n_values != geometry.n_values:
            raise MeshError("--mesh", f"{h5.filename}: field {field!r} has {n_values} values, "
                                      f"the mesh has {geometry.n_values} {geometry.centering}")
        steps = int(g.attrs.get("n_time_steps", g["time_step"].shape[0]))
        n_steps = steps if n_steps is None else min(n_steps, steps)
    return n_steps or 0


def _xdmf_text(h5: h5py.File, h5name: str, geometry: Geometry, *, widths: bool,
               views: bool = True) -> str:
    """``results.xmf`` (XDMF 2, ``widths`` as ``Function`` items; its rows are
    the ``/by_step`` views, or without ``views`` HyperSlab items) or, without
    widths, ``results.meshio.xmf`` (XDMF 3, which needs the views)."""
    # here: xml.sax.saxutils imports urllib, http and email (about 0.01 s), which
    # a server whose study has no mesh never needs
    from xml.sax.saxutils import quoteattr

    n_steps = _check_sizes(h5, geometry)
    fields = results_fields(h5)
    if MESH_GROUP not in h5:
        raise MeshError("RESULTS", f"{h5.filename}: no /{MESH_GROUP} (a study without "
                                   "study_options.mesh): run melissa-sa export RESULTS --mesh "
                                   "MESH")
    if views and not has_step_views(h5, fields, field_arrays):
        raise MeshError("RESULTS", f"{h5.filename}: no /{STEPS_GROUP} views of the statistics "
                                   "(a file written before they existed): run melissa-sa "
                                   "export RESULTS --mesh MESH")
    center = "Cell" if geometry.centering == "cells" else "Node"
    arrays = [(field, name, stat, lead) for field in fields
              for name, stat, lead in field_arrays(h5[field], field)
              if widths or " - " not in stat]
    topology = _topology(h5name, geometry)
    geometry_xml = (f'<Geometry GeometryType="XYZ"><DataItem Format="HDF" NumberType="Float" '
                    f'Precision="8" Dimensions="{geometry.n_points} 3">'
                    f"{h5name}:/{MESH_GROUP}/points</DataItem></Geometry>")
    n = geometry.n_values
    lines = ['<?xml version="1.0" ?>', f'<Xdmf Version="{"2.0" if widths else "3.0"}">',
             " <Domain>", '  <Grid Name="results" GridType="Collection" '
                          'CollectionType="Temporal">']
    for t in range(n_steps):
        lines.append(f'   <Grid Name="step {t}" GridType="Uniform">')
        lines.append(f'    <Time Value="{t}"/>')
        lines.append(f"    {topology}")
        lines.append(f"    {geometry_xml}")
        for field, name, stat, lead in arrays:
            items = [_item(h5name, view_path(field, source, lead, t), n) if views
                     else _hyperslab(h5, h5name, field, source, lead or (), t, n)
                     for source in stat.split(" - ")]
            if len(items) == 1:
                item = items[0]
            else:
                item = (f'<DataItem ItemType="Function" Function="$0 - $1" Dimensions="{n}">'
                        f'{"".join(items)}</DataItem>')
            lines.append(f'    <Attribute Name={quoteattr(name)} AttributeType="Scalar" '
                         f'Center="{center}">{item}</Attribute>')
        lines.append("   </Grid>")
    lines += ["  </Grid>", " </Domain>", "</Xdmf>", ""]
    return "\n".join(lines)


def write_xdmf(results_path: str | os.PathLike,
               mesh: StructuredGrid | MeshFile | Geometry) -> Path:
    """Write the mesh and the ``/by_step`` views into ``results_path`` and the XDMF
    files next to it; returns ``results.xmf``'s path. Raises :class:`MeshError`
    when a field's size differs from the mesh's values (nothing written then)."""
    geometry = mesh if isinstance(mesh, Geometry) else geometry_of(mesh)
    description = {} if isinstance(mesh, Geometry) else mesh.to_dict()
    results_path = Path(results_path)
    with h5py.File(results_path, "r") as h5:
        _check_sizes(h5, geometry)  # the sizes are checked before writing
    with h5py.File(results_path, "r+") as h5:
        write_geometry(h5, geometry, description)
        write_views(h5)
    return write_xdmf_file(results_path, geometry)


def _replace_text(out: Path, text: str) -> None:
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def write_xdmf_file(results_path: str | os.PathLike, geometry: Geometry) -> Path:
    """Write ``results.xmf`` and ``results.meshio.xmf`` next to ``results_path``
    (whose ``/mesh`` is ``geometry``), each through a temporary file, removed if
    the write fails; ``results.xmf``. A file without the ``/by_step`` views (the
    server skips them past :data:`MAX_SERVER_VIEWS`) gets ``results.xmf`` with
    HyperSlab items, which ParaView's XDMF Reader reads, and no
    ``results.meshio.xmf`` (an old one is removed: its views are not there)."""
    results_path = Path(results_path)
    meshio_path = meshio_xdmf_path(results_path)
    with h5py.File(results_path, "r") as h5:
        views = has_step_views(h5, results_fields(h5), field_arrays)
        texts = {xdmf_path(results_path): _xdmf_text(h5, results_path.name, geometry,
                                                     widths=True, views=views)}
        if views:
            texts[meshio_path] = _xdmf_text(h5, results_path.name, geometry, widths=False)
    if not views:
        meshio_path.unlink(missing_ok=True)
    for out, text in texts.items():
        _replace_text(out, text)
    return xdmf_path(results_path)


def study_geometry(mesh) -> tuple[Geometry, dict] | None:
    """Rank 0, before the results write: the geometry of ``study_options.mesh``
    and its description, written into ``results.h5`` with its first bytes (see
    :func:`~melissa_sa.results.create.create_results_file`); None without a
    mesh or when the mesh cannot be read now (logged: the results are written
    without it)."""
    if mesh is None:
        return None
    try:
        return geometry_of(mesh), mesh.to_dict()
    except (MeshError, OSError) as exc:
        log.error("the mesh is left out of results.h5 and results.xmf: %s", exc)
        return None


#: the statistics the XDMF files show (with their bounds for the widths)
_SHOWN = (*_PLAIN, "threshold_exceedance", "quantiles",
          *(f"sobol_{kind}{end}" for kind in ("first", "total", "second")
            for end in ("", "_low", "_high")))


def geometry_bytes(geometry: Geometry, layout=None) -> int:
    """The bytes ``/mesh`` takes in ``results.h5`` (points, connectivity, and
    for mixed cell types two more integers per cell) and, given the results'
    :class:`~melissa_sa.results.layout.ResultsLayout`, the metadata of the
    ``/by_step`` views (:data:`~melissa_sa.results.step_views.VIEW_BYTES` each;
    none past :data:`MAX_SERVER_VIEWS`, which the server does not write)."""
    views = 0 if layout is None else sum(
        math.prod(layout.shape(field, stat)[:-1]) for field in layout.fields
        for stat in layout.statistics if stat in _SHOWN)
    views = 0 if views > MAX_SERVER_VIEWS else views
    return (geometry.points.nbytes + sum(conn.nbytes for _, conn in geometry.blocks)
            + (16 * geometry.n_cells if len(geometry.blocks) > 1 else 0)
            + VIEW_BYTES * views)


def xdmf_after_study(results_path: str | os.PathLike,
                     geometry: tuple[Geometry, dict] | None) -> Path | None:
    """The server's call once ``results.h5`` (holding ``/mesh``) is complete:
    :func:`write_xdmf_file` when the study has a mesh; a failure is logged and
    leaves ``results.h5`` as it is (only ``results.xmf`` is written here)."""
    if geometry is None:
        return None
    try:
        out = write_xdmf_file(results_path, geometry[0])
    except (MeshError, OSError) as exc:
        log.error("results.xmf not written: %s", exc)
        return None
    log.info("ParaView: open %s", out)
    return out
