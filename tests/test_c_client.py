"""The C and Fortran client library (melissa_sa/cclient): built once per session
with ``melissa-sa client build``, the C heat example built by CMake through
``find_package(Melissa CONFIG REQUIRED)``, real studies through
``melissa-sa run``.

* a Sobol' study of 2-rank C clients (uneven rows) into 2 server ranks equals
  the offline recomputation from the same solver's files to 1e-10;
* C and Python clients feed one study; C clients killed with SIGKILL mid-study;
  Fortran and C clients built with Debian's MPICH and started by
  ``mpiexec.mpich``: each equals the fault-free C study;
* every misuse and failure of the library: its message and exit status.

Tests skip with a message naming the missing tool (a C compiler and cmake for
all; mpicc.mpich, mpiexec.mpich and mpif90.mpich for the Debian MPICH path).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cclient_util import (
    HEAT_C,
    HEAT_F,
    MPICC,
    N_CELLS,
    STEPS,
    FakeServer,
    cmake_build,
    heat_history,
    missing,
    offline,
    run,
)
from conftest import MPIEXEC, free_port, write_study
from studyutil import run_study

from melissa_sa.results import open_results

P, GROUPS = 3, 4
CLIENTS = Path(__file__).parent / "clients"
STATS = ["mean", "variance", "skewness", "kurtosis", "min", "max", "threshold_exceedance",
         "quantiles", "sobol_first", "sobol_total"]
DEBIAN_TOOLS = ("mpicc.mpich", "mpiexec.mpich", "mpif90.mpich")


def heat_study(tmp: Path, command: str, processes: int = 2, **client) -> Path:
    (tmp / "faults").mkdir(exist_ok=True)
    return write_study(
        tmp,
        study_options={"field_names": ["temperature"], "nb_parameters": P,
                       "parameter_sweep_size": GROUPS, "nb_time_steps": STEPS, "seed": 0,
                       "l_bounds": [100.0] * P, "u_bounds": [500.0] * P,
                       "simulation_timeout": 30, "crashes_before_redraw": 3},
        sa_config={"mean": True, "variance": True, "skewness": True, "kurtosis": True,
                   "min": True, "max": True, "threshold_exceedance": [300.0],
                   "quantiles": [0.25, 0.5], "sobol_indices": True, "checkpoint_interval": 4},
        server_config={"server_processes": 2},
        launcher_config={"job_limit": 2, "server_timeout": 30, "timer_delay": 0.5},
        client_config={"executable_command": command, "client_processes": processes, **client})


def read(path: Path) -> dict:
    with open_results(path) as r:
        out = {name: r.get("temperature", name) for name in STATS}
        out["n_samples"] = r.n_samples("temperature")
        table = r.parameters
        out["design"] = table.values[np.lexsort((table.member, table.group_id))][table.folded]
    return out


def assert_same(got: dict, expected: dict, rtol: float = 1e-12) -> None:
    np.testing.assert_array_equal(got["n_samples"], expected["n_samples"])
    np.testing.assert_array_equal(got["design"], expected["design"])
    for name in STATS:
        scale = np.nanmax(np.abs(expected[name])) or 1.0
        np.testing.assert_allclose(got[name], expected[name], rtol=rtol, atol=rtol * scale,
                                   err_msg=name)


def run_ok(study: Path, env=None) -> dict:
    done = run_study(study, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-3000:]
    return read(study.parent / "out" / "results.h5")


@pytest.fixture(scope="module")
def baseline(heat, tmp_path_factory) -> dict:
    """The fault-free Sobol' study of 2-rank C clients (rows split 2 + 5)."""
    tmp = tmp_path_factory.mktemp("c_baseline")
    study = heat_study(tmp, f"{heat} --split 2,5")
    results = run_ok(study)
    results["offline_dir"] = tmp
    return results


