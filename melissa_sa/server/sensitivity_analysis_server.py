"""The sensitivity-analysis server: every rank folds its slice of every field.

Each rank owns a contiguous slice of every field (see
:func:`~melissa_sa.server.intake.partition`) and keeps, per time step,
the statistics the config asks for over that slice; its
:class:`~melissa_sa.server.rank_worker.RankWorker` validates, assembles and
folds the data messages, and rank 0's
:class:`~melissa_sa.server.coordinator.Coordinator` runs the study.
:class:`SensitivityAnalysisServer` is the loop around them: start, listen,
fold until rank 0 says stop, then write the results (on success) or a
checkpoint.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time

import numpy as np

from melissa_sa import exit_codes
from melissa_sa.exit_codes import StopReason
from melissa_sa.mpi_wait import bcast_json
from melissa_sa.server.base_server import BaseServer
from melissa_sa.server.data_messages import ServerStatus, SimulationData
from melissa_sa.server.field_stats import LocalField, StepStatistics, collect_results
from melissa_sa.server.results_io import study_results_bytes, write_study_results
from melissa_sa.server.results_wait import LauncherHeartbeat, write_results_waiting

log = logging.getLogger("melissa_sa.server")

__all__ = ["SensitivityAnalysisServer", "warm_up_study"]


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB (VmHWM)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def warm_up_study(config) -> float:
    """Run the kernels the study's statistics use once, as a server rank
    does (a group folded through every statistic the config asks for, past
    the intervals' warm-up, then one step's results), on a two-cell slice of
    float64 samples; return the seconds. A float32 field loads its own
    kernels from the cache on its first message."""
    t0 = time.perf_counter()
    step = StepStatistics(2, config)
    size = config.layout.size
    rows = np.linspace(0.0, 1.0, 2 * size).reshape(size, 2)   # float64
    for k in range(12):  # past the intervals' warm-up (aggregated: 10 groups)
        step.fold_group(rows + k * rows[::-1], k)
    results = collect_results(LocalField("warm-up", 0, 0, 2, [step]), config)
    for value in results.values():
        if callable(value):
            value(0)
    return time.perf_counter() - t0


class SensitivityAnalysisServer(BaseServer):
    """The melissa-sa server flavour for sensitivity analysis.

    Run it with ``mpiexec -n P python -m melissa_sa.server.main study.json``
    (the launcher does). A user may subclass it in their own file and name it
    in the config (``server_filename``, ``server_class``) to override hooks
    such as :meth:`setup_environment`, :meth:`on_group_finished` or
    :meth:`convergence_rule`.
    """

    def __init__(self, config, comm=None, checkpoint_file: str = "checkpoint"):
        super().__init__(config, comm, checkpoint_file)
        self.ci_method = config.sa_config.confidence_method
        #: (phase, this process's CPU seconds and peak resident MB when it
        #: ended) for the phases of :meth:`start` reached: ``kernels`` (set-up,
        #: restore, the kernels loaded), ``study`` (listening and folding),
        #: ``end`` (results or checkpoint, connections closed)
        self.cpu_phases: list[tuple[str, float, float]] = []

    def convergence_rule(self):
        """The :class:`~melissa_sa.convergence.ConvergenceRule` of the study, or None.

        ``sa_config.convergence`` by default; a subclass (e.g. a test) may return
        another rule, such as one below the config's ``min_groups`` floor.
        """
        return self.config.sa_config.convergence

    @property
    def slices(self):
        """This rank's part of every declared field, by name (its statistics)."""
        return self.worker.slices

    @property
    def duplicates(self) -> int:
        """Messages this rank dropped as already folded or buffered."""
        return self.worker.counters.duplicates

    def process_simulation_data(self, data: SimulationData) -> None:
        """Fold or buffer one validated message (drops duplicates)."""
        self.worker.fold(data)

    # -- main loop -------------------------------------------------------------------
    def start(self) -> int:
        signal.signal(signal.SIGTERM, self.worker.on_sigterm)
        self.configure_logger()
        if self.ranks.is_root:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self._take_study_lock()
        self.setup_environment()
        restored = self.restore() if self._restart else False
        # load the study's compiled kernels before listening, not on the first
        # message; the launcher compiles them first when Numba's cache is stale,
        # and a server started alone compiles here while ZeroMQ queues the hellos
        warm_up_study(self.config)
        self.cpu_phases = [("kernels", time.process_time(), peak_rss_mb())]
        self.initialize_connections()
        if restored:
            self.worker.report_restored()
        if self.coordinator is not None:
            if restored:
                self.ranks.drain()
            if not self._launcher_address:
                log.info("no launcher: accepting simulations 0..%d", self.nb_clients - 1)
            self.coordinator.begin(resume=restored)
        self._is_receiving = True
        status = self._loop()
        self._is_receiving = False
        self.cpu_phases.append(("study", time.process_time(), peak_rss_mb()))
        status = self._finalize(status)
        self.cpu_phases.append(("end", time.process_time(), peak_rss_mb()))
        return status

    def _take_study_lock(self) -> None:
        """Rank 0 holds an exclusive lock on OUT/server.lock: never two servers."""
        ok = True
        if self.ranks.is_root:
            import fcntl
            path = self.output_dir / "server.lock"
            self._lock_file = open(path, "a+")  # noqa: SIM115 - held for the run
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._lock_file.seek(0)
                holder = self._lock_file.read().strip() or "?"
                log.error("another server (pid %s) holds %s: refusing to run a second "
                          "server on this study", holder, path)
                ok = False
            else:  # the pid is for people: a full disk does not stop the server
                fd = self._lock_file.fileno()
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                except OSError as exc:
                    log.warning("cannot write this server's pid into %s (%s); it holds "
                                "the lock all the same", path, exc.strerror or exc)
        ok = bcast_json(self.comm, ok, "rank 0's study lock")  # once, at start-up
        if not ok:
            raise SystemExit(exit_codes.SERVER_LOCKED)

    #: seconds between the coordinator's clock ticks while data keeps arriving
    #: (run timeouts, the launcher's silence, checkpoints due)
    tick_every = 1.0

    def _loop(self) -> int:
        coordinator, worker = self.coordinator, self.worker
        last_tick = time.monotonic()
        while True:
            worker.check_sigterm()
            item = self.poll_sockets(timeout=0.05)
            if isinstance(item, SimulationData):
                with self.consistency_lock:
                    self.process_simulation_data(item)
                if coordinator is not None:
                    coordinator.data_seen(item.header.sim_id)
                    # a steady stream from some runs must not hide a hung one
                    if time.monotonic() - last_tick >= self.tick_every:
                        coordinator.idle()
                        last_tick = time.monotonic()
                continue
            if item is ServerStatus.STOP:
                if worker.stop_reason is StopReason.FINISHED:
                    return exit_codes.OK
                status = coordinator.exit_status if coordinator is not None else 0
                return status or exit_codes.INTERRUPTED
            if coordinator is not None:
                coordinator.idle()
                last_tick = time.monotonic()

    def _finalize(self, status: int) -> int:
        """Write the results (on success) or a checkpoint, and close everything;
        the exit status (FAILED when the results could not be written)."""
        not_written = ""
        if status == exit_codes.OK:
            not_written = self.write_results()
            status = exit_codes.FAILED if not_written else status
        else:
            self.checkpoint()
        self.worker.close()
        message = not_written
        if self.coordinator is not None:
            log.info("received %.3f GB on rank 0; dropped messages: %s; mean run %.1f s",
                     self.bytes_received / 1e9, dict(self.bad_messages) or "none",
                     self.mtt_simulation_completion)
            message = not_written or self.coordinator.exit_message
        self.close_connection(status, message)
        return status

    # -- results ------------------------------------------------------------------------
    def collect_results(self, name: str) -> dict:
        """This rank's slice of every statistic of field ``name`` (see
        :func:`~melissa_sa.server.field_stats.collect_results`)."""
        return collect_results(self.worker.slices[name], self.config)

    def write_results(self) -> str:
        """Write ``OUT/results.h5``; each rank writes only its own slices. ""
        once written; else why not: the file system refused it for
        ``server_config.results_wait`` s (:mod:`~melissa_sa.server.results_wait`).

        A field no client ever declared (an offline study) is written with one
        cell per rank and no samples, so the file still has its layout.
        """
        self.worker.declare_missing_fields()
        # the results need the accumulators only: the spare group buffers go
        self.worker.release_spare_buffers()
        c = self.coordinator
        comm = self.comm if self.comm_size > 1 else None

        def write() -> None:
            write_study_results(comm=comm, config=self.config, field_sizes=self.field_sizes,
                                slices=self.worker.slices, collect=self.collect_results,
                                counters=self.worker.counters, refused=self.refused_peers,
                                study=None if c is None else c.study,
                                group_parameters=None if c is None else c.parameters)

        socket = self.transport.launcher_socket if c is not None else None
        with LauncherHeartbeat(socket, ping_every=self.config.launcher_config.timer_delay) as hb:
            return write_results_waiting(
                write, comm=comm, rank=self.rank, config=self.config, heartbeat=hb,
                needed=0 if c is None else study_results_bytes(self.config, self.field_sizes,
                                                               c.study),
                checkpoint=self.checkpoint,
                progress=None if c is None else lambda line: c.progress(write_error=line))
