"""``results.xmf``: the XDMF description of results.h5 on the study's mesh.

The file is checked here by reading its XML and resolving each attribute's
data item against results.h5 with h5py, and by meshio reading
``results.meshio.xmf``; ``tests/test_paraview.py`` opens it with ParaView itself.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest
from conftest import write_study
from studyutil import NB_STEPS, copy_client, run_study

from melissa_sa.mesh import MeshError, geometry_of, parse_mesh
from melissa_sa.results import FieldSlice, ParameterTable, ResultsLayout, write_results
from melissa_sa.results.xdmf import (
    attribute_names,
    geometry_bytes,
    study_geometry,
    write_xdmf,
    xdmf_after_study,
)
from melissa_sa.server.results_io import results_file_bytes

T, NX, NY = 4, 6, 5


def small_layout(n_cells=NX * NY, second_order=False):
    """One field 'temperature' with every statistic."""
    return ResultsLayout(
        fields=("temperature",), n_cells={"temperature": n_cells}, n_time_steps=T,
        statistics=("mean", "variance", "skewness", "kurtosis", "min", "max",
                    "threshold_exceedance", "quantiles", "sobol")
        + (("sobol_second",) if second_order else ()),
        thresholds=(0.5, 300.0), quantile_levels=(0.05, 0.95), parameter_names=("x1", "x2", "x3"),
        confidence_level=0.95, ci_method="delta")


def small_results(path, n_cells=NX * NY, second_order=False, mesh=None):
    """A results file of :func:`small_layout` with random values."""
    names = ("x1", "x2", "x3")
    layout = small_layout(n_cells, second_order)
    rng = np.random.default_rng(1)
    stats = {s: rng.random(layout.shape("temperature", s)) for s in layout.statistics
             if s != "sobol"}
    for s in ("sobol_first", "sobol_total"):
        stats[s] = rng.random(layout.shape("temperature", s))
    for kind in ("first", "total", "second") if second_order else ("first", "total"):
        stats[f"sobol_{kind}_low"] = stats[f"sobol_{kind}"] - 0.1 * rng.random()
        stats[f"sobol_{kind}_high"] = stats[f"sobol_{kind}"] + 0.2 * rng.random()
    stats["n_samples"] = np.full(T, 20)
    stats["n_groups"] = np.full(T, 10)
    design = ParameterTable.from_groups(rng.random((10, 5, 3)), names)
    write_results(path, layout, {"temperature": FieldSlice(0, n_cells, stats)},
                  config_json={"output_dir": "."}, parameters=design, mesh=mesh)
    return path


def resolve(item: ET.Element, h5dir) -> np.ndarray:
    """The values of an XDMF DataItem (HDF or the "$0 - $1" Function)."""
    if item.get("ItemType") == "Function":
        a, b = (resolve(child, h5dir) for child in item)
        assert item.get("Function") == "$0 - $1"
        return a - b
    if item.get("ItemType") == "HyperSlab":
        slab, source = item
        start, stride, count = np.array(slab.text.split(), dtype=int).reshape(3, -1)
        rows = tuple(slice(a, a + s * c, s) for a, s, c in zip(start, stride, count))
        return resolve(source, h5dir)[rows].reshape(-1)
    assert item.get("Format") == "HDF"
    name, dataset = item.text.strip().split(":")
    with h5py.File(h5dir / name, "r") as h5:
        return h5[dataset][...]


def test_every_statistic_is_an_attribute_at_every_step_with_values_from_results_h5(tmp_path):
    results = small_results(tmp_path / "results.h5", second_order=True)
    xmf = write_xdmf(results, parse_mesh({"shape": [NX, NY], "order": "F"}))
    assert xmf == tmp_path / "results.xmf"
    root = ET.parse(xmf).getroot()
    assert root.get("Version") == "2.0"
    collection = root.find("Domain/Grid")
    assert collection.get("CollectionType") == "Temporal"
    steps = collection.findall("Grid")
    assert [float(g.find("Time").get("Value")) for g in steps] == list(range(T))
    names = attribute_names(results)
    expected = {"temperature mean", "temperature variance", "temperature skewness",
                "temperature kurtosis", "temperature min", "temperature max",
                "temperature P(>0.5)", "temperature P(>300)", "temperature quantile 0.05",
                "temperature quantile 0.95", "temperature S1 x2", "temperature ST x3",
                "temperature S1 x1 width", "temperature ST x2 width",
                "temperature S2 x1:x3", "temperature S2 x2:x3 width"}
    assert expected <= set(names)
    assert len(names) == 6 + 2 + 2 + 3 * 4 + 3 * 2
    with h5py.File(results, "r") as h5:
        g = h5["temperature"]
        expect = {"temperature mean": lambda t: g["mean"][t],
                  "temperature P(>300)": lambda t: g["threshold_exceedance"][1, t],
                  "temperature quantile 0.95": lambda t: g["quantiles"][1, t],
                  "temperature S1 x2": lambda t: g["sobol_first"][1, t],
                  "temperature ST x3 width":
                      lambda t: g["sobol_total_high"][2, t] - g["sobol_total_low"][2, t],
                  "temperature S2 x1:x3": lambda t: g["sobol_second"][1, t]}
        for t, grid in enumerate(steps):
            attrs = {a.get("Name"): a for a in grid.findall("Attribute")}
            assert list(attrs) == names
            assert {a.get("Center") for a in attrs.values()} == {"Cell"}
            for name, values in expect.items():
                got = resolve(attrs[name][0], tmp_path)
                assert np.array_equal(got, values(t)), (name, t)
        # the geometry is in results.h5, once
        mesh = geometry_of(parse_mesh({"shape": [NX, NY], "order": "F"}))
        assert np.array_equal(h5["mesh/points"][...], mesh.points)
        assert np.array_equal(h5["mesh/connectivity"][...], mesh.blocks[0][1])
    # no value copied: the XDMF names results.h5 relatively, holds no numbers of its own
    text = xmf.read_text()
    assert str(tmp_path) not in text and "results.h5:/by_step/temperature/mean/0<" in text
    assert "HyperSlab" not in text


def test_the_server_writes_the_mesh_with_the_results_and_only_the_xmf_after(tmp_path):
    """/mesh goes into results.h5 before the file is complete (and is counted in
    the bytes reserved for it); once complete, results.h5 is never written again:
    only results.xmf, whose failure leaves no temporary file."""
    geometry = study_geometry(parse_mesh({"shape": [NX, NY], "order": "F"}))
    path = small_results(tmp_path / "results.h5", mesh=geometry)
    with h5py.File(path) as h5:
        assert h5.attrs["complete"]
        assert h5["mesh/points"].shape == (geometry[0].n_points, 3)
    mesh_bytes = geometry_bytes(geometry[0])
    assert mesh_bytes >= geometry[0].points.nbytes > 0
    assert (results_file_bytes(small_layout(), 50, mesh_bytes)
            - results_file_bytes(small_layout(), 50)) >= mesh_bytes
    # with the layout, the /by_step views' metadata is counted too: one per
    # statistic row shown (and both bounds of each width), at every step
    with h5py.File(path) as h5:
        views = []
        h5["by_step"].visititems(lambda _, obj: views.append(obj)
                                 if isinstance(obj, h5py.Dataset) else None)
    assert geometry_bytes(geometry[0], small_layout()) - mesh_bytes == 1024 * len(views)
    assert len(views) == T * (6 + 2 + 2 + 3 * 3 * 2)
    before = path.read_bytes()
    out = xdmf_after_study(path, geometry)
    assert out == tmp_path / "results.xmf" and out.exists()
    assert path.read_bytes() == before
    out.unlink()
    out.mkdir()  # results.xmf cannot be replaced
    assert xdmf_after_study(path, geometry) is None
    assert not list(tmp_path.glob("*.tmp")) and path.read_bytes() == before


def test_points_centering_and_a_mixed_mesh_file(tmp_path):
    meshio = pytest.importorskip("meshio", reason="meshio is not installed")
    results = small_results(tmp_path / "results.h5", n_cells=5)
    points = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [2, 0.5]], dtype=float)
    mesh = meshio.Mesh(points, [("quad", [[0, 1, 2, 3]]), ("triangle", [[1, 4, 2]])])
    meshio.write(tmp_path / "mixed.vtu", mesh)
    spec = parse_mesh({"file": "mixed.vtu", "centering": "points"}, tmp_path)
    xmf = write_xdmf(results, spec)
    grid = ET.parse(xmf).getroot().find("Domain/Grid/Grid")
    assert grid.find("Topology").get("TopologyType") == "Mixed"
    assert {a.get("Center") for a in grid.findall("Attribute")} == {"Node"}
    topology = resolve(grid.find("Topology")[0], tmp_path)
    assert list(topology) == [5, 0, 1, 2, 3, 4, 1, 4, 2]
    with pytest.raises(MeshError, match="has 5 values, the mesh has 2 cells"):
        write_xdmf(results, parse_mesh({"file": "mixed.vtu"}, tmp_path))


def _study(tmp_path, ranks: int, mesh):
    copy_client(tmp_path)
    return write_study(
        tmp_path,
        study_options={"field_names": ["f"], "nb_parameters": 2, "parameter_sweep_size": 3,
                       "nb_time_steps": NB_STEPS, "l_bounds": [-1.0, -1.0],
                       "u_bounds": [1.0, 1.0], "mesh": mesh},
        sa_config={"mean": True, "variance": True, "min": True, "max": True,
                   "quantiles": [0.5], "sobol_indices": True},
        server_config={"server_processes": ranks},
        launcher_config={"job_limit": 4, "server_timeout": 60, "fault_tolerance": False,
                         "max_server_restarts": 0},
        client_config={"executable_command": "python analytic_client.py --split 4,8"})


def test_a_study_with_a_mesh_writes_the_same_files_on_one_and_two_server_ranks(tmp_path):
    mesh = {"shape": [4, 3], "origin": [0.5, 0.5], "spacing": [1, 1], "order": "F"}
    outputs = {}
    for ranks in (1, 2):
        where = tmp_path / f"ranks{ranks}"
        where.mkdir()
        done = run_study(_study(where, ranks, mesh), timeout=240)
        assert done.returncode == 0, done.stdout[-3000:]
        out = where / "out"
        with h5py.File(out / "results.h5", "r") as h5:
            outputs[ranks] = ((out / "results.xmf").read_text(),
                              {k: h5["mesh"][k][...] for k in h5["mesh"]},
                              h5["f/sobol_first"][...])
    assert outputs[1][0] == outputs[2][0]
    assert outputs[1][1].keys() == outputs[2][1].keys() == {"points", "connectivity"}
    for key in outputs[1][1]:
        assert np.array_equal(outputs[1][1][key], outputs[2][1][key])
    np.testing.assert_allclose(outputs[1][2], outputs[2][2], rtol=1e-12, atol=1e-12)


def test_export_puts_an_existing_results_file_on_a_mesh(tmp_path):
    import json
    import subprocess

    from studyutil import MELISSA

    results = small_results(tmp_path / "results.h5")
    (tmp_path / "grid.json").write_text(json.dumps({"shape": [NX, NY], "order": "F"}))
    done = subprocess.run([MELISSA, "export", str(results), "--mesh", str(tmp_path / "grid.json")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "results.xmf" in done.stderr and (tmp_path / "results.xmf").exists()
    assert f"{tmp_path / 'results.meshio.xmf'} for meshio" in done.stderr
    assert (tmp_path / "results.meshio.xmf").exists()
    # the same from a study file's mesh, and one VTKHDF file of the last step
    study = {"study_options": {"mesh": {"shape": [NX, NY], "order": "F"}}}
    (tmp_path / "study.json").write_text(json.dumps(study))
    done = subprocess.run([MELISSA, "export", str(results), "--mesh", str(tmp_path / "study.json"),
                           "--format", "vtkhdf"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "results.vtk.hdf", "r") as v, h5py.File(results, "r") as h5:
        assert v["VTKHDF"].attrs["Type"] == b"UnstructuredGrid"
        assert np.array_equal(v["VTKHDF/CellData/temperature S1 x3"][...],
                              h5["temperature/sobol_first"][2, -1])
        assert v["VTKHDF/NumberOfCells"][0] == NX * NY


@pytest.mark.parametrize("mesh, words", [
    ({"shape": [NX, NY + 1]}, ["--mesh", "has 30 values, the mesh has 36 cells"]),
    ({"shape": [2, 2, 2, 2]}, ["--mesh.shape", "1, 2 or 3 axes"]),
    ("nowhere.vtu", ["--mesh", "nowhere.vtu", "no such mesh file"]),
])
def test_export_refuses_a_mesh_that_does_not_fit(tmp_path, mesh, words):
    import json
    import subprocess

    from studyutil import MELISSA

    results = small_results(tmp_path / "results.h5")
    if isinstance(mesh, dict):
        (tmp_path / "grid.json").write_text(json.dumps(mesh))
        mesh = "grid.json"
    done = subprocess.run([MELISSA, "export", str(results), "--mesh", str(tmp_path / mesh)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    for word in words:
        assert word in done.stderr, done.stderr
    assert not (tmp_path / "results.xmf").exists()


def test_the_mesh_never_replaces_a_field_named_mesh(tmp_path):
    """A results file with a field 'mesh' (written before the name was reserved):
    export refuses to put the mesh in its place and leaves the field's results."""
    from melissa_sa.results import ResultsFileError
    from melissa_sa.results.step_views import write_step_views
    from melissa_sa.results.xdmf import field_arrays

    layout = ResultsLayout(fields=("mesh", "by_step"),
                           n_cells={"mesh": NX * NY, "by_step": NX * NY}, n_time_steps=T,
                           statistics=("mean",))
    mean = np.arange(T * NX * NY, dtype=float).reshape(T, NX * NY)
    path = tmp_path / "results.h5"
    write_results(path, layout, {"mesh": FieldSlice(0, NX * NY, {"mean": mean,
                                                                 "n_samples": np.full(T, 3)}),
                                 "by_step": FieldSlice(0, NX * NY, {"mean": mean,
                                                              "n_samples": np.full(T, 3)})},
                  config_json={"output_dir": "."})
    with pytest.raises(MeshError, match="holds the results of the field 'mesh'"):
        write_xdmf(path, parse_mesh({"shape": [NX, NY]}))
    with h5py.File(path, "r") as h5:
        assert np.array_equal(h5["mesh/mean"][...], mean)
    with h5py.File(path, "r+") as h5, pytest.raises(ResultsFileError, match="the field 'by_step'"):
        write_step_views(h5, ["by_step"], field_arrays)
    with h5py.File(path, "r") as h5:
        assert np.array_equal(h5["by_step/mean"][...], mean)


