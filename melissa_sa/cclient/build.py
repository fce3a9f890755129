"""``melissa-sa client build``: compile and install the C/Fortran client library.

    melissa-sa client build --prefix PREFIX [--mpicc CC] [--mpi-cflags F --mpi-libs L]
                            [--mpifort FC] [--zmq auto|system|wheel]

* compiles ``libmelissa.so.0`` (``src/*.c`` of this package; SONAME
  ``libmelissa.so.0``, only ``melissa_*`` exported) with the solver's MPI C
  compiler wrapper: the one named with ``--mpicc``, else the ``mpicc`` on
  ``PATH`` outside this Python environment, else the mpich wheel's; a wrapper
  that does not print its flags (Cray's ``cc``) takes them from
  ``--mpi-cflags``/``--mpi-libs`` or MELISSA_MPI_CFLAGS/MELISSA_MPI_LIBS;
* records that MPI's library version string: ``melissa_init`` and the CMake
  package refuse a solver that runs or builds with another MPI;
* links a libzmq: a system one found by ``pkg-config libzmq`` (``--zmq
  auto``, the default, or ``system``; an rpath for each of its directories;
  compiled with its ``zmq.h`` when the compiler finds one), else (or with
  ``--zmq wheel``) the one that pyzmq's wheel ships, copied with its
  libsodium into ``PREFIX/lib`` so that the prefix does not depend on this
  Python environment (compiled with ``src/zmq_min.h``: the wheel has no
  header);
* installs the headers (``melissa_api.h``, ``melissa_api_no_mpi.h``,
  ``melissa/api.h``, ``melissa/config.h``), the Fortran include files
  (``melissa/api.f90``, ``melissa_api.f90``), the CMake package
  ``PREFIX/lib/cmake/Melissa`` and ``PREFIX/lib/pkgconfig/melissa.pc``
  (relocatable);
* with ``--mpifort``, first compiles and links a Fortran program that
  includes ``mpif.h`` and ``melissa/api.f90``: a failure installs nothing;
* builds in a private temporary directory and installs each file by rename;
* prints the MPI it used and the flags a CMake or Makefile build needs.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from melissa_sa import __version__
from melissa_sa.cclient.mpi_toolchain import (
    CFLAGS_VAR,
    LIBS_VAR,
    BuildError,
    SolverMPI,
    c_string,
    first_line,
    run,
    solver_mpi,
)
from melissa_sa.exit_codes import FAILED, OK

HERE = Path(__file__).resolve().parent
#: the Melissa client API whose signatures the library offers
MELISSA_API_VERSION = "0.7.0"
#: the library's ABI: its SONAME is libmelissa.so.<SOVERSION>
SOVERSION = "0"
SONAME = f"libmelissa.so.{SOVERSION}"
SOURCES = ("melissa.c", "errors.c", "session.c", "handshake.c", "mpi_check.c",
           "secret.c")


def with_rpaths(link: list[str]) -> list[str]:
    """``link`` with an rpath for every ``-L`` directory, so that the library
    finds what it links on a node where that module is not loaded."""
    have = {item.split(",", 2)[2] for item in link if item.startswith("-Wl,-rpath,")}
    out = list(link)
    for item in link:
        if item.startswith("-L") and item[2:] not in have:
            out.append(f"-Wl,-rpath,{item[2:]}")
            have.add(item[2:])
    return out


def wheel_zmq() -> list[Path]:
    """pyzmq's bundled libzmq and the libraries beside it (libsodium)."""
    import zmq

    libs = Path(zmq.__file__).resolve().parent.parent / "pyzmq.libs"
    found = sorted(Path(p) for p in glob.glob(str(libs / "*.so*")))
    if not any(p.name.startswith("libzmq") for p in found):
        raise BuildError(f"no libzmq in {libs} (pyzmq's wheel) and no system libzmq "
                         f"(pkg-config libzmq): install libzmq3-dev or pyzmq's wheel")
    return found


