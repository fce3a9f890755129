"""How `melissa-sa client build` packages libmelissa (melissa_sa/cclient/build.py):

* a libzmq found by pkg-config outside the default library path is found at
  run time without LD_LIBRARY_PATH (an rpath for each of its directories);
* a versioned SONAME and only Melissa's API exported;
* a relocatable melissa.pc (the prefix moved elsewhere still builds clients);
* the Fortran check runs before anything is installed.

Tests skip with a message naming the missing tool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cclient_util import MPICC, FakeServer, missing, run

from melissa_sa.cclient import BuildError, build
from melissa_sa.cclient.build import wheel_zmq

MISUSE = Path(__file__).parent / "clients" / "misuse.c"

pytestmark = pytest.mark.skipif(
    bool(missing("cc", "pkg-config", "readelf")) or not Path(MPICC).exists(),
    reason=f"needs {', '.join(missing('cc', 'pkg-config', 'readelf') or [MPICC])}")


def run_in_study(exe: Path) -> subprocess.CompletedProcess:
    """``exe normal`` against a fake server, with no LD_LIBRARY_PATH."""
    server = FakeServer(nb_time_steps=2)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MELISSA_", "PMI_", "LD_LIBRARY_PATH"))}
    env.update(MELISSA_SERVER_ADDRESS=server.address, MELISSA_SIMULATION_ID="3")
    try:
        return subprocess.run([str(exe), "normal"], capture_output=True, text=True, env=env,
                              timeout=60)
    finally:
        server.close()


def test_a_libzmq_from_a_module_is_found_without_ld_library_path(tmp_path, monkeypatch):
    """libzmq in a directory of its own, known only to pkg-config (as a module
    or spack puts it): the installed library carries an rpath to it."""
    module = tmp_path / "zmq-module" / "lib"
    module.mkdir(parents=True)
    for path in wheel_zmq():
        shutil.copyfile(path, module / path.name)
    zmq_file = next(p.name for p in module.iterdir() if p.name.startswith("libzmq"))
    (module / "libzmq.so").symlink_to(zmq_file)
    (module / "pkgconfig").mkdir()
    (module / "pkgconfig" / "libzmq.pc").write_text(
        f"libdir={module}\nName: libzmq\nDescription: ZeroMQ\nVersion: 4.3.5\n"
        "Libs: -L${libdir} -lzmq\nCflags:\n")
    monkeypatch.setenv("PKG_CONFIG_PATH", str(module / "pkgconfig"))
    prefix = tmp_path / "prefix"
    build(prefix, MPICC, zmq="system", quiet=True)
    assert not list((prefix / "lib").glob("libzmq*")), "pkg-config's libzmq is not copied"
    runpath = run(["readelf", "-d", prefix / "lib/libmelissa.so.0"]).stdout
    assert str(module) in runpath, runpath
    exe = tmp_path / "client"
    run([MPICC, f"-I{prefix}/include", MISUSE, "-o", exe, f"-L{prefix}/lib", "-lmelissa",
         f"-Wl,-rpath,{prefix}/lib"])
    done = run_in_study(exe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("done melissa-sa ")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("pkg") / "prefix"
    build(prefix, MPICC, zmq="wheel", quiet=True)
    return prefix


def test_versioned_soname_and_only_the_api_exported(installed, tmp_path):
    lib = installed / "lib"
    assert os.readlink(lib / "libmelissa.so") == "libmelissa.so.0"
    assert "Library soname: [libmelissa.so.0]" in run(["readelf", "-d",
                                                        lib / "libmelissa.so.0"]).stdout
    symbols = run(["nm", "-D", "--defined-only", lib / "libmelissa.so.0"]).stdout.split("\n")
    names = sorted({line.split()[-1].split("@")[0] for line in symbols
                    if line.strip() and line.split()[1] in "TDB"})
    assert names == ["melissa_finalize", "melissa_init", "melissa_init_f",
                     "melissa_init_no_mpi", "melissa_send", "melissa_send_float",
                     "melissa_send_no_mpi", "melissa_version"], names
    exe = tmp_path / "client"
    run([MPICC, f"-I{installed}/include", MISUSE, "-o", exe, f"-L{lib}", "-lmelissa",
         f"-Wl,-rpath,{lib}"])
    assert "Shared library: [libmelissa.so.0]" in run(["readelf", "-d", exe]).stdout


def test_the_pkg_config_file_is_relocatable(tmp_path):
    """The prefix moved after the build: pkg-config's flags follow it."""
    first = tmp_path / "first"
    build(first, MPICC, zmq="wheel", quiet=True)
    moved = tmp_path / "moved"
    shutil.move(str(first), str(moved))
    env = dict(os.environ, PKG_CONFIG_PATH=str(moved / "lib/pkgconfig"))
    flags = run(["pkg-config", "--cflags", "--libs", "melissa"], env=env).stdout.split()
    assert not any(str(first) in f for f in flags), flags
    exe = tmp_path / "client"
    run(["cc", MISUSE, "-o", exe, *flags])
    done = run_in_study(exe)
    assert done.returncode == 0, done.stderr