def test_c_sobol_study_equals_offline_recomputation(baseline, heat):
    tmp = baseline["offline_dir"]
    with open_results(tmp / "out" / "results.h5") as r:
        assert r.parameters.folded.sum() == GROUPS * (P + 2)
        ref = offline(r, heat, tmp, P)
    for name, value in ref.items():
        scale = np.abs(value).max() or 1.0
        np.testing.assert_allclose(baseline[name], value, rtol=1e-10, atol=1e-10 * scale,
                                   err_msg=name)
    np.testing.assert_array_equal(baseline["n_samples"], [2 * GROUPS] * STEPS)


def test_heat_c_equals_heat_py_explicit(heat, tmp_path):
    """The C example is heat.py's explicit scheme, bit for bit, on any split."""
    params = [321.5, 140.25, 480.0]
    c_serial = heat_history(heat, params, tmp_path)
    out = tmp_path / "mpi.bin"
    run([MPIEXEC, "-n", "2", heat, "--split", "5,2", "--output", out, *map(str, params)],
        cwd=tmp_path)
    np.testing.assert_array_equal(np.fromfile(out).reshape(STEPS, N_CELLS), c_serial)
    npy = tmp_path / "py.npy"
    run([sys.executable, Path(__file__).parents[1] / "examples/heat_pde/heat.py",
         "--no-melissa", "--scheme", "explicit", "--nx", "12", "--ny", "7", "--steps",
         str(STEPS), "--output", npy, *map(str, params)], cwd=tmp_path)
    np.testing.assert_array_equal(np.load(npy), c_serial)


def test_float32_c_clients_equal_the_float64_study_to_float_precision(baseline, heat,
                                                                        tmp_path):
    """melissa_send_float in a real study: the server decodes float32 and its
    statistics equal the float64 study's to float32 precision (values 100-500)."""
    results = run_ok(heat_study(tmp_path, f"{heat} --split 2,5 --float"))
    np.testing.assert_array_equal(results["n_samples"], baseline["n_samples"])
    for name in ("mean", "variance", "min", "max", "quantiles"):
        np.testing.assert_allclose(results[name], baseline[name], rtol=1e-5, err_msg=name)
    assert not np.array_equal(results["mean"], baseline["mean"])  # float32 was sent


def test_c_and_python_clients_feed_one_study(baseline, heat, tmp_path):
    """Even simulation ids run the C solver, odd ones heat.py (both 2 ranks)."""
    heat_py = Path(__file__).parents[1] / "examples/heat_pde/heat.py"
    (tmp_path / "pick.sh").write_text(
        "if [ $((MELISSA_SIMULATION_ID % 2)) = 0 ]; then\n"
        f"  exec {heat} --split 2,5 \"$@\"\nfi\n"
        f"exec {sys.executable} {heat_py} --scheme explicit --nx 12 --ny 7 "
        f"--steps {STEPS} \"$@\"\n")
    assert_same(run_ok(heat_study(tmp_path, "sh pick.sh")), baseline)


def test_c_clients_killed_9_mid_study(baseline, heat, tmp_path):
    """Simulations 1, 7 and 13 kill their last rank with SIGKILL after 2 steps on
    their first attempt; the launcher's own command carries mpiexec here."""
    (tmp_path / "wrap.sh").write_text(
        "f=faults/attempts.$MELISSA_SIMULATION_ID\n"
        "n=$(cat $f 2>/dev/null | wc -c); printf x >> $f\n"
        "extra=\n"
        "case $MELISSA_SIMULATION_ID in 1|7|13) [ $n = 0 ] && extra='--kill-at 3';; esac\n"
        f"exec {MPIEXEC} -n 2 {heat} --split 2,5 $extra \"$@\"\n")
    study = heat_study(tmp_path, "sh wrap.sh", processes=1)
    assert_same(run_ok(study), baseline)
    log = (tmp_path / "out" / "logs" / "server.log").read_text()
    assert log.count("restarting it") == 3, log[-3000:]
    for sim in (1, 7, 13):
        assert (tmp_path / "faults" / f"attempts.{sim}").read_text() == "xx"