def system_zmq() -> tuple[list[str], list[str]] | None:
    """(compile flags, link flags) of the system libzmq, or None when
    pkg-config does not know one. Its zmq.h, when there is one, is used."""
    try:
        done = subprocess.run(["pkg-config", "--cflags", "--libs", "libzmq"],
                              capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return None
    if done.returncode != 0:
        return None
    words = shlex.split(done.stdout)
    return ([w for w in words if w.startswith(("-I", "-D"))],
            [w for w in words if not w.startswith(("-I", "-D"))])


def _fill(template: Path, out: Path, values: dict[str, str]) -> None:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def check_fortran(stage: Path, mpifort: str) -> None:
    """Compile and link a program that includes ``mpif.h`` and ``melissa/api.f90``
    against the staged library (before anything is installed)."""
    source = """\
program melissa_check
  use iso_c_binding, only: c_ptr
  implicit none
  include "mpif.h"
  include "melissa/api.f90"
  integer :: ierr
  double precision :: u(2)
  real :: v(2)
  type(c_ptr) :: version
  call MPI_Init(ierr)
  if (ierr < 0) then
    call melissa_init("f"//char(0), 2, MPI_COMM_WORLD)
    call melissa_send("f"//char(0), u)
    call melissa_send_float("f"//char(0), v)
    call melissa_init_no_mpi("g"//char(0), 2)
    call melissa_send_no_mpi("g"//char(0), u)
    version = melissa_version()
    call melissa_finalize()
  end if
  call MPI_Finalize(ierr)
end program melissa_check
"""
    with tempfile.TemporaryDirectory(prefix="melissa-fortran-check-") as tmp:
        src = Path(tmp) / "check.f90"
        src.write_text(source)
        run([mpifort, "-I", str(stage / "include"), str(src), "-o", str(Path(tmp) / "a"),
             "-L", str(stage / "lib"), "-lmelissa", f"-Wl,-rpath,{stage / 'lib'}"],
            f"Fortran check with {mpifort} (--mpifort)")


#: compile flag: libmelissa declares the libzmq functions it uses itself
#: (src/zmq_min.h) instead of including zmq.h
ZMQ_STAND_IN = "-DMSA_ZMQ_STAND_IN"


#: preprocessed, prints whether zmq.h is on the include path, or nothing where
#: the compiler lacks ``__has_include`` (GCC < 5)
HAS_INCLUDE_PROBE = """#if defined(__has_include)
#if __has_include(<zmq.h>)
msa_zmq_h_found
#else
msa_zmq_h_missing
#endif
#endif
"""


def finds_zmq_h(mpicc: str, cflags: list[str]) -> bool:
    """Whether ``mpicc`` with ``cflags`` finds a ``zmq.h``: asked with
    ``__has_include`` (its content is not read); a compiler without it (GCC < 5,
    or one that rejects the probe) preprocesses ``#include <zmq.h>`` instead,
    where a failure that says zmq.h is missing means not found."""
    done = preprocess(mpicc, cflags, HAS_INCLUDE_PROBE)
    if done.returncode == 0 and "msa_zmq_h_" in done.stdout:
        return "msa_zmq_h_found" in done.stdout
    done = preprocess(mpicc, cflags, "#include <zmq.h>\n")
    if done.returncode == 0:
        return True
    missing = ("No such file", "not found", "cannot open", "cannot find")
    if any("zmq.h" in line and any(m in line for m in missing)
           for line in done.stderr.splitlines()):
        return False
    raise BuildError(f"{mpicc} -E failed looking for zmq.h: {done.stderr.strip()}")


def preprocess(mpicc: str, cflags: list[str], source: str) -> subprocess.CompletedProcess:
    """``mpicc -E`` of a C ``source`` on stdin."""
    return subprocess.run([mpicc, *cflags, "-E", "-x", "c", "-"], input=source,
                          capture_output=True, text=True, timeout=120)


def link_zmq(zmq: str, stage_lib: Path, mpicc: str) -> tuple[list[str], list[str], str]:
    """(compile flags, link items, where from) of the libzmq to link; pyzmq's
    is staged. A system libzmq compiles with its zmq.h when there is one;
    pyzmq's, which ships none, with libmelissa's declarations (even where some
    zmq.h of another libzmq is on the include path)."""
    flags = system_zmq() if zmq in ("auto", "system") else None
    if flags is None and zmq == "system":
        raise BuildError("--zmq system: pkg-config knows no libzmq (install libzmq3-dev)")
    if flags is not None:
        if finds_zmq_h(mpicc, flags[0]):
            return flags[0], with_rpaths(flags[1]), "the system (pkg-config libzmq), its zmq.h"
        return ([*flags[0], ZMQ_STAND_IN], with_rpaths(flags[1]),
                "the system (pkg-config libzmq), no zmq.h: libmelissa's declarations")
    bundled = wheel_zmq()
    for path in bundled:
        shutil.copyfile(path, stage_lib / path.name)
    zmq_lib = next(p.name for p in bundled if p.name.startswith("libzmq"))
    return ([ZMQ_STAND_IN], [f"-L{stage_lib}", f"-l:{zmq_lib}"],
            f"pyzmq's wheel ({zmq_lib}, copied), libmelissa's declarations (no zmq.h)")


def stage_files(stage: Path, mpi: SolverMPI, mpifort: str | None) -> dict[str, str]:
    """Headers and the generated MPI record into ``stage``; the template values."""
    major, minor, _ = MELISSA_API_VERSION.split(".")
    values = {"MELISSA_VERSION": MELISSA_API_VERSION, "MELISSA_VERSION_MAJOR": major,
              "MELISSA_VERSION_MINOR": minor, "MELISSA_SA_VERSION": __version__,
              "MPICC": mpi.mpicc, "MPIFORT": mpifort or "", "SONAME": SONAME,
              "MPI_INCLUDE_DIRS": ";".join(mpi.includes),
              "MPI_LINK": ";".join(with_rpaths(mpi.link)),
              "MPI_CFLAGS": " ".join(f"-I{d}" for d in mpi.includes),
              "MPI_LIBS": " ".join(with_rpaths(mpi.link)),
              "MPI_LIBRARY_VERSION": mpi.library_version.replace("]==]", "] ==]"),
              "MPI_FAMILY": mpi.family, "MPI_FIRST_LINE": first_line(mpi.library_version)}
    inc, src_inc = stage / "include", HERE / "include"
    (inc / "melissa").mkdir(parents=True)
    (stage / "lib").mkdir()
    for name in ("melissa_api.h", "melissa_api_no_mpi.h", "melissa_api.f90",
                 "melissa/api.h", "melissa/api.f90"):
        shutil.copyfile(src_inc / name, inc / name)
    _fill(src_inc / "melissa" / "config.h.in", inc / "melissa" / "config.h", values)
    (stage / "mpi_recorded.h").write_text(
        "/* generated by melissa-sa client build: the MPI this library is built for */\n"
        f"#define MSA_RECORDED_MPI {c_string(mpi.library_version)}\n"
        f"#define MSA_RECORDED_MPICC {c_string(mpi.mpicc)}\n")
    return values


def compile_library(stage: Path, mpi: SolverMPI, zmq_cflags: list[str],
                    zmq_link: list[str]) -> None:
    lib = stage / "lib"
    run([mpi.mpicc, "-O2", "-g", "-fPIC", "-shared", "-std=gnu11", "-Wall",
         *[f"-I{d}" for d in mpi.includes], f"-I{stage / 'include'}", f"-I{stage}",
         f"-I{HERE / 'src'}", *zmq_cflags, *[str(HERE / "src" / s) for s in SOURCES],
         "-o", str(lib / SONAME), f"-Wl,-soname,{SONAME}", "-Wl,--no-undefined",
         f"-Wl,--version-script={HERE / 'src' / 'libmelissa.map'}", "-Wl,-rpath,$ORIGIN",
         *zmq_link, *with_rpaths(mpi.link), "-lpthread", "-lm"],
        f"compiling libmelissa with {mpi.mpicc}")
    (lib / "libmelissa.so").symlink_to(SONAME)


def install_tree(stage: Path, prefix: Path) -> None:
    """Copy every staged file into ``prefix`` under a unique temporary name
    first, then rename it: a concurrent build into the same prefix never sees
    a half-written file. Installs into one prefix take turns (an ``flock`` on
    ``prefix/.melissa-install.lock``), so the prefix ends with one build's
    files, never a mix of two."""
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".melissa-install.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _install_files(stage, prefix)


def _install_files(stage: Path, prefix: Path) -> None:
    for path in sorted(stage.rglob("*")):
        rel = path.relative_to(stage)
        if path.is_dir() or rel.name == "mpi_recorded.h":
            continue
        dest = prefix / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        os.close(fd)
        os.unlink(tmp_name)
        if path.is_symlink():
            os.symlink(os.readlink(path), tmp_name)
        else:
            shutil.copy2(path, tmp_name)
        os.replace(tmp_name, dest)


def build(prefix: Path, mpicc: str | None = None, mpifort: str | None = None,
          zmq: str = "auto", quiet: bool = False, mpi_cflags: str | None = None,
          mpi_libs: str | None = None) -> Path:
    """Build, check, then install the library into ``prefix``; return the path
    of ``libmelissa.so``."""
    prefix = Path(prefix).resolve()
    mpi = solver_mpi(mpicc, mpi_cflags, mpi_libs)
    prefix.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="melissa-build-") as tmp:
        stage = Path(tmp)
        values = stage_files(stage, mpi, mpifort)
        zmq_cflags, zmq_link, zmq_from = link_zmq(zmq, stage / "lib", mpi.mpicc)
        compile_library(stage, mpi, zmq_cflags, zmq_link)
        cmake_dir = stage / "lib" / "cmake" / "Melissa"
        _fill(HERE / "cmake" / "MelissaConfig.cmake.in", cmake_dir / "MelissaConfig.cmake",
              values)
        _fill(HERE / "cmake" / "MelissaConfigVersion.cmake.in",
              cmake_dir / "MelissaConfigVersion.cmake", values)
        shutil.copyfile(HERE / "cmake" / "mpi_probe.c", cmake_dir / "mpi_probe.c")
        _fill(HERE / "cmake" / "melissa.pc.in", stage / "lib" / "pkgconfig" / "melissa.pc",
              values)
        if mpifort:
            check_fortran(stage, mpifort)
        install_tree(stage, prefix)
    if not quiet:
        print(usage_text(prefix, mpi, mpifort, zmq_from))
    return prefix / "lib" / "libmelissa.so"


