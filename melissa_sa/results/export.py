"""``melissa-sa export``: an existing results file on a mesh, for ParaView.

``--format xdmf`` (the default) is :func:`~melissa_sa.results.xdmf.write_xdmf`:
the mesh and the per-step views into ``results.h5``, ``results.xmf`` (ParaView)
and ``results.meshio.xmf`` (meshio) next to it, every time step, no value
copied. ``--format vtkhdf`` writes one self-contained VTKHDF file
(``UnstructuredGrid``, version 1.0, which ParaView 5.11 reads) holding the
mesh and every statistic of one time step (the last by default): the values
are copied, as a single file needs.

The mesh argument is a mesh file meshio reads, or a JSON file holding a mesh
object (``{"shape": [...], ...}`` or ``{"file": ...}``) or a whole study file
(its ``study_options.mesh``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from melissa_sa.mesh.errors import MeshError
from melissa_sa.mesh.geometry import Geometry, geometry_of
from melissa_sa.mesh.spec import MeshFile, StructuredGrid, parse_mesh
from melissa_sa.results.xdmf import field_arrays, results_fields, write_xdmf

__all__ = ["mesh_argument", "export_results", "write_vtkhdf", "EXPORT_FORMATS"]

EXPORT_FORMATS = ("xdmf", "vtkhdf")

#: meshio cell type -> VTK cell type number
_VTK_TYPES = {"vertex": 1, "line": 3, "triangle": 5, "quad": 9, "tetra": 10,
              "hexahedron": 12, "wedge": 13, "pyramid": 14, "line3": 21, "triangle6": 22,
              "quad8": 23, "tetra10": 24, "hexahedron20": 25}


def mesh_argument(path: str | os.PathLike, centering: str | None = None
                  ) -> StructuredGrid | MeshFile:
    """The mesh ``--mesh PATH`` names: a JSON mesh object or study file, or a mesh
    file (``centering`` applies to a mesh file; default cells)."""
    path = os.path.abspath(os.fspath(path))
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise MeshError("--mesh", f"{path}: no such file") from None
        except (OSError, ValueError) as exc:
            raise MeshError("--mesh", f"{path}: cannot read the JSON: {exc}") from None
        key = "--mesh"
        if isinstance(data, dict) and "study_options" in data:
            data = (data.get("study_options") or {}).get("mesh")
            key = "study_options.mesh"
            if data is None:
                raise MeshError("--mesh", f"{path}: the study file has no study_options.mesh")
        if centering is not None and isinstance(data, dict):
            data = {**data, "centering": centering}
        try:
            return parse_mesh(data, os.path.dirname(path), key=key)
        except MeshError as exc:
            raise MeshError(exc.key, f"{path}: {exc.message}") from None
    spec = {"file": path}
    if centering is not None:
        spec["centering"] = centering
    return parse_mesh(spec, key="--mesh")


def write_vtkhdf(results_path: str | os.PathLike, mesh: StructuredGrid | MeshFile | Geometry,
                 out: str | os.PathLike, time_step: int = -1) -> Path:
    """One VTKHDF file: the mesh and every statistic of ``time_step``."""
    geometry = mesh if isinstance(mesh, Geometry) else geometry_of(mesh)
    for cell_type, _ in geometry.blocks:
        if cell_type not in _VTK_TYPES:
            raise MeshError("--mesh", f"cell type {cell_type!r} has no VTK number here "
                                      f"(known: {', '.join(_VTK_TYPES)})")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(results_path, "r") as h5, h5py.File(tmp, "w") as dst:
        root = dst.create_group("VTKHDF")
        root.attrs["Version"] = np.array([1, 0], dtype=np.int64)
        root.attrs.create("Type", np.bytes_("UnstructuredGrid"))
        conn = np.concatenate([c.ravel() for _, c in geometry.blocks])
        sizes = np.concatenate([np.full(len(c), c.shape[1]) for _, c in geometry.blocks])
        root["NumberOfPoints"] = np.array([geometry.n_points], dtype=np.int64)
        root["NumberOfCells"] = np.array([geometry.n_cells], dtype=np.int64)
        root["NumberOfConnectivityIds"] = np.array([conn.size], dtype=np.int64)
        root["Points"] = geometry.points
        root["Connectivity"] = conn.astype(np.int64)
        root["Offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        root["Types"] = np.concatenate([np.full(len(c), _VTK_TYPES[t], dtype=np.uint8)
                                        for t, c in geometry.blocks])
        data = root.create_group("CellData" if geometry.centering == "cells" else "PointData")
        for field in results_fields(h5):
            g = h5[field]
            n = g["cell"].shape[0] if "cell" in g else int(g.attrs["n_cells"])
            if n != geometry.n_values:
                raise MeshError("--mesh", f"{h5.filename}: field {field!r} has {n} values, "
                                          f"the mesh has {geometry.n_values} "
                                          f"{geometry.centering}")
            for name, stat, lead in field_arrays(g, field):
                parts = [g[s] for s in stat.split(" - ")]
                t = time_step % parts[0].shape[-2]
                values = [p[(*(lead or ()), t)] for p in parts]
                data[name] = values[0] if len(values) == 1 else values[0] - values[1]
    os.replace(tmp, out)
    return out


def export_results(results_path: str | os.PathLike, mesh: StructuredGrid | MeshFile,
                   fmt: str = "xdmf", out: str | os.PathLike | None = None,
                   time_step: int = -1) -> Path:
    """Write ``results.xmf`` (and the mesh into the results file) or one VTKHDF file
    (``out``, default ``results.vtk.hdf`` next to the results: ParaView 5.11 picks its
    VTKHDF reader by the ``.hdf`` extension); the path written."""
    results_path = Path(results_path)
    if fmt == "xdmf":
        return write_xdmf(results_path, mesh)
    if fmt == "vtkhdf":
        return write_vtkhdf(results_path, mesh, out or results_path.with_suffix(".vtk.hdf"),
                            time_step)
    raise MeshError("--format", f"unknown export format {fmt!r} (known: "
                                f"{', '.join(EXPORT_FORMATS)})")