@pytest.mark.skipif(bool(missing(*DEBIAN_TOOLS)),
                    reason=f"the Debian MPICH / Fortran path needs "
                           f"{', '.join(missing(*DEBIAN_TOOLS))} (apt-get install gfortran "
                           f"libmpich-dev)")
def test_fortran_and_debian_mpich_clients(baseline, tmp_path):
    """libmelissa built with Debian's mpicc.mpich (and checked with mpif90.mpich);
    even simulations run the C example built by CMake with mpicc.mpich, odd ones
    the Fortran example; client_config.mpiexec starts both with mpiexec.mpich."""
    from melissa_sa.cclient import build

    prefix = tmp_path / "prefix"
    build(prefix, "mpicc.mpich", "mpif90.mpich", quiet=True)
    cmake_build(HEAT_C, tmp_path / "build", prefix, "mpicc.mpich")
    heat_f = tmp_path / "heat_f"
    run(["mpif90.mpich", "-O2", "-ffp-contract=off", f"-I{prefix}/include", HEAT_F, "-o",
         heat_f, f"-L{prefix}/lib", "-lmelissa", f"-Wl,-rpath,{prefix}/lib"])
    (tmp_path / "pick.sh").write_text(
        "if [ $((MELISSA_SIMULATION_ID % 2)) = 0 ]; then\n"
        f"  exec {tmp_path / 'build' / 'heat'} --split 2,5 \"$@\"\nfi\n"
        f"exec {heat_f} --split 2,5 \"$@\"\n")
    study = heat_study(tmp_path, "sh pick.sh", mpiexec="mpiexec.mpich")
    script_dir = tmp_path / "out" / "client_scripts"
    assert_same(run_ok(study), baseline)
    assert "mpiexec.mpich -n 2 sh pick.sh" in (script_dir / "client.0.sh").read_text()


def test_cli_build_then_a_makefile_build_with_pkg_config(tmp_path, prefix):
    """`melissa-sa client build` prints the flags; melissa.pc lets a plain C compiler
    (not the MPI wrapper) build a client: the MPI flags come with it."""
    if missing("pkg-config"):
        pytest.skip("needs pkg-config")
    cli = Path(sys.executable).parent / "melissa-sa"
    done = run([cli, "client", "build", "--prefix", tmp_path / "p", "--zmq", "wheel"])
    assert f"-DCMAKE_PREFIX_PATH={tmp_path / 'p'}" in done.stdout
    assert f"-lmelissa -Wl,-rpath,{tmp_path / 'p'}/lib" in done.stdout
    flags = run(["pkg-config", "--cflags", "--libs", "melissa"],
                env=dict(os.environ, PKG_CONFIG_PATH=str(tmp_path / "p/lib/pkgconfig")))
    exe = tmp_path / "misuse"
    run(["cc", CLIENTS / "misuse.c", "-o", exe, *flags.stdout.split()])
    done, _ = client(exe, "normal")
    assert done.returncode == 0 and done.stdout.startswith("done melissa-sa 0.1.0 ")
    bad = subprocess.run([cli, "client", "build", "--prefix", tmp_path / "q", "--mpicc",
                          tmp_path / "nope"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert f"MPI C compiler '{tmp_path / 'nope'}' not found (--mpicc)" in bad.stderr


# ---------------------------------------------------------------------------
# misuse and failures


@pytest.fixture(scope="module")
def misuse(prefix, tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("misuse") / "misuse"
    run([MPICC, f"-I{prefix}/include", CLIENTS / "misuse.c", "-o", exe, f"-L{prefix}/lib",
         "-lmelissa", f"-Wl,-rpath,{prefix}/lib"])
    return exe


def client(exe: Path, scenario: str, mpi: int = 0, **env) -> tuple[subprocess.CompletedProcess,
                                                                     float]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("MELISSA_", "PMI_", "HYDRA_"))}
    clean.update({k: str(v) for k, v in env.items()})
    cmd = ([MPIEXEC, "-n", str(mpi)] if mpi else []) + [exe, scenario]
    start = time.monotonic()
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=clean,
                          timeout=60)
    return done, time.monotonic() - start