def test_past_the_cut_off_results_xmf_selects_the_same_rows_with_hyperslabs(tmp_path,
                                                                            monkeypatch):
    """Without the /by_step views (the server skips them past MAX_SERVER_VIEWS)
    every attribute of results.xmf holds the same values, through HyperSlab items."""
    import melissa_sa.results.create as create

    mesh = study_geometry(parse_mesh({"shape": [NX, NY], "order": "F"}))
    for where in ("with", "without"):
        (tmp_path / where).mkdir()
    xdmf_after_study(small_results(tmp_path / "with" / "results.h5", second_order=True,
                                   mesh=mesh), mesh)
    monkeypatch.setattr(create, "MAX_SERVER_VIEWS", 0)
    results = small_results(tmp_path / "without" / "results.h5", second_order=True, mesh=mesh)
    xdmf_after_study(results, mesh)
    with h5py.File(results, "r") as h5:
        assert "by_step" not in h5
    seen = {}
    for where in ("with", "without"):
        root = ET.parse(tmp_path / where / "results.xmf").getroot()
        seen[where] = {(grid.get("Name"), att.get("Name")): resolve(att[0], tmp_path / where)
                       for grid in root.iter("Grid") if grid.get("GridType") == "Uniform"
                       for att in grid.iter("Attribute")}
    assert len(seen["with"]) == T * len(attribute_names(results))
    assert seen["with"].keys() == seen["without"].keys()
    for key, values in seen["with"].items():
        assert values.shape == (NX * NY,) and np.array_equal(values, seen["without"][key]), key
    assert not (tmp_path / "without" / "results.meshio.xmf").exists()
