"""meshio reads the results back: ``results.meshio.xmf`` (XDMF 3) through
``meshio.xdmf.TimeSeriesReader``, every array of every time step equal to
``results.h5`` read with h5py, exactly. The per-step views it points to
(``/by_step``) are HDF5 virtual datasets: they hold no value, and keep
working when the pair of files moves.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest
from studyutil import MELISSA, run_study
from test_xdmf import NX, NY, T, _study, small_results

from melissa_sa.mesh import MeshError, geometry_of, parse_mesh
from melissa_sa.results.xdmf import (
    field_arrays,
    meshio_xdmf_path,
    results_fields,
    write_xdmf,
    write_xdmf_file,
)

meshio = pytest.importorskip("meshio", reason="meshio is not installed (pip install meshio)")

GRID = {"shape": [NX, NY], "spacing": [0.5, 0.25], "order": "F"}


def meshio_reads(xmf) -> tuple[np.ndarray, list, list[tuple[float, dict]]]:
    """Points, cell blocks and ``(time, {name: values})`` of every step, as meshio reads them."""
    with meshio.xdmf.TimeSeriesReader(xmf) as reader:
        points, cells = reader.read_points_cells()
        steps = []
        for k in range(reader.num_steps):
            t, point_data, cell_data = reader.read_data(k)
            values = dict(point_data)
            values.update({name: np.concatenate(blocks) for name, blocks in cell_data.items()})
            steps.append((t, values))
    return points, cells, steps


def assert_equal_to_h5py(results, steps) -> None:
    """Every array but the interval widths (meshio has no XDMF Function), every
    step, equal to h5py's reading of the statistic's row."""
    with h5py.File(results, "r") as h5:
        n_steps = min(h5[f].attrs["n_time_steps"] for f in results_fields(h5))
        assert [t for t, _ in steps] == list(range(n_steps))
        for field in results_fields(h5):
            g = h5[field]
            arrays = [(name, stat, lead) for name, stat, lead in field_arrays(g, field)
                      if " - " not in stat]
            for k, (t, values) in enumerate(steps):
                assert t == k
                assert {n for n in values if n.startswith(f"{field} ")} == \
                    {name for name, _, _ in arrays}
                for name, stat, lead in arrays:
                    expected = g[stat][(*(lead or ()), k)]
                    assert values[name].dtype == np.float64
                    assert np.array_equal(values[name], expected, equal_nan=True), (name, k)


def test_meshio_reads_every_statistic_of_every_step_exactly(tmp_path):
    results = small_results(tmp_path / "results.h5", second_order=True)
    write_xdmf(results, parse_mesh(GRID))
    points, cells, steps = meshio_reads(meshio_xdmf_path(results))
    assert len(steps) == T
    assert_equal_to_h5py(results, steps)
    mesh = geometry_of(parse_mesh(GRID))
    assert np.array_equal(points, mesh.points)
    assert [c.type for c in cells] == ["quad"]
    assert np.array_equal(cells[0].data, mesh.blocks[0][1])


def test_the_views_hold_no_values_and_move_with_the_file(tmp_path):
    plain = small_results(tmp_path / "plain.h5", n_cells=200 * 100, second_order=True)
    results = tmp_path / "results.h5"
    shutil.copy(plain, results)
    write_xdmf(results, parse_mesh({"shape": [200, 100]}))
    with h5py.File(results, "r") as h5:
        views = []
        h5["by_step"].visititems(lambda name, obj: views.append(obj)
                                 if isinstance(obj, h5py.Dataset) else None)
        assert views and all(v.is_virtual for v in views)
        assert {s.file_name for v in views for s in v.virtual_sources()} == {"."}
        stored = sum(h5[f][s].nbytes for f in results_fields(h5) for s in h5[f]
                     if h5[f][s].ndim >= 2)
        mesh_bytes = sum(h5["mesh"][k].nbytes for k in h5["mesh"])
    # the statistics are not stored twice: the file grows by the mesh and about
    # 1 kB of metadata per view, far less than the values the views show
    growth = results.stat().st_size - plain.stat().st_size
    assert growth < mesh_bytes + 1200 * len(views), (growth, len(views))
    assert growth - mesh_bytes < stored / 100
    # the pair moves to another directory (and the results file may be renamed
    # from results.h5.tmp, as the server does): the views read the moved file
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for path in (results, tmp_path / "results.meshio.xmf"):
        path.rename(moved / path.name)
    _, _, steps = meshio_reads(moved / "results.meshio.xmf")
    assert_equal_to_h5py(moved / "results.h5", steps)


def test_export_writes_what_meshio_reads_for_an_old_results_file(tmp_path):
    """A results file without the views (made without a mesh, or before the
    views existed): export adds them; writing only the XDMF needs them."""
    results = small_results(tmp_path / "results.h5")
    geometry = geometry_of(parse_mesh(GRID))
    with pytest.raises(MeshError, match="melissa-sa export"):
        write_xdmf_file(results, geometry)
    (tmp_path / "grid.json").write_text(json.dumps(GRID))
    done = subprocess.run([MELISSA, "export", str(results), "--mesh", str(tmp_path / "grid.json")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    _, _, steps = meshio_reads(tmp_path / "results.meshio.xmf")
    assert_equal_to_h5py(results, steps)
    # exported again on another mesh of the same size: same views, new geometry
    other = {"shape": [NY, NX], "order": "C"}
    write_xdmf(results, parse_mesh(other))
    points, _, steps = meshio_reads(tmp_path / "results.meshio.xmf")
    assert np.array_equal(points, geometry_of(parse_mesh(other)).points)
    assert_equal_to_h5py(results, steps)


def test_meshio_reads_the_xdmf_a_real_study_wrote(tmp_path):
    mesh = {"shape": [4, 3], "origin": [0.5, 0.5], "spacing": [1, 1], "order": "F"}
    done = run_study(_study(tmp_path, 1, mesh), timeout=240)
    assert done.returncode == 0, done.stdout[-3000:]
    out = tmp_path / "out"
    assert (out / "results.xmf").exists()
    points, cells, steps = meshio_reads(out / "results.meshio.xmf")
    assert_equal_to_h5py(out / "results.h5", steps)
    assert np.array_equal(points, geometry_of(parse_mesh(mesh)).points)
    assert len(cells[0].data) == 12
    assert any(name.startswith("f S1 ") for name in steps[-1][1]), sorted(steps[-1][1])