@pytest.mark.parametrize("scenario", ["normal", "send_before_init", "after_finalize",
                                      "too_many_steps", "no_mpi"])
def test_outside_a_study_every_call_does_nothing(misuse, scenario):
    done, _ = client(misuse, scenario)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("done melissa-sa "), done.stdout
    assert done.stderr == ""


def test_required_server_missing(misuse):
    done, _ = client(misuse, "normal", MELISSA_REQUIRE_SERVER=1)
    assert done.returncode == 1
    assert ('melissa: melissa_init("f"): MELISSA_SERVER_ADDRESS is not set' in done.stderr)


@pytest.mark.parametrize("mpi", [0, 2])
def test_unreachable_server_fails_within_the_timeout(misuse, mpi):
    address = f"tcp://127.0.0.1:{free_port()}"
    done, elapsed = client(misuse, "normal", mpi, MELISSA_SERVER_ADDRESS=address,
                           MELISSA_SIMULATION_ID=0, MELISSA_CONNECT_TIMEOUT=1.5)
    assert done.returncode == 1  # MPI_Abort(comm, 1) ends mpiexec and every rank
    assert (f'melissa_init("f"): no answer from the melissa-sa server at {address} within '
            f'1.5 s (MELISSA_CONNECT_TIMEOUT)') in done.stderr
    assert "done" not in done.stdout
    assert elapsed < 15


@pytest.mark.parametrize("var,value,message", [
    ("MELISSA_SIMULATION_ID", "abc", "MELISSA_SIMULATION_ID=abc is not a simulation id"),
    ("MELISSA_SIMULATION_ID", "-1", "MELISSA_SIMULATION_ID=-1 is not a simulation id"),
    ("MELISSA_CONNECT_TIMEOUT", "soon",
     "MELISSA_CONNECT_TIMEOUT=soon is not a positive number of seconds"),
    ("MELISSA_SEND_TIMEOUT", "0", "MELISSA_SEND_TIMEOUT=0 is not a positive number"),
    ("MELISSA_CONNECT_TIMEOUT", "1e7", "MELISSA_CONNECT_TIMEOUT=1e7 is more than 2000000 s"),
    ("MELISSA_SEND_TIMEOUT", "3e6", "MELISSA_SEND_TIMEOUT=3e6 is more than 2000000 s"),
    ("MELISSA_SECRET_FILE", "/nonexistent/secret",
     "MELISSA_SECRET_FILE=/nonexistent/secret: cannot read the study secret"),
    ("MELISSA_SECRET_FILE", "/etc/hostname",
     "MELISSA_SECRET_FILE=/etc/hostname: the study secret "),
])
def test_bad_environment(misuse, var, value, message):
    env = {"MELISSA_SERVER_ADDRESS": "tcp://127.0.0.1:9", "MELISSA_SIMULATION_ID": 0,
           var: value}
    done, _ = client(misuse, "normal", **env)
    assert done.returncode == 1
    assert f'melissa: melissa_init("f"): {message}' in done.stderr


@pytest.mark.parametrize("scenario,message", [
    ("send_before_init", 'melissa_send("f"): call melissa_init for this field first'),
    ("unknown_field", 'melissa_send("g"): unknown field: melissa_init declared "f"'),
    ("after_finalize", 'melissa_send("f"): called after melissa_finalize'),
    ("too_many_steps", 'melissa_send("f"): the study has 2 time steps; this is send number 3'),
    ("init_twice", 'melissa_init("f"): this field is already initialised'),
    ("negative_size", 'melissa_init("f"): num_values must be >= 0, got -1'),
    ("finalize_twice", "melissa_finalize(): called twice"),
    ("trailing_blank", 'melissa_init("f   "): the field name ends with a blank (from '
                       'Fortran, pass trim(name)//char(0))'),
    ("null_comm_second", 'melissa_init("g"): comm is MPI_COMM_NULL'),
    ("mpi_finalize_first", "melissa_finalize(): MPI_Finalize was called first: call "
                           "melissa_finalize before MPI_Finalize"),
])
def test_misuse_names_the_call_and_the_field(misuse, scenario, message):
    server = FakeServer(nb_time_steps=2)
    try:
        done, _ = client(misuse, scenario, MELISSA_SERVER_ADDRESS=server.address,
                         MELISSA_SIMULATION_ID=3)
    finally:
        server.close()
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"melissa: {message}" in done.stderr
    assert "done" not in done.stdout


