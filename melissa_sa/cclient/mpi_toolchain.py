"""The solver's MPI for ``melissa-sa client build``: which C compiler wrapper,
the flags it adds, and the MPI library it links (its version string).

The library must use the MPI the solver uses: two MPI libraries in one
process (say MPICH's, where ``MPI_Comm`` is an int, and Open MPI's, where it
is a pointer) crash in ways nobody can explain. So the wrapper is the one
the user names, else the ``mpicc`` a shell or CMake user gets on ``PATH``
outside this Python environment (whose ``bin/`` holds the mpich wheel's);
the wheel's only when there is no other.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: environment variables read when the wrapper does not print its flags
CFLAGS_VAR, LIBS_VAR = "MELISSA_MPI_CFLAGS", "MELISSA_MPI_LIBS"

#: the program that prints the MPI library's version string (also used by the
#: installed CMake package, beside MelissaConfig.cmake)
PROBE_SOURCE = Path(__file__).resolve().parent / "cmake" / "mpi_probe.c"


class BuildError(RuntimeError):
    """The library could not be built; the message says what to do."""


@dataclass
class SolverMPI:
    mpicc: str          #: the compiler wrapper
    why: str            #: how it was chosen, for the build's output
    includes: list[str]  #: include directories a plain C compiler needs
    link: list[str]     #: link items (-L, -l, -Wl,...) a plain linker needs
    library_version: str = ""  #: MPI_Get_library_version of the MPI it links

    @property
    def family(self) -> str:
        return mpi_family(self.library_version)


def mpi_family(version: str) -> str:
    """The ABI an MPI library version string stands for: MPICH and its
    derivatives (Intel MPI, Cray MPICH, MVAPICH) share one; Open MPI's changes
    with its major version; anything else is its first line. The same rule is
    in cmake/MelissaConfig.cmake.in and src/mpi_check.c."""
    match = re.search(r"Open MPI v(\d+)", version)
    if match:
        return f"Open MPI {match.group(1)}"
    if re.search(r"MPICH|Intel\(R\) MPI|MVAPICH", version):
        return "MPICH"
    return version.strip().split("\n", 1)[0][:120]


def first_line(version: str) -> str:
    return " ".join(version.strip().split("\n", 1)[0].split())


def run(cmd: list[str], what: str, env=None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    except FileNotFoundError:
        raise BuildError(f"{what}: {cmd[0]} not found") from None
    if done.returncode != 0:
        raise BuildError(f"{what} failed ({shlex.join(cmd)}):\n{done.stdout}{done.stderr}")
    return done.stdout


def environment_bin() -> Path:
    """This Python environment's ``bin/`` (the mpich wheel's ``mpicc`` is there)."""
    return Path(sys.executable).parent


def choose_mpicc(requested: str | None, path: str | None = None) -> tuple[str, str]:
    """(wrapper, why): the one named, else ``mpicc`` on ``PATH`` outside this
    environment, else the mpich wheel's."""
    if requested:
        found = shutil.which(requested)
        return (os.path.abspath(found) if found else requested), "named with --mpicc"
    own = {environment_bin().resolve(), (Path(sys.prefix) / "bin").resolve()}
    dirs = [d for d in (path if path is not None else os.environ.get("PATH", "")).split(
        os.pathsep) if d and Path(d).resolve() not in own]
    found = shutil.which("mpicc", path=os.pathsep.join(dirs))
    if found:
        return found, "the mpicc on PATH outside this Python environment"
    wheel = environment_bin() / "mpicc"
    if wheel.exists():
        return str(wheel), ("no mpicc on PATH outside this Python environment: the mpich "
                            "wheel's; a solver built with another MPI needs --mpicc")
    raise BuildError("no MPI C compiler wrapper: name the solver's with --mpicc (mpicc, "
                     "mpicc.openmpi, Cray's cc, ...) or load its MPI module")


def parse_flags(words: list[str]) -> tuple[list[str], list[str]]:
    """(include dirs, link items) among a compiler's words."""
    includes, link = [], []
    i = 0
    while i < len(words):
        tok = words[i]
        if tok.startswith("-I"):
            includes.append(tok[2:] or words[i + 1])
            i += 1 if tok[2:] else 2
            continue
        if tok == "-Wl,-rpath" and i + 1 < len(words) and words[i + 1].startswith("-Wl,"):
            link.append("-Wl,-rpath," + words[i + 1][4:])
            i += 2
            continue
        if tok.startswith(("-L", "-l", "-Wl,", "-pthread")):
            link.append(tok)
        i += 1
    return includes, link


