"""The points and cells of a mesh: built from a structured grid, or read with meshio.

Both kinds give the same :class:`Geometry`: points ``(n_points, 3)`` and one
or more cell blocks ``(meshio cell type, connectivity)``, so a grid described
as structured and the same grid read from a VTU file compare equal
(:meth:`Geometry.same_as`). A structured grid's cells are lines, quads or
hexahedra, listed in the order of the solver's vector (cell centering), or
its points are (point centering).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from melissa_sa.mesh.errors import MeshError
from melissa_sa.mesh.reading import read_mesh_file
from melissa_sa.mesh.spec import MeshFile, StructuredGrid

__all__ = ["Geometry", "geometry_of"]

#: cell type of a structured grid of 1, 2, 3 axes, and its corners as offsets
#: along (x, y, z), in VTK / XDMF order
_GRID_CELLS = {
    1: ("line", ((0,), (1,))),
    2: ("quad", ((0, 0), (1, 0), (1, 1), (0, 1))),
    3: ("hexahedron", ((0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0),
                       (0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1))),
}


@dataclass(frozen=True)
class Geometry:
    """Points ``(n_points, 3)`` float64 and cell blocks ``((type, (n, k) int64), ...)``."""

    points: np.ndarray
    blocks: tuple[tuple[str, np.ndarray], ...]
    centering: str
    #: the topological dimension (1 lines, 2 surfaces, 3 volumes)
    dim: int

    @property
    def n_cells(self) -> int:
        return sum(len(conn) for _, conn in self.blocks)

    @property
    def n_points(self) -> int:
        return len(self.points)

    @property
    def n_values(self) -> int:
        return self.n_cells if self.centering == "cells" else self.n_points

    def same_as(self, other: Geometry) -> bool:
        """Same points (exactly), same cells in the same order."""
        return (self.centering == other.centering
                and np.array_equal(self.points, other.points)
                and len(self.blocks) == len(other.blocks)
                and all(a[0] == b[0] and np.array_equal(a[1], b[1])
                        for a, b in zip(self.blocks, other.blocks, strict=True)))


def _structured(grid: StructuredGrid) -> Geometry:
    nd = len(grid.shape)
    shape = np.array(grid.shape)
    origin, spacing = np.array(grid.origin), np.array(grid.spacing)
    cell_type, corners = _GRID_CELLS[nd]
    # value index at grid position (i, j, k), as the solver numbers them
    value_index = np.arange(grid.n_values).reshape(grid.shape, order=grid.order)
    if grid.centering == "cells":
        corner_shape = tuple(shape + 1)
        first = origin - spacing / 2
        # corners numbered x fastest
        corner_index = np.arange(int(np.prod(corner_shape))).reshape(corner_shape, order="F")
        axes = [first[a] + spacing[a] * np.arange(corner_shape[a]) for a in range(nd)]
        mesh_axes = np.meshgrid(*axes, indexing="ij")
        pts = np.stack([m.ravel(order="F") for m in mesh_axes], axis=1)
        cell_shape = grid.shape
        point_at = corner_index
    else:
        axes = [origin[a] + spacing[a] * np.arange(shape[a]) for a in range(nd)]
        mesh_axes = np.meshgrid(*axes, indexing="ij")
        pts = np.empty((grid.n_values, nd))
        for a in range(nd):
            pts[value_index.ravel(), a] = mesh_axes[a].ravel()
        cell_shape = tuple(shape - 1)
        point_at = value_index
    points = np.zeros((len(pts), 3))
    points[:, :nd] = pts
    conn = np.empty((int(np.prod(cell_shape)), len(corners)), dtype=np.int64)
    for c, offset in enumerate(corners):
        window = tuple(slice(o, o + n) for o, n in zip(offset, cell_shape, strict=True))
        conn[:, c] = point_at[window].ravel(order="F")
    if grid.centering == "cells":
        # cell (i, j, k) goes to the row of its value
        order = value_index.ravel(order="F")
        ordered = np.empty_like(conn)
        ordered[order] = conn
        conn = ordered
    return Geometry(points, ((cell_type, conn),), grid.centering, nd)


_DIM_OF = {"vertex": 0, "line": 1, "line3": 1, "triangle": 2, "quad": 2, "triangle6": 2,
           "quad8": 2, "quad9": 2, "polygon": 2, "tetra": 3, "hexahedron": 3, "wedge": 3,
           "pyramid": 3, "tetra10": 3, "hexahedron20": 3, "hexahedron27": 3}


def _from_file(spec: MeshFile) -> Geometry:
    mesh = read_mesh_file(spec.file, spec.format, key="study_options.mesh.file")
    points = np.zeros((len(mesh.points), 3))
    points[:, :mesh.points.shape[1]] = mesh.points
    blocks = tuple((b.type, np.asarray(b.data, dtype=np.int64)) for b in mesh.cells)
    dim = max(_DIM_OF.get(t, 3) for t, _ in blocks)
    geometry = Geometry(points, blocks, spec.centering, dim)
    if geometry.n_values != spec.n_values:
        raise MeshError("study_options.mesh.file",
                        f"{spec.file}: the mesh changed since the study was loaded "
                        f"({spec.n_values} {spec.centering} then, {geometry.n_values} now)")
    return geometry


def geometry_of(spec: StructuredGrid | MeshFile) -> Geometry:
    """The points and cells of a mesh description (reads a mesh file again)."""
    if isinstance(spec, StructuredGrid):
        return _structured(spec)
    return _from_file(spec)