def usage_text(prefix: Path, mpi: SolverMPI, mpifort: str | None, zmq_from: str) -> str:
    fortran = (f"  Fortran:  {mpifort} -I{prefix}/include solver.f90 -L{prefix}/lib "
               f"-lmelissa -Wl,-rpath,{prefix}/lib\n" if mpifort else "")
    return (
        f"libmelissa installed in {prefix}\n"
        f"  MPI: {mpi.mpicc} ({mpi.why})\n"
        f"  MPI library: {first_line(mpi.library_version)} ({mpi.family} ABI): build and "
        f"run the solver with this MPI\n"
        f"  libzmq: {zmq_from}\n"
        f"CMake (find_package(Melissa CONFIG REQUIRED), target melissa):\n"
        f"  cmake -DCMAKE_PREFIX_PATH={prefix} -DCMAKE_C_COMPILER={mpi.mpicc} ..\n"
        f"Makefile:\n"
        f"  CFLAGS += -I{prefix}/include\n"
        f"  LDLIBS += -L{prefix}/lib -lmelissa -Wl,-rpath,{prefix}/lib\n"
        f"  (or: PKG_CONFIG_PATH={prefix}/lib/pkgconfig pkg-config --cflags --libs melissa)\n"
        + fortran)


def cmd_client(args) -> int:
    try:
        build(Path(args.prefix), args.mpicc, args.mpifort, args.zmq,
              mpi_cflags=args.mpi_cflags, mpi_libs=args.mpi_libs)
    except BuildError as exc:
        print(f"melissa-sa client build: {exc}", file=sys.stderr)
        return FAILED
    return OK


