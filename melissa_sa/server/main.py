"""Server entry point: ``mpiexec -n P python -m melissa_sa.server.main study.json``.

Loads the config, picks the server class (the config's ``server_filename`` /
``server_class`` or :class:`SensitivityAnalysisServer`), runs it on every
rank and exits with its status.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def load_server_class(config):
    """The user's server class from ``server_filename``, or the default."""
    from melissa_sa.server.sensitivity_analysis_server import SensitivityAnalysisServer

    if not config.server_filename:
        return SensitivityAnalysisServer
    path = Path(config.server_filename)
    spec = importlib.util.spec_from_file_location(f"melissa_user_server_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"server_filename: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = getattr(module, config.server_class, None)
    if cls is None:
        raise SystemExit(f"server_class: {path} defines no {config.server_class!r}")
    if not (isinstance(cls, type) and issubclass(cls, SensitivityAnalysisServer)):
        raise SystemExit(f"server_class: {config.server_class} in {path} is not a "
                         "subclass of melissa_sa.server.SensitivityAnalysisServer")
    return cls


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m melissa_sa.server.main study.json", file=sys.stderr)
        return 2
    from melissa_sa.config import ConfigError, load_config

    try:
        config = load_config(argv[0])
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_size() > 1 and "NUMBA_NUM_THREADS" not in os.environ:
        import numba
        numba.set_num_threads(1)
    server = load_server_class(config)(config)
    return server.start()


if __name__ == "__main__":
    sys.exit(main())
