"""The C, C++ and Fortran client library (Melissa's API) and its build.

The sources (``src/``), headers and Fortran include files (``include/``) and
the CMake / pkg-config templates (``cmake/``) ship inside the package;
:func:`build` (``melissa-sa client build --prefix P``) compiles and installs
them. See ``docs/client.md``.
"""

from melissa_sa.cclient.build import build
from melissa_sa.cclient.mpi_toolchain import BuildError

__all__ = ["build", "BuildError"]
