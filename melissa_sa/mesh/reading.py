"""Reading a mesh file with meshio, every failure a :class:`MeshError` naming the file."""

from __future__ import annotations

import contextlib
import io
import os

from melissa_sa.mesh.errors import MeshError

__all__ = ["read_mesh_file"]


def read_mesh_file(path: str, fmt: str | None = None, key: str = "--mesh"):
    """The ``meshio.Mesh`` in ``path``; a :class:`MeshError` naming ``key`` and
    the file when it is missing, unreadable, of an unknown format or has no cells."""
    try:
        import meshio
    except ImportError:
        raise MeshError(key, f"{path}: reading a mesh file needs meshio "
                             "(pip install meshio)") from None
    if not os.path.exists(path):
        raise MeshError(key, f"{path}: no such mesh file")
    if not os.path.isfile(path):
        raise MeshError(key, f"{path}: not a mesh file (a directory or a special file)")
    if not os.access(path, os.R_OK):
        raise MeshError(key, f"{path}: mesh file not readable (permission denied)")
    said = io.StringIO()
    try:
        # meshio prints and calls sys.exit when no reader of the guessed format
        # reads the file: keep its words for the error
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            mesh = meshio.read(path, file_format=fmt)
    except SystemExit:
        detail = " ".join(said.getvalue().split()) or "meshio cannot read it"
        raise MeshError(key, f"{path}: cannot read the mesh: {detail}") from None
    except meshio.ReadError as exc:
        detail = str(exc) or "meshio cannot read it"
        if "Unknown file format" in detail or "Could not deduce" in detail \
                or "Unknown format" in detail:
            raise MeshError(key, f"{path}: unknown mesh format ({detail}); give "
                                 f'"format" one of meshio\'s formats') from None
        raise MeshError(key, f"{path}: cannot read the mesh: {detail}") from None
    except (KeyError, ValueError) as exc:
        raise MeshError(key, f"{path}: unknown mesh format {fmt or os.path.splitext(path)[1]!r}"
                             f" ({exc})") from None
    except Exception as exc:  # meshio raises many kinds on a corrupt file
        raise MeshError(key, f"{path}: cannot read the mesh: {type(exc).__name__}: "
                             f"{exc}") from None
    if not mesh.cells or not len(mesh.points):
        raise MeshError(key, f"{path}: the mesh has no cells or no points")
    return mesh