def wrapper_flags(mpicc: str) -> list[str] | None:
    """The words the wrapper adds (``-show``, ``--showme``, Cray's
    ``--cray-print-opts=all``), or None when it tells none."""
    for flags in (["-show"], ["--showme"], ["--cray-print-opts=all"]):
        try:
            done = subprocess.run([mpicc, *flags], capture_output=True, text=True,
                                  timeout=60)
        except FileNotFoundError:
            raise BuildError(f"MPI C compiler {mpicc!r} not found (--mpicc)") from None
        if done.returncode == 0 and done.stdout.strip():
            words = shlex.split(done.stdout)
            return words[1:] if flags[0] != "--cray-print-opts=all" else words
    return None


def mpi_flags(mpicc: str, cflags: str | None = None,
              libs: str | None = None) -> tuple[list[str], list[str]]:
    """(include dirs, link items) of the solver's MPI: from ``cflags``/``libs``
    (``--mpi-cflags``/``--mpi-libs`` or MELISSA_MPI_CFLAGS/MELISSA_MPI_LIBS),
    else from the wrapper, else from Cray's CRAY_MPICH_DIR."""
    cflags = cflags if cflags is not None else os.environ.get(CFLAGS_VAR)
    libs = libs if libs is not None else os.environ.get(LIBS_VAR)
    if cflags is not None or libs is not None:
        includes, _ = parse_flags(shlex.split(cflags or ""))
        _, link = parse_flags(shlex.split(libs or ""))
        if shutil.which(mpicc) is None:
            raise BuildError(f"MPI C compiler {mpicc!r} not found (--mpicc)")
        return includes, link
    words = wrapper_flags(mpicc)
    if words is not None:
        return parse_flags(words)
    cray = os.environ.get("CRAY_MPICH_DIR")
    if cray:
        return [f"{cray}/include"], [f"-L{cray}/lib", f"-Wl,-rpath,{cray}/lib", "-lmpi"]
    raise BuildError(f"{mpicc} prints no flags (-show, --showme, --cray-print-opts): give "
                     f"the MPI flags with --mpi-cflags/--mpi-libs (or {CFLAGS_VAR}/"
                     f"{LIBS_VAR}), e.g. --mpi-cflags=-I$MPI_DIR/include "
                     f"--mpi-libs='-L$MPI_DIR/lib -lmpi'")


def library_version(mpicc: str, includes: list[str], link: list[str]) -> str:
    """MPI_Get_library_version of the MPI a program built with ``mpicc`` runs."""
    with tempfile.TemporaryDirectory(prefix="melissa-mpi-probe-") as tmp:
        src, exe = Path(tmp) / "probe.c", Path(tmp) / "probe"
        shutil.copyfile(PROBE_SOURCE, src)
        run([mpicc, *[f"-I{d}" for d in includes], str(src), "-o", str(exe), *link],
            f"compiling an MPI probe with {mpicc}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_COMM"))}
        version = run([str(exe)], f"running an MPI probe built with {mpicc}", env=env)
    if not version.strip():
        raise BuildError(f"the MPI of {mpicc} reports no library version")
    return version.strip()


def solver_mpi(requested: str | None, cflags: str | None = None,
               libs: str | None = None) -> SolverMPI:
    mpicc, why = choose_mpicc(requested)
    includes, link = mpi_flags(mpicc, cflags, libs)
    mpi = SolverMPI(mpicc, why, includes, link)
    mpi.library_version = library_version(mpicc, includes, link)
    return mpi


def c_string(text: str) -> str:
    """``text`` as a C string literal."""
    out = []
    for ch in text.encode():
        if ch in (0x22, 0x5C):
            out.append("\\" + chr(ch))
        elif 0x20 <= ch < 0x7F:
            out.append(chr(ch))
        else:
            out.append(f"\\{ch:03o}")
    return '"' + "".join(out) + '"'
