"""libmelissa and the solver's own MPI (melissa_sa/cclient/mpi_toolchain.py,
src/mpi_check.c, cmake/MelissaConfig.cmake.in).

* a study of 2-rank C clients built with Debian's Open MPI and started by its
  ``mpirun`` (client_config.mpiexec), the server on the mpich wheel, equals the
  offline recomputation;
* a library built for one MPI linked into a program of the other stops with
  melissa's message naming both (at run time, and at CMake configure time);
* with no ``--mpicc``, the build takes the ``mpicc`` on PATH outside the
  virtual environment and says which MPI it built against;
* a wrapper that prints no flags (Cray's ``cc``) builds with flags given by an
  option or the environment.

Tests skip with a message naming the missing tool.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cclient_util import HEAT_C, MPICC, STEPS, FakeServer, cmake_build, missing, offline, run
from test_c_client import GROUPS, P, heat_study, run_ok

from melissa_sa.cclient import BuildError, build
from melissa_sa.results import open_results

OPEN_MPI = ("mpicc.openmpi", "mpirun.openmpi")
MISUSE = Path(__file__).parent / "clients" / "misuse.c"
CLI = Path(sys.executable).parent / "melissa-sa"
needs_open_mpi = pytest.mark.skipif(
    bool(missing(*OPEN_MPI, "cc", "cmake")),
    reason=f"needs {', '.join(missing(*OPEN_MPI, 'cc', 'cmake'))} (apt-get install "
           f"libopenmpi-dev openmpi-bin cmake)")


def mpirun_openmpi() -> str:
    """Open MPI's launcher as client_config.mpiexec (root needs a flag)."""
    root = " --allow-run-as-root" if os.geteuid() == 0 else ""
    return f"mpirun.openmpi{root} --oversubscribe"