def test_misuse_on_two_ranks_aborts_the_simulation(misuse):
    """Both ranks send one step too many: MPI_Abort on the simulation's
    communicator, exit status 1, no rank left waiting."""
    server = FakeServer(nb_time_steps=2)
    try:
        done, elapsed = client(misuse, "too_many_steps", 2,
                               MELISSA_SERVER_ADDRESS=server.address, MELISSA_SIMULATION_ID=3)
    finally:
        server.close()
    assert done.returncode == 1
    assert ('melissa: melissa_send("f"): the study has 2 time steps; this is send number 3'
            in done.stderr)
    assert server.hellos == [server.hellos[0]] and server.hellos[0].n_cells == 8
    assert elapsed < 30


def test_ranks_declaring_fields_in_different_orders_are_stopped(misuse):
    """Rank 0 declares "f" then "g", rank 1 "g" then "f": without the check the
    two fields would be swapped silently."""
    server = FakeServer(nb_time_steps=2)
    try:
        done, elapsed = client(misuse, "swapped_fields", 2,
                               MELISSA_SERVER_ADDRESS=server.address, MELISSA_SIMULATION_ID=3)
    finally:
        server.close()
    assert done.returncode == 1
    assert ('melissa: melissa_init("g"): rank 1 declares this field while rank 0 declares '
            '"f": every rank must call melissa_init for the same fields in the same order'
            in done.stderr), done.stderr
    assert server.hellos == [] and elapsed < 30


@pytest.mark.parametrize("mpi", [0, 2])
def test_send_timeout_when_the_server_takes_no_data(misuse, mpi):
    """The welcome names a data endpoint nobody listens on: the send gives up
    after MELISSA_SEND_TIMEOUT with melissa's message (never hangs)."""
    server = FakeServer(nb_time_steps=2, deaf=True)
    try:
        done, elapsed = client(misuse, "normal", mpi, MELISSA_SERVER_ADDRESS=server.address,
                               MELISSA_SIMULATION_ID=3, MELISSA_SEND_TIMEOUT=1.5)
    finally:
        server.close()
    assert done.returncode == 1
    assert ('melissa: melissa_send("f"): the server took no data for 1.5 s '
            '(MELISSA_SEND_TIMEOUT)' in done.stderr), done.stderr
    assert elapsed < 20


@pytest.mark.parametrize("scenario,expected", [("normal", 2), ("no_mpi", 2)])
def test_fake_server_receives_every_step(misuse, scenario, expected):
    server = FakeServer(nb_time_steps=2)
    try:
        done, _ = client(misuse, scenario, MELISSA_SERVER_ADDRESS=server.address,
                         MELISSA_SIMULATION_ID=3)
        deadline = time.monotonic() + 5
        while server.messages < expected and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    assert server.messages == expected
    assert [(h.sim_id, h.field, h.n_cells) for h in server.hellos] == [(3, "f", 4)]


def test_refusal_is_reported_with_its_reason(misuse):
    server = FakeServer(refuse="simulation 3 is not running in this study")
    try:
        done, _ = client(misuse, "normal", MELISSA_SERVER_ADDRESS=server.address,
                         MELISSA_SIMULATION_ID=3)
    finally:
        server.close()
    assert done.returncode == 1
    assert (f'melissa_init("f"): the melissa-sa server at {server.address} refused: '
            f'simulation 3 is not running in this study') in done.stderr
