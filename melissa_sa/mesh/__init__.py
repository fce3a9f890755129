"""The solver's mesh: its description in the study file and its geometry.

:mod:`melissa_sa.mesh.spec` reads ``study_options.mesh`` (a structured grid or a
mesh file), :mod:`melissa_sa.mesh.geometry` builds the points and cells.
"""

from melissa_sa.mesh.errors import MeshError
from melissa_sa.mesh.geometry import Geometry, geometry_of
from melissa_sa.mesh.reading import read_mesh_file
from melissa_sa.mesh.spec import MeshFile, StructuredGrid, parse_mesh

__all__ = ["Geometry", "geometry_of", "read_mesh_file", "MeshError", "MeshFile",
           "StructuredGrid", "parse_mesh"]
