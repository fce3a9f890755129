"""``melissa-sa plot`` maps on the study's mesh: lines of a 1D grid, images of
a 2D grid, triangles of an unstructured 2D mesh, a message for 3D."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_xdmf import NX, NY, small_results

from melissa_sa.mesh import parse_mesh
from melissa_sa.plot import PlotError, plot_results
from melissa_sa.plot_mesh import draw_on_mesh, mesh_of
from melissa_sa.results import open_results
from melissa_sa.results.xdmf import write_xdmf

plt = pytest.importorskip("matplotlib.pyplot", reason="matplotlib is not installed")


def _drawn(results, stat="sobol_first", index=1):
    """The axes of a map drawn from ``results`` at the last step, and the values."""
    with open_results(results) as res:
        mesh = mesh_of(res)
        values = res.get("temperature", stat, -1)
        values = values[index] if values.ndim == 2 else values
        fig, ax = plt.subplots()
        draw_on_mesh(ax, fig, mesh, values, "title", stat)
    return fig, ax, values


def test_a_2d_grid_is_an_image_over_x_and_y(tmp_path):
    results = small_results(tmp_path / "results.h5")
    write_xdmf(results, parse_mesh({"shape": [NX, NY], "origin": [1, 2], "spacing": [0.5, 2],
                                    "order": "F"}))
    fig, ax, values = _drawn(results)
    image = ax.images[0]
    # row j of the image is y = 2 + 2 j, column i is x = 1 + 0.5 i: value i + NX j
    assert np.array_equal(np.asarray(image.get_array()), values.reshape(NY, NX))
    assert image.get_extent() == [0.75, 1 + 0.5 * NX - 0.25, 1.0, 2 + 2 * NY - 1.0]
    plt.close(fig)
    plot_results(open_results(results), tmp_path / "map.png", stat="sobol_first", index=1)
    assert (tmp_path / "map.png").stat().st_size > 1000


def test_a_1d_grid_is_a_line_over_x(tmp_path):
    results = small_results(tmp_path / "results.h5")
    write_xdmf(results, parse_mesh({"shape": [NX * NY], "origin": [3], "spacing": [0.1]}))
    fig, ax, values = _drawn(results, "mean")
    x, y = ax.lines[0].get_data()
    assert np.allclose(x, 3 + 0.1 * np.arange(NX * NY)) and np.array_equal(y, values)
    plt.close(fig)


def test_an_unstructured_2d_mesh_is_drawn_as_triangles(tmp_path):
    meshio = pytest.importorskip("meshio", reason="meshio is not installed")
    results = small_results(tmp_path / "results.h5", n_cells=3)
    points = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [2, 0.5]], dtype=float)
    meshio.write(tmp_path / "m.vtu", meshio.Mesh(points, [("quad", [[0, 1, 2, 3]]),
                                                          ("triangle", [[1, 4, 2], [0, 2, 3]])]))
    write_xdmf(results, parse_mesh({"file": "m.vtu"}, tmp_path))
    fig, ax, values = _drawn(results, "mean")
    colours = np.asarray(ax.collections[0].get_array())
    assert np.array_equal(colours, [values[0], values[0], values[1], values[2]])
    plt.close(fig)


def test_a_3d_mesh_is_a_clear_message(tmp_path):
    results = small_results(tmp_path / "results.h5")
    write_xdmf(results, parse_mesh({"shape": [2, 3, 5]}))
    with open_results(results) as res, pytest.raises(PlotError, match="3D mesh .* ParaView"):
        plot_results(res, tmp_path / "map.png", stat="mean")


def test_the_config_s_grid_is_used_when_the_file_has_no_mesh_group(tmp_path):
    import h5py

    results = small_results(tmp_path / "results.h5")
    with h5py.File(results, "r+") as h5:
        h5.attrs["config"] = json.dumps({"study_options": {"mesh": {"shape": [NX, NY]}}})
    fig, ax, values = _drawn(results, "mean")
    assert np.array_equal(np.asarray(ax.images[0].get_array()), values.reshape(NX, NY).T)
    plt.close(fig)
