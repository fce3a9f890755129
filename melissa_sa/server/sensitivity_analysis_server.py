"""The sensitivity-analysis server: folds every field slice into statistics.

Each rank owns a contiguous slice of every field (see
:func:`~melissa_sa.server.base_server.partition`) and keeps, per time step,
the statistics the config asks for over that slice
(:mod:`~melissa_sa.server.field_stats`). Data arrive as (simulation, field,
time step, cell range) messages, straight from the client ranks that hold
those cells.

Group assembly: with Sobol' indices on, a group's time step is folded only
when all its members have sent it over this rank's slice
(:mod:`~melissa_sa.server.assembly`); then the independent rows feed the
moments, extrema, thresholds and quantiles and the whole group feeds the
Martinez accumulators. Without Sobol', a message that covers the rank's
whole slice is folded straight from the received frame, without a copy.

Every (simulation, field, time step, slice) is folded at most once: a
restarted client may resend from the start, and what was already folded or
buffered is dropped and counted as a duplicate. A run folded on every rank
is reported to rank 0's study state (:class:`RunFolded`).

Checkpoints (when one is due, writing, restoring) are
:mod:`~melissa_sa.server.rank_checkpoints`'s.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from melissa_sa import exit_codes
from melissa_sa.mpi_wait import bcast_json
from melissa_sa.server import ranks
from melissa_sa.server.assembly import SPARE_BUFFERS, GroupAssembler, Overlap
from melissa_sa.server.base_server import BaseServer, ServerStatus, SimulationData
from melissa_sa.server.convergence_check import ConvergenceCheck
from melissa_sa.server.field_stats import LocalField, StepStatistics, collect_results
from melissa_sa.server.rank_checkpoints import RankCheckpoints
from melissa_sa.server.study_events import Begin, DataSeen, RunFolded, RunReceived, Tick
from melissa_sa.stats import set_threads
from melissa_sa.stats.sobol import fold_batch_for
from melissa_sa.warmup import warm_up

log = logging.getLogger("melissa_sa.server")

__all__ = ["LocalField", "SensitivityAnalysisServer", "StepStatistics"]


class SensitivityAnalysisServer(RankCheckpoints, BaseServer):
    """The melissa-sa server flavour for sensitivity analysis.

    Run it with ``mpiexec -n P python -m melissa_sa.server.main study.json``
    (the launcher does). A user may subclass it in their own file and name it
    in the config (``server_filename``, ``server_class``) to override hooks
    such as :meth:`setup_environment` or :meth:`on_group_finished`.
    """

    def __init__(self, config, comm=None, checkpoint_file: str = "checkpoint"):
        super().__init__(config, comm, checkpoint_file)
        self.slices: dict[str, LocalField] = {}
        sa = config.sa_config
        # the Sobol' fold gives rows back a batch at a time (stats/sobol_buffer.py)
        self._assembler = GroupAssembler(self.group_size, SPARE_BUFFERS + (
            fold_batch_for(sa.confidence_method, self.layout.second_order, sa.sobol_fold_batch)
            if sa.sobol_indices else 0))
        self.duplicates = 0
        self.ci_method = config.sa_config.confidence_method
        self._runs_at_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._writer = None
        self._restored_from = None
        self._sigterm = self._sigterm_handled = False
        rule = self.convergence_rule()
        self.convergence = None if rule is None else ConvergenceCheck(self, rule)
        if self.convergence is not None:
            self.ranks.handlers.update(self.convergence.handlers())

    def convergence_rule(self):
        """The :class:`~melissa_sa.convergence.ConvergenceRule` of the study, or None.

        ``sa_config.convergence`` by default; a subclass (e.g. a test) may return
        another rule, such as one below the config's ``min_groups`` floor.
        """
        return self.config.sa_config.convergence

    # -- fields -----------------------------------------------------------------
    def on_field_declared(self, name: str, n_cells: int) -> None:
        lo, hi = self.field_partitions[name][self.rank]
        steps = [StepStatistics(hi - lo, self.config) for _ in range(self.nb_time_steps)]
        self.slices[name] = LocalField(name, self.fields.index(name), lo, hi, steps)
        log.info("field %r: %d cells, this rank holds [%d, %d)", name, n_cells, lo, hi)
        self._choose_threads()

    def _choose_threads(self) -> None:
        """Numba threads for this rank, once its cells are known (see stats.set_threads).

        Several ranks share the machine's cores: ``main`` gives each one thread.
        A single rank uses every core on a large slice and one on a small one.
        """
        if self.comm_size == 1:
            set_threads(n_cells=sum(f.hi - f.lo for f in self.slices.values()))

    # -- data path ----------------------------------------------------------------
    def process_simulation_data(self, data: SimulationData) -> None:
        """Fold or buffer one validated message (drops duplicates)."""
        h = data.header
        if self.progress.is_folded(h.sim_id, h.field_id, h.time_step):
            self._duplicate(h, "already folded")
            return
        if self.progress.is_abandoned(data.group_id):
            self.bad_messages["abandoned_group"] += 1
            return
        lf = self.slices[self.fields[h.field_id]]
        if self.group_size == 1 and h.count == lf.n_cells:
            # the whole slice in one message: fold the frame itself, no copy
            lf.steps[h.time_step].fold_sample(data.values)
            self._mark_folded([h.sim_id], h.field_id, h.time_step)
            return
        key = (data.group_id, h.field_id, h.time_step)
        try:
            rows = self._assembler.add(key, h.member, h.offset - lf.lo, data.values, lf.n_cells)
        except Overlap as exc:
            self._duplicate(h, str(exc))
            return
        if rows is None and self._assembler.member_complete(key, h.member):
            self._report(self.progress.step_buffered(h.sim_id, h.field_id, h.time_step))
        if rows is not None:
            # rows the statistics are done with (these, or a Sobol' batch's)
            for done in lf.steps[h.time_step].fold_group(rows, data.group_id):
                self._assembler.release(done)
            group_sims = [self.layout.sim_id(data.group_id, m) for m in range(self.group_size)]
            self._mark_folded(group_sims, h.field_id, h.time_step)

    def _duplicate(self, h, why: str) -> None:
        self.duplicates += 1
        self.bad_messages["duplicate"] += 1
        log.debug("duplicate from simulation %d, field %d, step %d: %s",
                  h.sim_id, h.field_id, h.time_step, why)

    def _mark_folded(self, sim_ids, field_id: int, step: int) -> None:
        self._report(self.progress.steps_folded(sim_ids, field_id, step))

    def _report(self, completed) -> None:
        if completed.received:
            self.ranks.report(ranks.RunsReceived(self.rank, completed.received))
        if completed.folded:
            self.ranks.report(ranks.RunsFolded(self.rank, completed.folded))

    def on_group_abandoned(self, group_id: int) -> None:
        self.progress.abandon(group_id)
        self._assembler.drop_group(group_id)

    # -- rank 0 bookkeeping ---------------------------------------------------------
    def on_runs_folded(self, msg: ranks.RunsFolded) -> None:
        now = time.monotonic()
        for sim_id in msg.sim_ids:
            self.feed(RunFolded(sim_id, now, msg.rank))

    def on_runs_received(self, msg: ranks.RunsReceived) -> None:
        now = time.monotonic()
        for sim_id in msg.sim_ids:
            self.feed(RunReceived(sim_id, now, msg.rank))

    # -- main loop -------------------------------------------------------------------
    def _on_sigterm(self, signum, frame) -> None:
        self._sigterm = True

    def _check_sigterm(self) -> None:
        """SIGTERM (from mpiexec, a scheduler, the launcher) stops the study
        with a checkpoint; a rank other than 0 asks rank 0 to start it."""
        if not self._sigterm or self._sigterm_handled:
            return
        self._sigterm_handled = True
        if self.rank == 0:
            if not self._stop_requested:
                log.info("SIGTERM: stopping with a checkpoint")
                self.on_stop_request()
        else:
            self.ranks.report(ranks.RankStopRequest(self.rank))

    def start(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.configure_logger()
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self._take_study_lock()
        self.setup_environment()
        self.open_study()
        restored = self.restore() if self._restart else False
        # load the compiled kernels before listening, not on the first message;
        # the launcher compiles them first when Numba's cache is stale, and a
        # server started alone compiles here while ZeroMQ queues the hellos
        warm_up(self.nb_parameters)
        self.initialize_connections()
        self._last_checkpoint = time.monotonic()
        if restored:
            self._report_restored()
        if self.rank == 0:
            if restored:
                self.ranks.drain()
            if not self._launcher_address:
                log.info("no launcher: accepting simulations 0..%d", self.nb_clients - 1)
            self.feed(Begin(time.monotonic(), resume=restored))
        self._is_receiving = True
        status = self._loop()
        self._is_receiving = False
        self._finalize(status)
        return status

    def _take_study_lock(self) -> None:
        """Rank 0 holds an exclusive lock on OUT/server.lock: never two servers."""
        ok = True
        if self.rank == 0:
            import fcntl
            path = self.output_dir / "server.lock"
            self._lock_file = open(path, "a+")  # noqa: SIM115 - held for the run
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_file.seek(0)
                self._lock_file.truncate()
                self._lock_file.write(f"{os.getpid()}\n")
                self._lock_file.flush()
            except OSError:
                self._lock_file.seek(0)
                holder = self._lock_file.read().strip() or "?"
                log.error("another server (pid %s) holds %s: refusing to run a second "
                          "server on this study", holder, path)
                ok = False
        ok = bcast_json(self.comm, ok, "rank 0's study lock")  # once, at start-up
        if not ok:
            raise SystemExit(exit_codes.SERVER_LOCKED)

    def _loop(self) -> int:
        while True:
            self._check_sigterm()
            item = self.poll_sockets(timeout=0.05)
            if isinstance(item, SimulationData):
                with self.consistency_lock:
                    self.process_simulation_data(item)
                if self.rank == 0:
                    self.feed(DataSeen(item.header.sim_id, time.monotonic()))
                    self._maybe_checkpoint()
                continue
            if item is ServerStatus.STOP:
                if self._finishing:
                    return exit_codes.OK
                return self._exit_status or exit_codes.INTERRUPTED
            if self.rank == 0:
                self.feed(Tick(time.monotonic()))
                self.check_launcher()
                self._maybe_checkpoint()

    def _finalize(self, status: int) -> None:
        """Write the results (on success) or a checkpoint, and close everything."""
        if status == exit_codes.OK:
            self.write_results()
        else:
            self.checkpoint()
        try:
            self.ranks.flush()
        except TimeoutError as exc:
            log.error("%s", exc)
        if self._writer is not None:
            self._writer.close()
        if self.rank == 0:
            log.info("received %.3f GB on rank 0; dropped messages: %s; mean run %.1f s",
                     self._total_bytes_recv / 1e9, dict(self.bad_messages) or "none",
                     self.mtt_simulation_completion)
        self.close_connection(status, self._exit_message)

    # -- results ------------------------------------------------------------------------
    def collect_results(self, name: str) -> dict:
        """This rank's slice of every statistic of field ``name`` (see
        :func:`~melissa_sa.server.field_stats.collect_results`)."""
        return collect_results(self.slices[name], self.config)

    def write_results(self) -> None:
        """Write ``OUT/results.h5``; each rank writes only its own slices.

        A field no client ever declared (an offline study) is written with one
        cell per rank and no samples, so the file still has its layout.
        """
        for name in self.fields:
            if name not in self.field_sizes:
                self._declare_field(name, self.comm_size)
        from melissa_sa.server.results_io import write_study_results
        write_study_results(self)
