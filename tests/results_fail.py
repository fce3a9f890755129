"""Making a server's results write fail as on a full disk, for a test.

With ``TEST_RESULTS_FAIL=<n>`` in a process's environment, the first ``n``
reservations of ``results.h5`` in that process (rank 0's, before HDF5 creates
the file) raise ``OSError(ENOSPC)``, as a file system without room does:
:func:`install` wraps :func:`melissa_sa.results.writer.reserve_room`. In a
server started by a launcher the wrapper is installed at interpreter start by
``tests/site/sitecustomize.py``: give the process the environment :func:`env`
returns.
"""

from __future__ import annotations

import errno
import os

from checkpoint_pause import SITE

FAIL_ENV = "TEST_RESULTS_FAIL"


def install() -> None:
    from melissa_sa.results import writer

    real = writer.reserve_room
    left = [int(os.environ.get(FAIL_ENV, "0") or 0)]

    def reserve_room(path, nbytes: int) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, nbytes)

    writer.reserve_room = reserve_room


def env(failures: int) -> dict[str, str]:
    """Environment entries that make the first ``failures`` results writes fail."""
    path = os.environ.get("PYTHONPATH")
    return {FAIL_ENV: str(failures),
            "PYTHONPATH": str(SITE) if not path else f"{SITE}{os.pathsep}{path}"}
