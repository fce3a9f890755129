"""Where a field's values live: ``study_options.mesh`` of the study file.

Two kinds of mesh, both with a ``centering`` (``"cells"``: one value per cell,
``"points"``: one value per point):

* a structured grid of a finite-difference solver::

      {"shape": [nx, ny], "origin": [x0, y0], "spacing": [dx, dy],
       "order": "F", "centering": "cells"}

  ``shape`` counts the values along x, y (and z), 1 to 3 axes; value
  ``(i, j, k)`` sits at ``origin + (i, j, k) * spacing``, with cell centering
  in the middle of a cell of size ``spacing``. ``order`` says how the
  solver's vector runs through the grid: ``"F"`` the first axis (x) fastest,
  value ``i + nx * j``; ``"C"`` the last axis fastest, value ``i * ny + j``.

* a mesh file that meshio reads (VTU, VTK, Gmsh, XDMF, Exodus, ...)::

      {"file": "mesh.vtu", "format": "vtu", "centering": "cells"}

  ``format`` is optional (meshio guesses it from the extension); the values
  of a cell-centred field follow meshio's cells, block after block.

:func:`parse_mesh` checks such an object and returns a :class:`StructuredGrid`
or a :class:`MeshFile`; every problem is a :class:`MeshError` naming the key,
the file and the value. The number of values a field must have is
``mesh.n_values``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from melissa_sa.mesh.errors import MeshError
from melissa_sa.mesh.reading import read_mesh_file

__all__ = ["StructuredGrid", "MeshFile", "parse_mesh", "parse_field_sizes", "size_mismatch",
           "CENTERINGS"]

CENTERINGS = ("cells", "points")
ORDERS = ("C", "F")
_GRID_KEYS = ("shape", "origin", "spacing", "order", "centering")
_FILE_KEYS = ("file", "format", "centering")


@dataclass(frozen=True)
class StructuredGrid:
    """A uniform grid of 1 to 3 axes (see the module's docstring)."""

    shape: tuple[int, ...]
    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    order: str = "C"
    centering: str = "cells"

    @property
    def n_values(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "origin": list(self.origin),
                "spacing": list(self.spacing), "order": self.order,
                "centering": self.centering}

    def describe(self) -> str:
        dims = " x ".join(str(n) for n in self.shape)
        return f"structured grid {dims} ({self.n_values} {self.centering})"


@dataclass(frozen=True)
class MeshFile:
    """A mesh file read with meshio; ``n_cells`` and ``n_points`` as read at load."""

    file: str
    format: str | None
    centering: str
    n_cells: int
    n_points: int

    @property
    def n_values(self) -> int:
        return self.n_cells if self.centering == "cells" else self.n_points

    def to_dict(self) -> dict:
        return {"file": self.file, "format": self.format, "centering": self.centering}

    def describe(self) -> str:
        return f"{self.file} ({self.n_cells} cells, {self.n_points} points; values on " \
               f"{self.centering})"


def _numbers(key: str, value: Any, n: int | None, *, integer: bool, positive: bool) -> tuple:
    what = "integers" if integer else "numbers"
    if not isinstance(value, (list, tuple)) or not value:
        raise MeshError(key, f"expected a list of {what}, got {value!r}")
    out = []
    for v in value:
        good = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not good or (not integer and not math.isfinite(v)):
            raise MeshError(key, f"expected a list of {what}, got {value!r}")
        if positive and v <= 0:
            raise MeshError(key, f"every entry must be > 0, got {value!r}")
        out.append(int(v) if integer else float(v))
    if n is not None and len(out) != n:
        raise MeshError(key, f"has {len(out)} entries, the grid's shape has {n} axes")
    return tuple(out)


def _centering(key: str, d: Mapping) -> str:
    value = d.get("centering", "cells")
    if value not in CENTERINGS:
        raise MeshError(f"{key}.centering", f'expected "cells" or "points", got {value!r}')
    return value


def _grid(key: str, d: Mapping) -> StructuredGrid:
    if "shape" not in d:
        raise MeshError(f"{key}.shape", "missing (a structured grid needs shape; a mesh file, "
                                        "file)")
    shape = _numbers(f"{key}.shape", d["shape"], None, integer=True, positive=True)
    if len(shape) > 3:
        raise MeshError(f"{key}.shape", f"a grid has 1, 2 or 3 axes, got {len(shape)}: "
                                        f"{list(shape)}")
    origin = _numbers(f"{key}.origin", d.get("origin", [0.0] * len(shape)), len(shape),
                      integer=False, positive=False)
    spacing = _numbers(f"{key}.spacing", d.get("spacing", [1.0] * len(shape)), len(shape),
                       integer=False, positive=True)
    order = d.get("order", "C")
    if order not in ORDERS:
        raise MeshError(f"{key}.order", f'expected "C" (last axis fastest) or "F" (first '
                                        f"axis fastest), got {order!r}")
    centering = _centering(key, d)
    if centering == "points" and min(shape) < 2:
        raise MeshError(f"{key}.shape", f"values on points need at least 2 points per axis, "
                                        f"got {list(shape)}")
    return StructuredGrid(shape, origin, spacing, order, centering)


def _file(key: str, d: Mapping, base_dir: str) -> MeshFile:
    name = d["file"]
    if not isinstance(name, str) or not name:
        raise MeshError(f"{key}.file", f"expected a file name, got {name!r}")
    fmt = d.get("format")
    if fmt is not None and not isinstance(fmt, str):
        raise MeshError(f"{key}.format", f"expected a meshio format name, got {fmt!r}")
    centering = _centering(key, d)
    path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(name)))
    mesh = read_mesh_file(path, fmt, key=f"{key}.file")
    n_cells = sum(len(block.data) for block in mesh.cells)
    return MeshFile(path, fmt, centering, n_cells, len(mesh.points))


