"""Maps of ``melissa-sa plot`` on the study's mesh.

The mesh comes from the results file: its ``/mesh`` group (written with
``results.xmf``, docs/results.md), else the study's ``study_options.mesh``
recorded in the file's config (a structured grid). A structured grid of one
axis is drawn as a line over x, of two axes as an image over (x, y); an
unstructured 2D mesh as triangles coloured by the values (quads split in
two); 3D meshes are refused with a message (a slice needs ParaView). Without
a mesh, :func:`mesh_of` returns None and ``melissa-sa plot`` draws as before.
"""

from __future__ import annotations

import json

import numpy as np

from melissa_sa.mesh.errors import MeshError
from melissa_sa.mesh.spec import StructuredGrid, parse_mesh

__all__ = ["MeshMap", "mesh_of", "draw_on_mesh"]

#: XDMF mixed type code -> (meshio type, nodes per cell; None: a count follows)
_MIXED = {1: ("vertex", None), 2: ("line", None), 4: ("triangle", 3), 5: ("quad", 4),
          6: ("tetra", 4), 7: ("pyramid", 5), 8: ("wedge", 6), 9: ("hexahedron", 8)}
_DIM = {"vertex": 0, "line": 1, "triangle": 2, "quad": 2, "polygon": 2}


class MeshMap:
    """What a map needs: a structured grid, or points and cells of a mesh."""

    def __init__(self, grid: StructuredGrid | None = None, points=None, blocks=(),
                 centering: str = "cells") -> None:
        self.grid = grid
        self.points = points
        self.blocks = tuple(blocks)
        self.centering = grid.centering if grid is not None else centering

    @property
    def dim(self) -> int:
        if self.grid is not None:
            return len(self.grid.shape)
        return max(_DIM.get(t, 3) for t, _ in self.blocks)


def _mixed_blocks(topology: np.ndarray) -> list[tuple[str, np.ndarray]]:
    cells: dict[str, list] = {}
    i = 0
    while i < len(topology):
        kind, n = _MIXED.get(int(topology[i]), (None, 0))
        if kind is None:
            raise MeshError("/mesh/topology", f"XDMF cell type {int(topology[i])} not drawn")
        i += 1
        if n is None:
            n = int(topology[i])
            i += 1
        cells.setdefault(kind, []).append(topology[i:i + n])
        i += n
    return [(kind, np.array(rows)) for kind, rows in cells.items()]


def mesh_of(res) -> MeshMap | None:
    """The mesh of an open results file (``/mesh``, else the config's), or None."""
    h5 = res.h5
    if "mesh" in h5:
        g = h5["mesh"]
        description = json.loads(g.attrs.get("description", "{}") or "{}")
        if "shape" in description:
            return MeshMap(grid=parse_mesh(description, key="/mesh"))
        if "connectivity" in g:
            blocks = [(json.loads(g.attrs["cell_types"])[0], g["connectivity"][...])]
        else:
            blocks = _mixed_blocks(g["topology"][...])
        centering = g.attrs.get("centering", "cells")
        return MeshMap(points=g["points"][...], blocks=blocks,
                       centering=centering.decode() if isinstance(centering, bytes)
                       else str(centering))
    mesh = (res.config.get("study_options") or {}).get("mesh")
    if isinstance(mesh, dict) and "shape" in mesh:
        return MeshMap(grid=parse_mesh(mesh, key="study_options.mesh"))
    return None


def _triangles(mesh: MeshMap) -> tuple[np.ndarray, np.ndarray]:
    """Triangles of a 2D mesh and, per triangle, the cell it comes from."""
    tris, owner, first = [], [], 0
    for kind, conn in mesh.blocks:
        cells = np.arange(first, first + len(conn))
        first += len(conn)
        if kind == "triangle":
            tris.append(conn)
            owner.append(cells)
        elif kind == "quad":
            tris += [conn[:, [0, 1, 2]], conn[:, [0, 2, 3]]]
            owner += [cells, cells]
    return np.concatenate(tris), np.concatenate(owner)


def draw_on_mesh(ax, fig, mesh: MeshMap, values: np.ndarray, title: str, label: str) -> None:
    """Draw ``values`` (one per cell or point) on ``mesh``; a :class:`MeshError`
    for what a flat picture cannot show (3D)."""
    if mesh.dim == 3:
        raise MeshError("mesh", "a 3D mesh cannot be drawn as one picture: open "
                                "results.xmf in ParaView (docs/results.md), or plot a "
                                "cell's indices with --stat sobol")
    grid = mesh.grid
    if grid is not None and len(grid.shape) == 1 or grid is None and mesh.dim <= 1:
        if grid is not None:
            x = grid.origin[0] + grid.spacing[0] * np.arange(grid.shape[0])
        else:
            conn = np.concatenate([c for _, c in mesh.blocks])
            x = (mesh.points[conn].mean(axis=1)[:, 0] if mesh.centering == "cells"
                 else mesh.points[:, 0])
        order = np.argsort(x, kind="stable")
        ax.plot(x[order], values[order], lw=1.2)
        ax.set_xlabel("x")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    elif grid is not None:
        nx, ny = grid.shape
        image = values.reshape(grid.shape, order=grid.order).T   # rows: y
        (x0, y0), (dx, dy) = grid.origin, grid.spacing
        extent = (x0 - dx / 2, x0 + (nx - 0.5) * dx, y0 - dy / 2, y0 + (ny - 0.5) * dy)
        im = ax.imshow(image, origin="lower", extent=extent, cmap="viridis",
                       interpolation="nearest" if grid.centering == "cells" else "bilinear")
        fig.colorbar(im, ax=ax, label=label)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    else:
        import matplotlib.tri as mtri

        tris, owner = _triangles(mesh)
        tri = mtri.Triangulation(mesh.points[:, 0], mesh.points[:, 1], tris)
        if mesh.centering == "cells":
            art = ax.tripcolor(tri, facecolors=values[owner], cmap="viridis")
        else:
            art = ax.tripcolor(tri, values, shading="gouraud", cmap="viridis")
        fig.colorbar(art, ax=ax, label=label)
        ax.set_aspect("equal")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    ax.set_title(title)