def add_client_parser(sub) -> None:
    """Register ``melissa-sa client build`` on the CLI's subparsers."""
    client = sub.add_parser("client", help="build the C/Fortran client library",
                            description="The C, C++ and Fortran client library (Melissa's "
                                        "API): see docs/client.md.")
    actions = client.add_subparsers(dest="client_command", metavar="ACTION")
    actions.required = True
    b = actions.add_parser("build", help="compile and install libmelissa into a prefix",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--prefix", required=True, help="install prefix (include/, lib/)")
    b.add_argument("--mpicc", default=None,
                   help="MPI C compiler wrapper of the simulation (default: the mpicc on "
                        "PATH outside this Python environment, else the mpich wheel's)")
    for option, kind, variable in (("--mpi-cflags", "compile", CFLAGS_VAR),
                                   ("--mpi-libs", "link", LIBS_VAR)):
        b.add_argument(option, default=None,
                       help=f"MPI {kind} flags, for a wrapper that does not print them "
                            f"(default: ${variable}, else the wrapper's -show)")
    b.add_argument("--mpifort", default=None,
                   help="MPI Fortran compiler wrapper: check the Fortran include with it "
                        "before installing")
    b.add_argument("--zmq", choices=("auto", "system", "wheel"), default="auto",
                   help="libzmq to link: the system's (pkg-config) if any, else pyzmq's "
                        "(auto); or force one")
    b.set_defaults(func=cmd_client)
