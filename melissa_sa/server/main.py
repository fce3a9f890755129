"""Server entry point: ``mpiexec -n P python -m melissa_sa.server.main study.json``.

Loads the config, checks that the MPI job has ``server_config.server_processes``
ranks, picks the server class (the config's ``server_filename`` /
``server_class`` or :class:`SensitivityAnalysisServer`), runs it on every
rank and exits with its status (:mod:`melissa_sa.exit_codes`).
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
import time
from pathlib import Path

from melissa_sa import exit_codes
from melissa_sa.gc_pause import collector_paused


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


def check_comm_size(size: int, config) -> str | None:
    """Why an MPI job of ``size`` ranks cannot serve ``config``, or None if it can."""
    wanted = config.server_config.server_processes
    if size == wanted:
        return None
    hint = (" Each rank started as a job of its own: under Slurm, give srun the MPI "
            "plugin of this MPI library, e.g. `srun --mpi=pmi2`." if size == 1 else "")
    return (f"melissa-sa server: the MPI communicator has {size} rank"
            f"{'s' if size != 1 else ''} but server_config.server_processes is {wanted}: "
            f"start the server with {wanted} MPI processes.{hint}")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (every thread): the
    clock of the server's own phases too (``cpu_phases``), so that the phases
    printed one after the other never go back."""
    return time.process_time()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m melissa_sa.server.main study.json", file=sys.stderr)
        return exit_codes.USAGE
    # The start-up's imports create about 10^5 objects that live as long as
    # the process (modules, classes, Numba's typing tables): the cyclic
    # collector, run every 700 new objects, made about 390 collections during
    # a rank's start and first draw, three of them over every object, 0.25 s
    # of CPU, and 0.1 s more at exit (5 Dec 2026), finding almost nothing to
    # free (about 450 objects). It is paused until the server is built, and
    # what the start-up built goes to the permanent generation, which later
    # collections do not walk; BaseServer._sampler does the same for SciPy.
    with collector_paused():
        started = start_up(argv[0])
        gc.freeze()
    if isinstance(started, int):
        return started
    server, marks, rank = started
    status = server.start()
    ready = marks[-1][1]
    print(f"melissa-sa server rank {rank}: {cpu_seconds():.2f} s CPU "
          f"({ready:.2f} s of it before the server class started: {phase_split(marks, 0.0)}; "
          f"then {phase_split(getattr(server, 'cpu_phases', []), ready)})",
          file=sys.stderr, flush=True)
    peaks = ", ".join(f"{name} {peak:.0f} MB"
                      for name, _cpu, peak in getattr(server, "cpu_phases", []))
    if peaks:
        print(f"melissa-sa server rank {rank}: peak resident memory "
              f"at the end of each phase: {peaks}", file=sys.stderr, flush=True)
    return status


def start_up(config_path: str):
    """Load the config, MPI, Numba and the server class and build the server:
    ``(server, CPU marks, rank)``, or the exit status if it cannot run."""
    # the third-party imports every rank pays are phases of their own in the
    # CPU split (docs/performance.md: what is left of the fixed cost)
    import numpy  # noqa: F401 - the config and the statistics need it

    marks = [("start and NumPy", cpu_seconds())]
    from melissa_sa.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return exit_codes.USAGE
    marks.append(("config", cpu_seconds()))
    from mpi4py import MPI

    marks.append(("MPI", cpu_seconds()))
    problem = check_comm_size(MPI.COMM_WORLD.Get_size(), config)
    if problem:
        if MPI.COMM_WORLD.Get_rank() == 0:
            print(problem, file=sys.stderr, flush=True)
        return exit_codes.FAILED
    import numba  # the kernels' compiler, loaded by the server's modules anyway

    if MPI.COMM_WORLD.Get_size() > 1 and "NUMBA_NUM_THREADS" not in os.environ:
        numba.set_num_threads(1)
    marks.append(("Numba", cpu_seconds()))
    server_class = load_server_class(config)
    marks.append(("server modules", cpu_seconds()))
    server = server_class(config)
    marks.append(("server set-up", cpu_seconds()))
    return server, marks, MPI.COMM_WORLD.Get_rank()


def phase_split(marks: list[tuple[str, float]], start: float) -> str:
    """``config 0.10 s, MPI 0.05 s``: the CPU seconds of each phase, given
    ``(phase, CPU seconds when it ended)`` from ``start`` on."""
    parts, last = [], start
    for name, cpu, *_ in marks:
        parts.append(f"{name} {cpu - last:.2f} s")
        last = cpu
    return ", ".join(parts) or "-"


if __name__ == "__main__":
    sys.exit(main())