def test_a_failing_fortran_check_installs_nothing(tmp_path):
    prefix = tmp_path / "prefix"
    with pytest.raises(BuildError, match="Fortran check with false"):
        build(prefix, MPICC, "false", zmq="wheel", quiet=True)
    assert not (prefix / "lib").exists() and not (prefix / "include").exists()


def test_the_zmq_h_of_a_system_libzmq_is_used(tmp_path, monkeypatch):
    """pkg-config's libzmq comes with its header: the library compiles with it
    (a stand-in zmq.h that stops the compiler shows it is read)."""
    include = tmp_path / "zmq-module" / "include"
    include.mkdir(parents=True)
    (include / "zmq.h").write_text("#error this zmq.h is read\n")
    (tmp_path / "libzmq.pc").write_text(
        f"includedir={include}\nName: libzmq\nDescription: ZeroMQ\nVersion: 4.3.5\n"
        "Libs: -lzmq\nCflags: -I${includedir}\n")
    monkeypatch.setenv("PKG_CONFIG_PATH", str(tmp_path))
    with pytest.raises(BuildError, match="this zmq.h is read"):
        build(tmp_path / "prefix", MPICC, zmq="system", quiet=True)


@pytest.mark.parametrize("version", [(3, 2, 5), (5, 0, 0)])
def test_a_libzmq_of_another_major_version_is_refused_at_start(installed, tmp_path, version):
    """A libzmq 3 (or a future 5) found at run time (another module loaded):
    melissa's message, before any ZeroMQ call."""
    fake = tmp_path / "old_zmq.c"
    major, minor, patch = version
    fake.write_text(f"void zmq_version(int *a, int *b, int *c) {{ *a = {major}; *b = {minor}; "
                    f"*c = {patch}; }}\n")
    run(["cc", "-shared", "-fPIC", fake, "-o", tmp_path / "old_zmq.so"])
    exe = tmp_path / "client"
    run([MPICC, f"-I{installed}/include", MISUSE, "-o", exe, f"-L{installed}/lib",
         "-lmelissa", f"-Wl,-rpath,{installed}/lib"])
    server = FakeServer(nb_time_steps=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MELISSA_", "PMI_"))}
    env.update(MELISSA_SERVER_ADDRESS=server.address, MELISSA_SIMULATION_ID="3",
               LD_PRELOAD=str(tmp_path / "old_zmq.so"))
    try:
        done = subprocess.run([str(exe), "normal"], capture_output=True, text=True, env=env,
                              timeout=60)
    finally:
        server.close()
    assert done.returncode == 1
    assert (f'melissa: melissa_init("f"): libzmq {major}.{minor}.{patch} is loaded; libmelissa '
            'needs libzmq 4.0 or a later 4.x (the ABI of libzmq.so.5)' in done.stderr), done.stderr
    assert server.hellos == []


def test_two_builds_into_one_prefix_at_once(tmp_path):
    """Each build has its own temporary directory and installs by rename: two
    at once into one prefix both succeed and leave a working library."""
    from concurrent.futures import ThreadPoolExecutor

    prefix = tmp_path / "prefix"
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(build, prefix, MPICC, zmq="wheel", quiet=True) for _ in range(2)]
        for job in jobs:
            job.result()
    assert not [p.name for p in (prefix / "lib").iterdir() if p.name.startswith(".")]
    exe = tmp_path / "client"
    run([MPICC, f"-I{prefix}/include", MISUSE, "-o", exe, f"-L{prefix}/lib", "-lmelissa",
         f"-Wl,-rpath,{prefix}/lib"])
    done = run_in_study(exe)
    assert done.returncode == 0, done.stderr