@pytest.fixture(scope="module")
def open_mpi_prefix(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("melissa_openmpi")
    build(path, "mpicc.openmpi", zmq="wheel", quiet=True)
    return path


@pytest.fixture(scope="module")
def wheel_prefix(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("melissa_wheel")
    build(path, MPICC, zmq="wheel", quiet=True)
    return path


@needs_open_mpi
def test_open_mpi_clients_stream_exactly(open_mpi_prefix, tmp_path):
    """libmelissa and the C heat example built with mpicc.openmpi; each 2-rank
    client runs under mpirun.openmpi while the server runs on the mpich wheel."""
    cmake_build(HEAT_C, tmp_path / "build", open_mpi_prefix, "mpicc.openmpi")
    heat = tmp_path / "build" / "heat"
    needed = run(["readelf", "-d", heat]).stdout
    assert "libmpi.so.40" in needed and "libmpi.so.12" not in needed
    study = heat_study(tmp_path, f"{heat} --split 2,5", mpiexec=mpirun_openmpi())
    results = run_ok(study)
    script = (tmp_path / "out" / "client_scripts" / "client.0.sh").read_text()
    assert f"{mpirun_openmpi()} -n 2 {heat}" in script
    with open_results(tmp_path / "out" / "results.h5") as r:
        assert r.parameters.folded.sum() == GROUPS * (P + 2)
        ref = offline(r, heat, tmp_path, P)
    for name, value in ref.items():
        scale = np.abs(value).max() or 1.0
        np.testing.assert_allclose(results[name], value, rtol=1e-10, atol=1e-10 * scale,
                                   err_msg=name)
    np.testing.assert_array_equal(results["n_samples"], [2 * GROUPS] * STEPS)


@needs_open_mpi
@pytest.mark.parametrize("program_cc,library,built_for,runs", [
    ("mpicc.openmpi", "wheel", "MPICH", "Open MPI 4"),
    (MPICC, "openmpi", "Open MPI 4", "MPICH"),
])
def test_a_library_of_another_mpi_is_a_message_not_a_crash(
        program_cc, library, built_for, runs, open_mpi_prefix, wheel_prefix, tmp_path):
    prefix = wheel_prefix if library == "wheel" else open_mpi_prefix
    exe = tmp_path / "misuse"
    run([program_cc, f"-I{prefix}/include", MISUSE, "-o", exe, f"-L{prefix}/lib",
         "-lmelissa", f"-Wl,-rpath,{prefix}/lib"])
    server = FakeServer(nb_time_steps=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MELISSA_", "PMI_"))}
    env.update(MELISSA_SERVER_ADDRESS=server.address, MELISSA_SIMULATION_ID="3")
    try:
        done = subprocess.run([exe, "normal"], capture_output=True, text=True, env=env,
                              timeout=60)
    finally:
        server.close()
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert (f'melissa: melissa_init("f"): this libmelissa was built for {built_for} ('
            in done.stderr), done.stderr
    assert f"but the simulation runs {runs} (" in done.stderr
    assert "rebuild it with the solver's MPI: melissa-sa client build --mpicc" in done.stderr
    assert server.hellos == []


@needs_open_mpi
def test_cmake_refuses_a_project_of_another_mpi(wheel_prefix, open_mpi_prefix, tmp_path):
    done = subprocess.run(["cmake", "-S", HEAT_C, "-B", tmp_path / "b",
                           f"-DCMAKE_PREFIX_PATH={wheel_prefix}",
                           "-DCMAKE_C_COMPILER=mpicc.openmpi"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    text = " ".join(done.stderr.split())
    assert f"Melissa in {wheel_prefix} was built for MPICH (\"MPICH Version:" in text, text
    assert "but this project uses Open MPI 4 (\"Open MPI v4" in text
    # the library built with the project's MPI configures, and the target adds no MPI flags
    cmake_build(HEAT_C, tmp_path / "ok", open_mpi_prefix, "mpicc.openmpi")


@needs_open_mpi
def test_cmake_refuses_another_mpi_found_by_find_package(wheel_prefix, tmp_path):
    """A project built with a plain C compiler that links MPI through
    find_package(MPI) (here Open MPI's): its MPI is probed through MPI::MPI_C."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.13)\nproject(solver C)\n"
        "find_package(MPI REQUIRED COMPONENTS C)\nfind_package(Melissa CONFIG REQUIRED)\n")
    done = subprocess.run(["cmake", "-S", tmp_path / "src", "-B", tmp_path / "b",
                           "-DCMAKE_C_COMPILER=cc", "-DMPI_C_COMPILER=mpicc.openmpi",
                           f"-DCMAKE_PREFIX_PATH={wheel_prefix}"],
                          capture_output=True, text=True, timeout=300)
    text = " ".join(done.stderr.split())
    assert done.returncode != 0, done.stdout
    assert "but this project uses Open MPI 4" in text, text
    assert "from find_package(MPI) (MPI::MPI_C)" in text


def test_default_mpicc_is_the_one_on_path_outside_the_venv(tmp_path):
    """An activated venv puts the mpich wheel's mpicc first on PATH; the build
    skips it for the next mpicc (here Debian's MPICH under that name)."""
    if missing("mpicc.mpich"):
        pytest.skip("needs mpicc.mpich (apt-get install libmpich-dev)")
    own = tmp_path / "bin"
    own.mkdir()
    (own / "mpicc").symlink_to(subprocess.check_output(
        ["sh", "-c", "command -v mpicc.mpich"], text=True).strip())
    env = dict(os.environ, PATH=f"{CLI.parent}:{own}:/usr/bin:/bin")
    done = run([CLI, "client", "build", "--prefix", tmp_path / "p", "--zmq", "wheel"],
               env=env)
    assert (f"MPI: {own / 'mpicc'} (the mpicc on PATH outside this Python environment)"
            in done.stdout), done.stdout
    assert "MPI library: MPICH Version: 4." in done.stdout
    needed = run(["readelf", "-d", tmp_path / "p/lib/libmelissa.so.0"]).stdout
    assert "libmpich.so.12" in needed, needed
    version = (tmp_path / "p/lib/cmake/Melissa/MelissaConfig.cmake").read_text()
    assert f'set(Melissa_MPI_C_COMPILER "{own / "mpicc"}")' in version


def test_a_wrapper_without_show_takes_the_flags_given(tmp_path, monkeypatch):
    """Cray's cc prints no flags: --mpi-cflags/--mpi-libs (or MELISSA_MPI_CFLAGS
    and MELISSA_MPI_LIBS) give them; without them the build says so."""
    if missing("mpicc.mpich"):
        pytest.skip("needs mpicc.mpich (apt-get install libmpich-dev)")
    words = run(["mpicc.mpich", "-show"]).stdout.split()[1:]
    cflags = " ".join(w for w in words if w.startswith("-I"))
    libs = " ".join(w for w in words if w.startswith(("-L", "-l")))
    wrapper = tmp_path / "cc"
    wrapper.write_text('#!/bin/sh\ncase "$1" in -show|--showme|--cray-print-opts*) exit 1;; '
                       f'esac\nexec cc {cflags} "$@" {libs}\n')
    wrapper.chmod(0o755)
    monkeypatch.delenv("MELISSA_MPI_CFLAGS", raising=False)
    monkeypatch.delenv("MELISSA_MPI_LIBS", raising=False)
    monkeypatch.delenv("CRAY_MPICH_DIR", raising=False)
    with pytest.raises(BuildError, match="prints no flags .* --mpi-cflags/--mpi-libs"):
        build(tmp_path / "none", str(wrapper), zmq="wheel", quiet=True)
    build(tmp_path / "opt", str(wrapper), zmq="wheel", quiet=True, mpi_cflags=cflags,
          mpi_libs=libs)
    monkeypatch.setenv("MELISSA_MPI_CFLAGS", cflags)
    monkeypatch.setenv("MELISSA_MPI_LIBS", libs)
    build(tmp_path / "env", str(wrapper), zmq="wheel", quiet=True)
    for prefix in ("opt", "env"):
        pc = (tmp_path / prefix / "lib/pkgconfig/melissa.pc").read_text()
        assert cflags in pc and "mpi_family=MPICH" in pc, pc