def parse_mesh(value: Any, base_dir: str | os.PathLike = ".",
               key: str = "study_options.mesh") -> StructuredGrid | MeshFile | None:
    """The mesh an object of the study file describes (None for ``null``).

    A mesh file is read once here (its name resolved against ``base_dir``) to
    check that it exists, that meshio reads it and to count its cells and points.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MeshError(key, f'expected an object like {{"shape": [100, 100]}} or '
                             f'{{"file": "mesh.vtu"}}, got {value!r}')
    is_file = "file" in value
    known = _FILE_KEYS if is_file else _GRID_KEYS
    for name in value:
        if name not in known:
            kind = "a mesh file" if is_file else "a structured grid"
            raise MeshError(f"{key}.{name}", f"unknown key for {kind} (known: "
                                             f"{', '.join(known)})")
    if is_file:
        return _file(key, value, os.fspath(base_dir))
    return _grid(key, value)


def _mesh_words(mesh: StructuredGrid | MeshFile) -> str:
    return f"mesh file {mesh.file}" if isinstance(mesh, MeshFile) else mesh.describe()


def parse_field_sizes(value: Any, field_names, mesh: StructuredGrid | MeshFile | None,
                      key: str = "study_options.field_sizes") -> dict[str, int] | None:
    """``study_options.field_sizes``: the number of values each named field has
    (as the solver is set up), checked against the field names and the mesh
    when the study file is loaded; None when not given."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MeshError(key, f'expected an object like {{"temperature": 2500}}, got {value!r}')
    sizes = {}
    for field, n in value.items():
        if field not in field_names:
            raise MeshError(f"{key}.{field}", f"not one of study_options.field_names "
                                              f"({', '.join(field_names)})")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise MeshError(f"{key}.{field}", f"expected an integer >= 1, got {n!r}")
        if mesh is not None and n != mesh.n_values:
            raise MeshError(f"{key}.{field}", f"{n} values, but study_options.mesh "
                                              f"({_mesh_words(mesh)}) has {mesh.n_values} "
                                              f"{mesh.centering}")
        sizes[field] = n
    return sizes


def size_mismatch(options, field: str, sim_id: int, n_values: int) -> str | None:
    """The one line that stops a study whose solver's field does not fit the
    study file (``options``: its ``study_options``, with ``mesh`` and
    ``field_sizes``), naming the key, the mesh file and both numbers; None when
    it fits.

    A field's size is known only when a simulation announces it: this is the
    server's check of the first hello, which ends the study at once, since
    every run of the same solver would be refused the same way."""
    declared = (options.field_sizes or {}).get(field)
    if declared is not None and n_values != declared:
        return (f"study_options.field_sizes.{field}: simulation {sim_id} has {n_values} "
                f"values, the study file declares {declared}: the study stops (every run of "
                "this solver would be refused)")
    mesh = options.mesh
    if mesh is None or n_values == mesh.n_values:
        return None
    return (f"study_options.mesh: field {field!r} of simulation {sim_id} has {n_values} "
            f"values, the mesh ({_mesh_words(mesh)}) has {mesh.n_values} {mesh.centering}: "
            "the study stops (every run of this solver would be refused)")
