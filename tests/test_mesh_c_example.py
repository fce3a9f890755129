"""The C heat example on its declared mesh, end to end.

libmelissa and ``examples/heat_pde_c`` are built (``melissa-sa client build``,
then CMake, as ``tests/test_c_client.py`` does); a small Sobol' study runs the
example's command on the example's ``study_options.mesh`` (its 50 x 50 grid,
Fortran order); the study's ``results.xmf`` is then opened by ParaView
(``XDMFReader``, when ``pvbatch`` and ``xvfb-run`` are installed) and its
``results.meshio.xmf`` by meshio, every array of every step equal to
``results.h5`` read with h5py. Skips, naming what is missing, without a C
compiler, cmake or the MPI wheel's mpicc.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import h5py
import numpy as np
from cclient_util import HEAT_C
from conftest import write_study
from studyutil import run_study
from test_xdmf_meshio import assert_equal_to_h5py, meshio_reads

from melissa_sa.mesh import geometry_of, parse_mesh

GROUPS = 4


def example_study(tmp: Path, heat: Path) -> tuple[Path, dict]:
    """The example's study file, made small (4 groups, one server rank, two
    clients at a time) with its solver command, grid and mesh unchanged."""
    example = json.loads((HEAT_C / "study.json").read_text())
    options, client = example["study_options"], example["client_config"]
    words = shlex.split(client["executable_command"])
    assert words[0] == "build/heat"
    command = shlex.join([str(heat), *words[1:]])
    study = write_study(
        tmp,
        study_options={**options, "parameter_sweep_size": GROUPS, "simulation_timeout": 60},
        sa_config={**example["sa_config"], "checkpoint_interval": 1000},
        server_config={"server_processes": 1},
        launcher_config={"job_limit": 2, "server_timeout": 60},
        client_config={**client, "executable_command": command})
    return study, options["mesh"]


def test_the_c_heat_example_on_its_mesh_opens_in_paraview_and_meshio(heat, tmp_path):
    study, mesh = example_study(tmp_path, heat)
    done = run_study(study, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:]
    out = tmp_path / "out"
    results, xmf = out / "results.h5", out / "results.xmf"
    assert xmf.exists() and (out / "results.meshio.xmf").exists()
    grid = geometry_of(parse_mesh(mesh))
    nx, ny = mesh["shape"]
    with h5py.File(results, "r") as h5:
        assert h5["temperature"].attrs["n_cells"] == nx * ny
        assert np.array_equal(h5["mesh/points"][...], grid.points)
        n_steps = int(h5["temperature"].attrs["n_time_steps"])
    points, cells, steps = meshio_reads(out / "results.meshio.xmf")
    assert np.array_equal(points, grid.points)
    assert np.array_equal(cells[0].data, grid.blocks[0][1])
    assert len(steps) == n_steps
    assert_equal_to_h5py(results, steps)
    if shutil.which("pvbatch") is None or shutil.which("xvfb-run") is None:
        return  # ParaView's own check is tests/test_paraview.py's, skipped there by name
    from test_paraview import not_blank, paraview_reads

    report, image = paraview_reads(tmp_path, xmf, "temperature S1 T_left")
    assert report["times"] == list(range(n_steps))
    with h5py.File(results, "r") as h5:
        g = h5["temperature"]
        for t, step in enumerate(report["steps"]):
            assert step["n_cells"] == nx * ny and step["on_cells"]
            got = step["arrays"]
            assert np.array_equal(got["temperature mean"], g["mean"][t])
            for k, name in enumerate(("T_initial", "T_left", "T_other_walls")):
                assert np.array_equal(got[f"temperature S1 {name}"], g["sobol_first"][k, t],
                                      equal_nan=True)
                width = g["sobol_total_high"][k, t] - g["sobol_total_low"][k, t]
                assert np.array_equal(got[f"temperature ST {name} width"], width,
                                      equal_nan=True)
    not_blank(image)
