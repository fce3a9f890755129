"""A mesh that does not fit, and every other bad mesh, stop a study at once.

A mesh given in the study file is checked when the file is loaded (a 4D
grid, a missing, unreadable or unknown-format mesh file): ``melissa-sa run``
exits with status 2 naming the key and the file, before the server or any
client starts, and so is a declared ``study_options.field_sizes`` that
differs from the mesh. A field's size is known only when a simulation
announces it: the first hello whose size differs from the mesh (or from the
declared size) ends the study there, with one line naming the key, the mesh
and both numbers, no run restarted nor drawn again (even with fault
tolerance on).
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import write_study
from studyutil import NB_STEPS, copy_client, run_study

from melissa_sa import exit_codes


def _study(tmp_path, mesh, field_sizes=None, **launcher):
    copy_client(tmp_path)
    return write_study(
        tmp_path,
        study_options={"field_names": ["f"], "nb_parameters": 2, "parameter_sweep_size": 6,
                       "nb_time_steps": NB_STEPS, "l_bounds": [-1.0, -1.0],
                       "u_bounds": [1.0, 1.0], "mesh": mesh, "crashes_before_redraw": 3,
                       "field_sizes": field_sizes},
        sa_config={"mean": True, "sobol_indices": True},
        launcher_config={"job_limit": 2, "server_timeout": 60, "fault_tolerance": True,
                         **launcher},
        client_config={"executable_command": "python analytic_client.py --split 4,8"})


def _stopped_at_first_hello(done, out) -> None:
    """One server, no restart; no client started again nor a group redrawn: at
    most the job_limit (2) clients that were running when the first hello came."""
    assert done.returncode == exit_codes.FAILED, done.stdout[-3000:]
    assert not (out / "results.h5").exists()
    assert done.stdout.count("[melissa-sa] server started") == 1
    assert len(list((out / "logs").glob("client.*.log"))) <= 2
    state = json.loads((out / "launcher.json").read_text())
    assert state["server_restarts"] == 0 and state["clients"] == []


@pytest.mark.parametrize("kind", ["grid", "file"])
def test_a_field_that_does_not_fit_the_mesh_stops_the_study_at_the_first_hello(tmp_path, kind):
    if kind == "grid":
        mesh, where = {"shape": [5, 3]}, "structured grid 5 x 3 (15 cells)"
    else:
        meshio = pytest.importorskip("meshio", reason="meshio is not installed")
        grid = meshio.Mesh([[i % 4, i // 4] for i in range(16)],
                           [("quad", [[0, 1, 5, 4], [1, 2, 6, 5], [2, 3, 7, 6]])])
        meshio.write(tmp_path / "strip.vtu", grid)
        mesh, where = {"file": "strip.vtu", "centering": "points"}, \
            f"mesh file {tmp_path / 'strip.vtu'}"
    done = run_study(_study(tmp_path, mesh), timeout=240)
    assert done.returncode == exit_codes.FAILED, done.stdout[-3000:]
    n = 15 if kind == "grid" else 16
    found = re.search(r"error: study failed: study_options\.mesh: field 'f' of simulation "
                      rf"\d+ has 12 values, the mesh \({re.escape(where)}\) has {n} "
                      rf"{'cells' if kind == 'grid' else 'points'}: the study stops",
                      done.stdout)
    assert found, done.stdout[-3000:]
    _stopped_at_first_hello(done, tmp_path / "out")


def test_a_declared_field_size_the_solver_does_not_have_stops_the_study_at_the_first_hello(
        tmp_path):
    done = run_study(_study(tmp_path, None, {"f": 15}), timeout=240)
    assert re.search(r"error: study failed: study_options\.field_sizes\.f: simulation \d+ has "
                     r"12 values, the study file declares 15: the study stops", done.stdout), \
        done.stdout[-3000:]
    _stopped_at_first_hello(done, tmp_path / "out")


def test_a_declared_field_size_that_differs_from_the_mesh_is_an_error_at_start(tmp_path):
    study = _study(tmp_path, {"shape": [5, 3]}, {"f": 12})
    done = run_study(study, timeout=60)
    assert done.returncode == exit_codes.USAGE, done.stdout[-3000:]
    assert (f"{study}: study_options.field_sizes.f: 12 values, but study_options.mesh "
            "(structured grid 5 x 3 (15 cells)) has 15 cells") in done.stdout, done.stdout
    assert "server started" not in done.stdout
    assert not (tmp_path / "out" / "launcher.json").exists()


BAD = {
    "4d_grid": ({"shape": [2, 2, 2, 2]}, ["study_options.mesh.shape", "1, 2 or 3 axes"]),
    "missing": ({"file": "nowhere.vtu"}, ["study_options.mesh.file", "nowhere.vtu",
                                          "no such mesh file"]),
    "unreadable": ({"file": "broken.vtu"}, ["study_options.mesh.file", "broken.vtu",
                                            "cannot read the mesh"]),
    "directory": ({"file": "folder.vtu"}, ["study_options.mesh.file", "folder.vtu",
                                           "not a mesh file"]),
    "unknown_extension": ({"file": "mesh.abc"}, ["study_options.mesh.file", "mesh.abc",
                                                 "unknown mesh format"]),
    "unknown_format": ({"file": "broken.vtu", "format": "no-such-format"},
                       ["study_options.mesh.file", "broken.vtu", "unknown mesh format"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_mesh_is_a_named_error_at_start_with_nothing_launched(tmp_path, case):
    pytest.importorskip("meshio", reason="meshio is not installed")
    mesh, words = BAD[case]
    (tmp_path / "broken.vtu").write_text("<VTKFile garbage")
    (tmp_path / "mesh.abc").write_text("not a mesh\n")
    (tmp_path / "folder.vtu").mkdir()
    study = _study(tmp_path, mesh)
    done = run_study(study, timeout=60)
    assert done.returncode == exit_codes.USAGE, done.stdout[-3000:]
    for word in [*words, str(study)]:
        assert word in done.stdout, (word, done.stdout[-3000:])
    assert "server started" not in done.stdout
    out = tmp_path / "out"
    assert not (out / "launcher.json").exists() and not (out / "logs").exists()
