"""``melissa-sa client build``: compile and install the C/Fortran client library.

    melissa-sa client build --prefix PREFIX [--mpicc CC] [--mpifort FC] [--zmq auto|system|wheel]

* compiles ``libmelissa.so`` (``src/*.c`` of this package) with the MPI C
  compiler wrapper that the simulation uses (default: the ``mpicc`` of the
  mpich wheel, beside this Python);
* links a libzmq: a system one found by ``pkg-config libzmq`` (``--zmq
  auto``, the default, or ``system``), else (or with ``--zmq wheel``) the one
  that pyzmq's wheel ships, copied with its libsodium into ``PREFIX/lib`` so
  that the prefix does not depend on this Python environment;
* installs the headers (``melissa_api.h``, ``melissa_api_no_mpi.h``,
  ``melissa/api.h``, ``melissa/config.h``), the Fortran include files
  (``melissa/api.f90``, ``melissa_api.f90``), the CMake package
  ``PREFIX/lib/cmake/Melissa`` and ``PREFIX/lib/pkgconfig/melissa.pc``;
* with ``--mpifort``, compiles and links a Fortran program that includes
  ``mpif.h`` and ``melissa/api.f90``, to fail now rather than in the user's
  build;
* prints the flags a CMake or Makefile build needs.

The MPI flags (``mpicc -show``) go into the CMake target and the pkg-config
file, so that a project compiled with a plain C compiler finds ``mpi.h``.
"""

from __future__ import annotations

import argparse
import glob
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from melissa_sa import __version__
from melissa_sa.exit_codes import FAILED, OK

HERE = Path(__file__).resolve().parent
#: the Melissa client API whose signatures the library offers
MELISSA_API_VERSION = "0.7.0"
SOURCES = ("melissa.c", "handshake.c")


class BuildError(RuntimeError):
    """The library could not be built; the message says what to do."""


