"""``study_options.mesh``: structured grids, mesh files read with meshio, and the
errors of bad ones (each names the key, the file and the value)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_study

from melissa_sa.config import ConfigError, load_config
from melissa_sa.mesh import MeshError, StructuredGrid, geometry_of, parse_mesh

meshio = pytest.importorskip("meshio", reason="meshio is not installed")


def _errors(tmp_path, mesh) -> str:
    path = write_study(tmp_path, study_options={"mesh": mesh})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value)


def _quads_by_hand(nx: int, ny: int, h: float) -> tuple[np.ndarray, np.ndarray]:
    """The corners and quads of an nx x ny grid of cells of size h centred on
    (i + 1) h, (j + 1) h, cell i + nx j: written out cell by cell."""
    points = [(h / 2 + i * h, h / 2 + j * h, 0.0) for j in range(ny + 1) for i in range(nx + 1)]
    quads = []
    for j in range(ny):
        for i in range(nx):
            a = j * (nx + 1) + i
            quads.append((a, a + 1, a + nx + 2, a + nx + 1))
    return np.array(points), np.array(quads)


def test_a_vtu_and_the_same_grid_described_as_structured_give_one_geometry(tmp_path):
    nx, ny, h = 5, 3, 0.25
    points, quads = _quads_by_hand(nx, ny, h)
    meshio.write(tmp_path / "grid.vtu", meshio.Mesh(points, [("quad", quads)]))
    path = write_study(tmp_path, study_options={"mesh": {"file": "grid.vtu"}})
    from_file = geometry_of(load_config(path).study_options.mesh)
    grid = StructuredGrid(shape=(nx, ny), origin=(h, h), spacing=(h, h), order="F")
    from_grid = geometry_of(grid)
    assert from_file.n_values == from_grid.n_values == nx * ny
    assert from_grid.same_as(from_file)
    # the study file keeps the mesh (an absolute file name) in its effective config
    cfg = load_config(path)
    assert cfg.to_dict()["study_options"]["mesh"]["file"] == str(tmp_path / "grid.vtu")
    assert cfg.updated({}).study_options.mesh == cfg.study_options.mesh


def test_c_and_fortran_order_number_the_same_grid_differently():
    f = geometry_of(parse_mesh({"shape": [3, 2], "order": "F"}))
    c = geometry_of(parse_mesh({"shape": [3, 2], "order": "C"}))
    centre = {name: g.points[g.blocks[0][1]].mean(axis=1) for name, g in
              (("F", f), ("C", c))}
    # value 1 is x = 1, y = 0 in Fortran order; x = 0, y = 1 in C order
    assert np.allclose(centre["F"][1], (1, 0, 0))
    assert np.allclose(centre["C"][1], (0, 1, 0))


@pytest.mark.parametrize("mesh, n_cells, n_points, cell_type", [
    ({"shape": [7]}, 7, 8, "line"),
    ({"shape": [7], "centering": "points"}, 6, 7, "line"),
    ({"shape": [4, 3], "centering": "points", "order": "F"}, 6, 12, "quad"),
    ({"shape": [2, 3, 4]}, 24, 60, "hexahedron"),
])
def test_grids_of_one_two_and_three_axes(mesh, n_cells, n_points, cell_type):
    g = geometry_of(parse_mesh(mesh))
    assert (g.n_cells, g.n_points, g.blocks[0][0]) == (n_cells, n_points, cell_type)
    assert g.n_values == int(np.prod(mesh["shape"]))


def test_point_values_sit_on_the_points_in_the_solvers_order():
    g = geometry_of(parse_mesh({"shape": [3, 2], "origin": [1, 2], "spacing": [0.5, 2],
                                "order": "C", "centering": "points"}))
    # value i * ny + j at (1 + 0.5 i, 2 + 2 j)
    assert np.allclose(g.points[3], (1.5, 4.0, 0.0))


def test_a_study_without_a_mesh_is_as_before(tmp_path):
    cfg = load_config(write_study(tmp_path))
    assert cfg.study_options.mesh is None
    assert cfg.to_dict()["study_options"]["mesh"] is None


@pytest.mark.parametrize("mesh, words", [
    ({"shape": [2, 2, 2, 2]}, ["study_options.mesh.shape", "1, 2 or 3 axes", "4"]),
    ({"shape": [10, 0]}, ["study_options.mesh.shape", "> 0"]),
    ({"shape": [10, 10], "spacing": [1.0]}, ["study_options.mesh.spacing", "1 entries",
                                             "2 axes"]),
    ({"shape": [10], "order": "X"}, ["study_options.mesh.order", "'X'"]),
    ({"shape": [10], "centering": "faces"}, ["study_options.mesh.centering", "'faces'"]),
    ({"shape": [10], "colour": 1}, ["study_options.mesh.colour", "unknown key"]),
    ({"origin": [0]}, ["study_options.mesh.shape", "missing"]),
    ([10, 10], ["study_options.mesh", "expected an object"]),
])
def test_bad_grids_are_named_errors(tmp_path, mesh, words):
    text = _errors(tmp_path, mesh)
    for word in words:
        assert word in text, text
    assert str(tmp_path / "study.json") in text


def test_missing_unreadable_and_unknown_mesh_files_are_named_errors(tmp_path):
    text = _errors(tmp_path, {"file": "nowhere.vtu"})
    assert "study_options.mesh.file" in text and str(tmp_path / "nowhere.vtu") in text
    assert "no such mesh file" in text

    (tmp_path / "mesh.abc").write_text("not a mesh\n")
    text = _errors(tmp_path, {"file": "mesh.abc"})
    assert "study_options.mesh.file" in text and "mesh.abc" in text
    assert "unknown mesh format" in text

    (tmp_path / "broken.vtu").write_text("<VTKFile garbage")
    text = _errors(tmp_path, {"file": "broken.vtu"})
    assert "broken.vtu" in text and "cannot read the mesh" in text

    points, quads = _quads_by_hand(2, 2, 1.0)
    meshio.write(tmp_path / "ok.vtu", meshio.Mesh(points, [("quad", quads)]))
    text = _errors(tmp_path, {"file": "ok.vtu", "format": "no-such-format"})
    assert "unknown mesh format" in text and "ok.vtu" in text


def test_an_unreadable_mesh_file_is_a_named_error(tmp_path):
    import os

    points, quads = _quads_by_hand(2, 2, 1.0)
    meshio.write(tmp_path / "locked.vtu", meshio.Mesh(points, [("quad", quads)]))
    os.chmod(tmp_path / "locked.vtu", 0)
    try:
        if os.access(tmp_path / "locked.vtu", os.R_OK):
            pytest.skip("running as root: a file without permissions is still readable")
        text = _errors(tmp_path, {"file": "locked.vtu"})
        assert "locked.vtu" in text and "not readable" in text
    finally:
        os.chmod(tmp_path / "locked.vtu", 0o644)


def test_mesh_error_carries_key_and_message():
    with pytest.raises(MeshError) as err:
        parse_mesh({"shape": [1, 2, 3, 4, 5]}, key="--mesh")
    assert err.value.key == "--mesh.shape"
    assert json.dumps(err.value.message)


def test_the_heat_examples_declare_their_solvers_grid():
    """Cell c = j * nx + i centred on ((i + 1) h, (j + 1) h), h = 1 / (nx + 1)."""
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "examples"
    for directory, default_n in (("heat_pde", 100), ("heat_pde_c", 12)):
        cfg = load_config(root / directory / "study.json")
        words = shlex.split(cfg.client_config.executable_command)
        nx = int(words[words.index("--nx") + 1]) if "--nx" in words else default_n
        ny = int(words[words.index("--ny") + 1]) if "--ny" in words else default_n
        mesh = cfg.study_options.mesh
        assert mesh.shape == (nx, ny) and mesh.order == "F" and mesh.centering == "cells"
        assert cfg.study_options.field_sizes == {"temperature": nx * ny}
        g = geometry_of(mesh)
        centres = g.points[g.blocks[0][1]].mean(axis=1)
        c = 3 * nx + 2   # i = 2, j = 3
        assert np.allclose(centres[c, :2], (3 / (nx + 1), 4 / (ny + 1)))
