"""ParaView itself opens what melissa-sa writes.

Each test runs a script under ParaView's own Python (``xvfb-run -a pvbatch``,
a subprocess with a timeout: ``pvbatch --force-offscreen-rendering`` aborts on
these machines): it opens ``results.xmf`` with ``XDMFReader`` (``results.meshio.xmf`` with
``Xdmf3ReaderS``) and reports, as
JSON, the time steps, the cells and every array of every step; the test
compares them with ``results.h5`` read by h5py, exactly, and checks the PNG it
rendered of one Sobol' map is not blank. Without ParaView (Debian's
``paraview`` / ``python3-paraview``) or ``xvfb-run`` (``xvfb``, ``xauth``)
the tests skip, naming what is missing; ``.ci/run`` installs them.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest
from test_xdmf import NX, NY, T, small_results

from melissa_sa.mesh import parse_mesh
from melissa_sa.results.export import export_results
from melissa_sa.results.xdmf import attribute_names, write_xdmf

MISSING = [tool for tool, package in (("pvbatch", "paraview"), ("xvfb-run", "xvfb"),
                                      ("xauth", "xauth")) if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"ParaView tests need {', '.join(MISSING)} (Debian packages "
                          "paraview, python3-paraview, xvfb, xauth)")

SCRIPT = r'''
import json
import sys

from paraview import servermanager as sm
from paraview import simple
from vtk.numpy_interface import dataset_adapter as dsa

path, out_json, png, array = sys.argv[1:5]
if path.endswith(".meshio.xmf"):
    reader = simple.Xdmf3ReaderS(FileName=[path])
elif path.endswith(".xmf"):
    reader = simple.XDMFReader(FileNames=[path])
else:
    reader = simple.OpenDataFile(path)
reader.UpdatePipelineInformation()
times = list(reader.TimestepValues) if reader.TimestepValues else [0.0]
report = {"reader": reader.GetXMLName(), "times": times, "steps": []}
for t in times:
    reader.UpdatePipeline(t)
    data = sm.Fetch(reader)
    if data.IsA("vtkMultiBlockDataSet"):
        data = data.GetBlock(0)
    wrapped = dsa.WrapDataObject(data)
    on_cells = data.GetCellData().GetNumberOfArrays() > 0
    arrays = wrapped.CellData if on_cells else wrapped.PointData
    report["steps"].append({
        "n_cells": data.GetNumberOfCells(), "n_points": data.GetNumberOfPoints(),
        "bounds": list(data.GetBounds()), "on_cells": on_cells,
        "arrays": {name: [float(v) for v in arrays[name]] for name in arrays.keys()}})
view = simple.CreateView("RenderView")
view.ViewSize = [320, 240]
view.OrientationAxesVisibility = 0
view.Background = [1, 1, 1]
display = simple.Show(reader, view)
view.ViewTime = times[-1]
simple.ColorBy(display, ("CELLS" if report["steps"][-1]["on_cells"] else "POINTS", array))
display.RescaleTransferFunctionToDataRange(True)
view.CameraPosition = [0, 0, 1]
view.CameraFocalPoint = [0, 0, 0]
view.CameraViewUp = [0, 1, 0]
view.ResetCamera()
simple.Render(view)
simple.SaveScreenshot(png, view, ImageResolution=[320, 240])
with open(out_json, "w") as fh:
    json.dump(report, fh)
'''


def paraview_reads(tmp_path, path, array: str) -> tuple[dict, np.ndarray]:
    """What ParaView reads from ``path``, and the PNG it rendered of ``array``."""
    script = tmp_path / "paraview_check.py"
    script.write_text(SCRIPT)
    out, png = tmp_path / "paraview.json", tmp_path / "map.png"
    command = ["xvfb-run", "-a", "pvbatch", str(script), str(path), str(out), str(png), array]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "GetLocalCapabilities" in done.stdout + done.stderr:
        # pvbatch aborted (SIGABRT) asking the X server for its OpenGL
        # capabilities, before reading anything: seen about once in three runs
        # while other xvfb-run -a servers start on the machine; once more
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.exists(), done.stdout[-2000:] + done.stderr[-3000:]
    import matplotlib.image

    return json.loads(out.read_text()), matplotlib.image.imread(png)


def not_blank(image: np.ndarray) -> None:
    """The picture holds a coloured map: many colours, not just the background."""
    rgb = (image[..., :3] * 255).astype(int)
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    background = np.all(rgb == 255, axis=-1).mean()
    assert len(colours) > 20 and background < 0.9, (len(colours), background)


def test_paraview_opens_results_xmf_with_every_statistic_equal_to_h5py(tmp_path):
    results = small_results(tmp_path / "results.h5", second_order=True)
    write_xdmf(results, parse_mesh({"shape": [NX, NY], "spacing": [0.5, 0.25], "order": "F"}))
    report, image = paraview_reads(tmp_path, tmp_path / "results.xmf", "temperature S1 x2")
    assert report["reader"] == "XdmfReader"   # XDMF 2 (proxy name of simple.XDMFReader)
    assert report["times"] == list(range(T))
    names = attribute_names(results)
    with h5py.File(results, "r") as h5:
        g = h5["temperature"]
        for t, step in enumerate(report["steps"]):
            assert step["n_cells"] == NX * NY and step["n_points"] == (NX + 1) * (NY + 1)
            # the grid lies in the x-y plane, as a camera looking down z sees it
            assert step["bounds"] == [-0.25, NX * 0.5 - 0.25, -0.125, NY * 0.25 - 0.125,
                                      0.0, 0.0]
            assert sorted(step["arrays"]) == sorted(names)
            got = {name: np.array(v) for name, v in step["arrays"].items()}
            for k, p in enumerate(("x1", "x2", "x3")):
                for label, stat in (("S1", "sobol_first"), ("ST", "sobol_total")):
                    assert np.array_equal(got[f"temperature {label} {p}"], g[stat][k, t])
                    width = g[f"{stat}_high"][k, t] - g[f"{stat}_low"][k, t]
                    assert np.array_equal(got[f"temperature {label} {p} width"], width)
            for stat in ("mean", "variance", "skewness", "kurtosis", "min", "max"):
                assert np.array_equal(got[f"temperature {stat}"], g[stat][t])
            for k, level in enumerate((0.05, 0.95)):
                assert np.array_equal(got[f"temperature quantile {level:g}"],
                                      g["quantiles"][k, t])
            for k, thr in enumerate((0.5, 300)):
                assert np.array_equal(got[f"temperature P(>{thr:g})"],
                                      g["threshold_exceedance"][k, t])
            for k, pair in enumerate(("x1:x2", "x1:x3", "x2:x3")):
                assert np.array_equal(got[f"temperature S2 {pair}"], g["sobol_second"][k, t])
    not_blank(image)


def test_paraview_opens_point_values_on_a_3d_grid_and_the_vtkhdf_export(tmp_path):
    results = small_results(tmp_path / "results.h5", n_cells=30)
    write_xdmf(results, parse_mesh({"shape": [2, 3, 5], "centering": "points"}))
    report, _ = paraview_reads(tmp_path, tmp_path / "results.xmf", "temperature mean")
    last = report["steps"][-1]
    assert not last["on_cells"] and last["n_points"] == 30 and last["n_cells"] == 1 * 2 * 4
    with h5py.File(results, "r") as h5:
        assert np.array_equal(last["arrays"]["temperature ST x1"],
                              h5["temperature/sobol_total"][0, -1])

    out = export_results(results, parse_mesh({"shape": [5, 6], "order": "C"}), "vtkhdf",
                         time_step=1)
    report, image = paraview_reads(tmp_path, out, "temperature S1 x1")
    step = report["steps"][0]
    assert step["n_cells"] == 30 and step["on_cells"]
    with h5py.File(results, "r") as h5:
        assert np.array_equal(step["arrays"]["temperature S1 x1"],
                              h5["temperature/sobol_first"][0, 1])
    not_blank(image)


def test_paraviews_xdmf3_reader_opens_the_file_meshio_reads(tmp_path):
    results = small_results(tmp_path / "results.h5", second_order=True)
    write_xdmf(results, parse_mesh({"shape": [NX, NY], "order": "F"}))
    report, image = paraview_reads(tmp_path, tmp_path / "results.meshio.xmf",
                                   "temperature ST x3")
    assert report["reader"] == "Xdmf3ReaderS"
    assert report["times"] == list(range(T))
    names = [name for name in attribute_names(results) if not name.endswith(" width")]
    with h5py.File(results, "r") as h5:
        g = h5["temperature"]
        for t, step in enumerate(report["steps"]):
            assert step["n_cells"] == NX * NY and sorted(step["arrays"]) == sorted(names)
            got = {name: np.array(v) for name, v in step["arrays"].items()}
            assert np.array_equal(got["temperature mean"], g["mean"][t])
            assert np.array_equal(got["temperature ST x3"], g["sobol_total"][2, t])
            assert np.array_equal(got["temperature S2 x1:x3"], g["sobol_second"][1, t])
    not_blank(image)


def test_paraview_reads_results_xmf_without_the_views_past_the_servers_cut_off(
        tmp_path, monkeypatch, caplog):
    """Past MAX_SERVER_VIEWS the server writes no /by_step views: results.xmf
    reads each row with a HyperSlab item, and there is no results.meshio.xmf
    until ``melissa-sa export`` writes the views."""
    import logging

    import melissa_sa.results.create as create
    from melissa_sa.results.xdmf import study_geometry, xdmf_after_study

    monkeypatch.setattr(create, "MAX_SERVER_VIEWS", 10)
    mesh = study_geometry(parse_mesh({"shape": [NX, NY], "order": "F"}))
    with caplog.at_level(logging.INFO, logger="melissa_sa.results"):
        results = small_results(tmp_path / "results.h5", second_order=True, mesh=mesh)
    assert "melissa-sa export RESULTS --mesh MESH writes the views" in caplog.text
    (tmp_path / "results.meshio.xmf").write_text("stale")
    assert xdmf_after_study(results, mesh) == tmp_path / "results.xmf"
    assert not (tmp_path / "results.meshio.xmf").exists()
    with h5py.File(results, "r") as h5:
        assert "by_step" not in h5 and "mesh" in h5
    assert "HyperSlab" in (tmp_path / "results.xmf").read_text()
    report, image = paraview_reads(tmp_path, tmp_path / "results.xmf", "temperature S2 x1:x3")
    assert report["times"] == list(range(T))
    names = attribute_names(results)
    with h5py.File(results, "r") as h5:
        g = h5["temperature"]
        for t, step in enumerate(report["steps"]):
            assert sorted(step["arrays"]) == sorted(names)
            got = {name: np.array(v) for name, v in step["arrays"].items()}
            assert np.array_equal(got["temperature mean"], g["mean"][t])
            assert np.array_equal(got["temperature P(>300)"], g["threshold_exceedance"][1, t])
            assert np.array_equal(got["temperature S2 x1:x3"], g["sobol_second"][1, t])
            width = g["sobol_total_high"][2, t] - g["sobol_total_low"][2, t]
            assert np.array_equal(got["temperature ST x3 width"], width)
    not_blank(image)
    # export writes the views and both files
    write_xdmf(results, parse_mesh({"shape": [NX, NY], "order": "F"}))
    assert (tmp_path / "results.meshio.xmf").exists()
    assert "HyperSlab" not in (tmp_path / "results.xmf").read_text()