def _run(cmd: list[str], what: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise BuildError(f"{what}: {cmd[0]} not found") from None
    if done.returncode != 0:
        raise BuildError(f"{what} failed ({shlex.join(cmd)}):\n{done.stdout}{done.stderr}")
    return done.stdout


def default_mpicc() -> str:
    return str(Path(sys.executable).parent / "mpicc")


def mpi_flags(mpicc: str) -> tuple[list[str], list[str]]:
    """(include dirs, link items) that the MPI wrapper adds (``-show`` / ``--showme``)."""
    for flag in ("-show", "--showme"):
        try:
            done = subprocess.run([mpicc, flag], capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise BuildError(f"MPI C compiler {mpicc!r} not found (--mpicc)") from None
        if done.returncode == 0 and done.stdout.strip():
            break
    else:
        raise BuildError(f"{mpicc} -show / --showme printed no flags: is it an MPI "
                         f"compiler wrapper? (--mpicc)")
    tokens = shlex.split(done.stdout)[1:]
    includes, link = [], []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("-I"):
            includes.append(tok[2:] or tokens[i + 1])
            i += 1 if tok[2:] else 2
            continue
        if tok == "-Wl,-rpath" and i + 1 < len(tokens) and tokens[i + 1].startswith("-Wl,"):
            link.append("-Wl,-rpath," + tokens[i + 1][4:])
            i += 2
            continue
        if tok.startswith(("-L", "-l", "-Wl,", "-pthread")):
            link.append(tok)
        i += 1
    return includes, link


def wheel_zmq() -> list[Path]:
    """pyzmq's bundled libzmq and the libraries beside it (libsodium)."""
    import zmq

    libs = Path(zmq.__file__).resolve().parent.parent / "pyzmq.libs"
    found = sorted(Path(p) for p in glob.glob(str(libs / "*.so*")))
    if not any(p.name.startswith("libzmq") for p in found):
        raise BuildError(f"no libzmq in {libs} (pyzmq's wheel) and no system libzmq "
                         f"(pkg-config libzmq): install libzmq3-dev or pyzmq's wheel")
    return found


def system_zmq() -> list[str] | None:
    """Link flags of the system libzmq, or None when pkg-config does not know one."""
    try:
        done = subprocess.run(["pkg-config", "--libs", "libzmq"], capture_output=True,
                              text=True, timeout=60)
    except FileNotFoundError:
        return None
    return shlex.split(done.stdout) if done.returncode == 0 else None


def _fill(template: Path, out: Path, values: dict[str, str]) -> None:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def check_fortran(prefix: Path, mpifort: str) -> None:
    """Compile and link a program that includes ``mpif.h`` and ``melissa/api.f90``."""
    source = """\
program melissa_check
  implicit none
  include "mpif.h"
  include "melissa/api.f90"
  integer :: ierr
  double precision :: u(2)
  real :: v(2)
  call MPI_Init(ierr)
  if (ierr < 0) then
    call melissa_init("f"//char(0), 2, MPI_COMM_WORLD)
    call melissa_send("f"//char(0), u)
    call melissa_send_float("f"//char(0), v)
    call melissa_finalize()
  end if
  call MPI_Finalize(ierr)
end program melissa_check
"""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "check.f90"
        src.write_text(source)
        _run([mpifort, "-I", str(prefix / "include"), str(src), "-o", str(Path(tmp) / "a"),
              "-L", str(prefix / "lib"), "-lmelissa", f"-Wl,-rpath,{prefix / 'lib'}"],
             f"Fortran check with {mpifort} (--mpifort)")


def build(prefix: Path, mpicc: str | None = None, mpifort: str | None = None,
          zmq: str = "auto", quiet: bool = False) -> Path:
    """Build and install the library into ``prefix``; return ``prefix/lib/libmelissa.so``."""
    prefix = Path(prefix).resolve()
    mpicc = mpicc or default_mpicc()
    include_dirs, mpi_link = mpi_flags(mpicc)
    lib, inc = prefix / "lib", prefix / "include"
    (inc / "melissa").mkdir(parents=True, exist_ok=True)
    lib.mkdir(parents=True, exist_ok=True)
    major, minor, _ = MELISSA_API_VERSION.split(".")
    values = {"MELISSA_VERSION": MELISSA_API_VERSION, "MELISSA_VERSION_MAJOR": major,
              "MELISSA_VERSION_MINOR": minor, "MELISSA_SA_VERSION": __version__,
              "PREFIX": str(prefix), "MPICC": mpicc, "MPIFORT": mpifort or "",
              "MPI_INCLUDE_DIRS": ";".join(include_dirs), "MPI_LINK": ";".join(mpi_link),
              "MPI_CFLAGS": " ".join(f"-I{d}" for d in include_dirs),
              "MPI_LIBS": " ".join(mpi_link)}
    src_inc = HERE / "include"
    for name in ("melissa_api.h", "melissa_api_no_mpi.h", "melissa_api.f90",
                 "melissa/api.h", "melissa/api.f90"):
        shutil.copyfile(src_inc / name, inc / name)
    _fill(src_inc / "melissa" / "config.h.in", inc / "melissa" / "config.h", values)

    zmq_flags = system_zmq() if zmq in ("auto", "system") else None
    if zmq_flags is None and zmq == "system":
        raise BuildError("--zmq system: pkg-config knows no libzmq (install libzmq3-dev)")
    if zmq_flags is None:
        bundled = wheel_zmq()
        for path in bundled:
            shutil.copyfile(path, lib / path.name)
        zmq_lib = next(p.name for p in bundled if p.name.startswith("libzmq"))
        zmq_flags = [f"-L{lib}", f"-l:{zmq_lib}"]
        zmq_from = f"pyzmq's wheel ({zmq_lib}, copied into {lib})"
    else:
        zmq_from = "the system (pkg-config libzmq)"
    target = lib / "libmelissa.so"
    tmp_target = lib / "libmelissa.so.tmp"
    _run([mpicc, "-O2", "-g", "-fPIC", "-shared", "-std=gnu11", "-Wall",
          f"-I{inc}", f"-I{HERE / 'src'}",
          *[str(HERE / "src" / s) for s in SOURCES],
          "-o", str(tmp_target), "-Wl,-soname,libmelissa.so", "-Wl,-rpath,$ORIGIN",
          *zmq_flags, "-lpthread", "-lm"], f"compiling libmelissa with {mpicc}")
    tmp_target.replace(target)

    cmake_dir = lib / "cmake" / "Melissa"
    _fill(HERE / "cmake" / "MelissaConfig.cmake.in", cmake_dir / "MelissaConfig.cmake", values)
    _fill(HERE / "cmake" / "MelissaConfigVersion.cmake.in",
          cmake_dir / "MelissaConfigVersion.cmake", values)
    _fill(HERE / "cmake" / "melissa.pc.in", lib / "pkgconfig" / "melissa.pc", values)
    if mpifort:
        check_fortran(prefix, mpifort)
    if not quiet:
        print(usage_text(prefix, mpicc, mpifort, zmq_from))
    return target


def usage_text(prefix: Path, mpicc: str, mpifort: str | None, zmq_from: str) -> str:
    fortran = (f"  Fortran:  {mpifort} -I{prefix}/include solver.f90 -L{prefix}/lib "
               f"-lmelissa -Wl,-rpath,{prefix}/lib\n" if mpifort else "")
    return (
        f"libmelissa installed in {prefix} (MPI: {mpicc}; libzmq: {zmq_from})\n"
        f"CMake (find_package(Melissa CONFIG REQUIRED), target melissa):\n"
        f"  cmake -DCMAKE_PREFIX_PATH={prefix} -DCMAKE_C_COMPILER={mpicc} ..\n"
        f"Makefile:\n"
        f"  CFLAGS += -I{prefix}/include\n"
        f"  LDLIBS += -L{prefix}/lib -lmelissa -Wl,-rpath,{prefix}/lib\n"
        f"  (or: PKG_CONFIG_PATH={prefix}/lib/pkgconfig pkg-config --cflags --libs melissa)\n"
        + fortran)


def cmd_client(args) -> int:
    try:
        build(Path(args.prefix), args.mpicc, args.mpifort, args.zmq)
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
                   help="MPI C compiler wrapper of the simulation (default: this "
                        "environment's mpicc, from the mpich wheel)")
    b.add_argument("--mpifort", default=None,
                   help="MPI Fortran compiler wrapper: check the Fortran include with it")
    b.add_argument("--zmq", choices=("auto", "system", "wheel"), default="auto",
                   help="libzmq to link: the system's (pkg-config) if any, else pyzmq's "
                        "(auto); or force one")
    b.set_defaults(func=cmd_client)
