"""One server rank's worker: its data messages, group assembly, statistics, checkpoints.

Every rank (rank 0 too) has a :class:`RankWorker`. It owns this rank's slice
of every field (:class:`~melissa_sa.server.field_stats.LocalField`: cells
``[lo, hi)``, one :class:`~melissa_sa.server.field_stats.StepStatistics` per
time step), the group assembler, the rank's
:class:`~melissa_sa.server.rank_progress.RankProgress` and its message
counters. Data arrive as (simulation, field, time step, cell range)
messages, straight from the client ranks that hold those cells; they are
validated (:class:`~melissa_sa.server.data_messages.DataIntake`), then
folded or buffered (:meth:`RankWorker.fold`).

Group assembly: with Sobol' indices on, a group's time step is folded only
when all its members have sent it over this rank's slice
(:mod:`~melissa_sa.server.assembly`); then the independent rows feed the
moments, extrema, thresholds and quantiles and the whole group feeds the
Martinez accumulators. Without Sobol', a message that covers the rank's
whole slice is folded straight from the received frame, without a copy.

Every (simulation, field, time step, slice) is folded at most once: a
restarted client may resend from the start, and what was already folded or
buffered is dropped and counted as a duplicate. The restarted client's hello
gave it a new attempt token (:class:`~melissa_sa.server.ranks.AttemptStarted`):
the messages of the attempt it replaces are dropped (``old_attempt``,
:class:`~melissa_sa.server.data_messages.DataIntake`), and the steps that
attempt left incomplete on this rank are forgotten, for the rerun to fill.
A run completely received or folded on this rank is reported to rank 0's coordinator
(:class:`~melissa_sa.server.ranks.RunsReport`).

The worker does what the coordinator's messages say (a field declared, a
group abandoned, a checkpoint now, stop, the convergence check's two rounds)
and takes part in the checkpoints (:mod:`~melissa_sa.server.rank_checkpoints`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from melissa_sa.exit_codes import StopReason
from melissa_sa.server import ranks
from melissa_sa.server.assembly import SPARE_BUFFERS, GroupAssembler, Overlap
from melissa_sa.server.attempts import AttemptBook
from melissa_sa.server.convergence_check import summary_report, variance_report
from melissa_sa.server.data_messages import DataIntake, RankCounters, SimulationData
from melissa_sa.server.field_stats import LocalField, StepStatistics
from melissa_sa.server.intake import FieldCatalog
from melissa_sa.server.rank_checkpoints import RankCheckpoints, Restored
from melissa_sa.server.rank_progress import Completed, RankProgress
from melissa_sa.server.snapshot import RankSnapshot
from melissa_sa.stats import set_threads
from melissa_sa.stats.row_pool import RowPool

__all__ = ["RankWorker"]

log = logging.getLogger("melissa_sa.server")


class RankWorker:
    """Every rank's part of the server (see the module docstring).

    ``comm``: the server's communicator (for the collective checkpoint);
    ``link``: the typed messages to and from rank 0; ``completion()`` and
    ``checkpoint_meta()``: what rank 0's coordinator adds to a checkpoint
    (None on the other ranks).
    """

    def __init__(self, config, *, comm, link: ranks.RankLink,
                 completion: Callable[[], dict | None],
                 checkpoint_meta: Callable[[], dict | None]):
        so = config.study_options
        self.config = config
        self.layout = config.layout
        self.group_size = config.group_size
        self.n_time_steps = so.nb_time_steps
        self.rank, self.n_ranks = link.rank, link.size
        self.ranks = link
        self.fields = FieldCatalog(so.field_names, self.n_ranks)
        self.counters = RankCounters()
        self.progress = RankProgress(self.layout, config.n_groups, len(self.fields.names),
                                     self.n_time_steps)
        self.intake = DataIntake(fields=self.fields, layout=self.layout,
                                 n_time_steps=self.n_time_steps, rank=self.rank,
                                 progress=self.progress, ranks=link, counters=self.counters,
                                 attempts=AttemptBook())
        self.slices: dict[str, LocalField] = {}
        self._open_assembler(config)
        self.checkpoints = RankCheckpoints(config, comm=comm if self.n_ranks > 1 else None,
                                           rank=self.rank, n_ranks=self.n_ranks)
        self._completion = completion
        self._checkpoint_meta = checkpoint_meta
        #: set by rank 0's StopRanks: leave the loop, why (FINISHED: write the results)
        self.stop_reason: StopReason | None = None
        self._sigterm = self._sigterm_handled = False
        link.add_handlers({ranks.FieldDeclared: self._on_field_declared,
                           ranks.AttemptsBegin: lambda msg: self.intake.attempts.begin(msg.first),
                           ranks.AttemptStarted: self._on_attempt_started,
                           ranks.Redraw: self._on_redraw,
                           ranks.CheckpointNow: lambda msg: self.checkpoint(),
                           ranks.StopRanks: self._on_stop,
                           ranks.VarianceRequest: self._on_variance_request,
                           ranks.SummaryRequest: self._on_summary_request})

    def _open_assembler(self, config) -> None:
        """The group buffers; the spares for the rows the Sobol' fold keeps come
        with each field (:meth:`_fit_spares`), once its slice is known."""
        self._assembler = GroupAssembler(self.group_size, RowPool(SPARE_BUFFERS))
        self._spares_released = False

    def _fit_spares(self, steps: list[StepStatistics]) -> None:
        """The Sobol' fold gives a step's rows back ``fold_batch`` groups at once
        (stats/sobol_fold.py), and its ``fold_batch`` depends on a group's bytes
        over this slice (1 above ``BATCH_GROUP_BYTES``): keep that many spares
        more than :data:`SPARE_BUFFERS`, for the field with the largest batch."""
        sobol = steps[0].sobol if steps else None
        if sobol is None or self._spares_released:
            return
        pool = self._assembler.pool
        pool.spares = max(pool.spares, SPARE_BUFFERS + sobol.fold_batch)

    # -- data path ------------------------------------------------------------------------
    def receive(self, frames):
        """One data message: a :class:`SimulationData`, or ``ServerStatus.BAD_MESSAGE``."""
        return self.intake.receive(frames)

    def fold(self, data: SimulationData) -> None:
        """Fold or buffer one validated message (drops duplicates)."""
        h = data.header
        if self.progress.is_folded(h.sim_id, h.field_id, h.time_step):
            self._duplicate(h, "already folded")
            return
        if self.progress.is_abandoned(data.group_id):
            self.counters.bad_messages["abandoned_group"] += 1
            return
        lf = self.slices[self.fields.names[h.field_id]]
        if self.group_size == 1 and h.count == lf.n_cells:
            # the whole slice in one message: fold the frame itself, no copy
            lf.steps[h.time_step].fold_sample(data.values)
            self._report(self.progress.steps_folded([h.sim_id], h.field_id, h.time_step))
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
            self._fold_group(lf, h, data, rows)
            group_sims = [self.layout.sim_id(data.group_id, m) for m in range(self.group_size)]
            self._report(self.progress.steps_folded(group_sims, h.field_id, h.time_step))

    def _fold_group(self, lf: LocalField, h, data: SimulationData, rows) -> None:
        """A complete group's rows into the step's statistics; the rows are
        leased from the assembler's pool and go back to it once folded."""
        lf.steps[h.time_step].fold_group(rows, data.group_id, self._assembler.pool)

    def _duplicate(self, h, why: str) -> None:
        self.counters.duplicates += 1
        self.counters.bad_messages["duplicate"] += 1
        log.debug("duplicate from simulation %d, field %d, step %d: %s",
                  h.sim_id, h.field_id, h.time_step, why)

    def _report(self, completed: Completed) -> None:
        if completed.received or completed.folded:
            self.ranks.report(ranks.RunsReport(self.rank, completed.received, completed.folded))

    # -- rank 0's messages ----------------------------------------------------------------
    def _on_field_declared(self, msg: ranks.FieldDeclared) -> None:
        name = msg.name
        self.fields.declare(name, msg.n_cells)
        lo, hi = self.fields.partitions[name][self.rank]
        steps = [StepStatistics(hi - lo, self.config) for _ in range(self.n_time_steps)]
        self.slices[name] = LocalField(name, self.fields.index(name), lo, hi, steps)
        self._fit_spares(steps)
        log.info("field %r: %d cells, this rank holds [%d, %d)", name, msg.n_cells, lo, hi)
        self._choose_threads()

    def declare_missing_fields(self) -> None:
        """Give a field no client ever declared (an offline study) one cell per
        rank, so that the results file still has its layout."""
        for name in self.fields.names:
            if not self.fields.is_declared(name):
                self._on_field_declared(ranks.FieldDeclared(name, self.n_ranks))

    def _choose_threads(self) -> None:
        """Numba threads for this rank, once its cells are known (see stats.set_threads).

        Several ranks share the machine's cores: ``main`` gives each one thread.
        A single rank uses every core on a large slice and one on a small one.
        """
        if self.n_ranks == 1:
            set_threads(n_cells=sum(f.hi - f.lo for f in self.slices.values()))

    def _on_attempt_started(self, msg: ranks.AttemptStarted) -> None:
        """A run (re)starts a field: only its new token is accepted from now on,
        and what an earlier attempt left incomplete here is forgotten (the
        rerun sends it again, maybe cut otherwise); complete steps stay."""
        self.intake.attempts.start(msg.sim_id, msg.field_id, msg.attempt)
        forgotten = self._assembler.drop_partial_rows(
            self.layout.group_of(msg.sim_id), msg.field_id, self.layout.member_of(msg.sim_id))
        if forgotten:
            log.debug("simulation %d restarted field %d: %d incomplete steps forgotten",
                      msg.sim_id, msg.field_id, forgotten)

    def _on_redraw(self, msg: ranks.Redraw) -> None:
        self.progress.abandon(msg.group_id)
        self._assembler.drop_group(msg.group_id)

    def _on_stop(self, msg: ranks.StopRanks) -> None:
        if self.stop_reason is None:  # the first reason stands (Coordinator.request_stop)
            self.stop_reason = msg.reason

    def _on_variance_request(self, msg: ranks.VarianceRequest) -> None:
        self.ranks.report(variance_report(msg, self.slices, self.rank))

    def _on_summary_request(self, msg: ranks.SummaryRequest) -> None:
        self.ranks.report(summary_report(msg, self.slices, self.rank, self.config.sa_config))

    # -- SIGTERM -----------------------------------------------------------------------------
    def on_sigterm(self, signum, frame) -> None:
        self._sigterm = True

    def check_sigterm(self) -> None:
        """SIGTERM (from mpiexec, a scheduler, the launcher) stops the study with a
        checkpoint: the rank asks rank 0's coordinator to start it."""
        if self._sigterm and not self._sigterm_handled:
            self._sigterm_handled = True
            self.ranks.report(ranks.SignalReceived(self.rank))

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self) -> int | None:
        """Snapshot this rank into a new checkpoint set (collective); its id or None."""
        return self.checkpoints.write(self._snapshot, self._checkpoint_meta())

    def _snapshot(self) -> RankSnapshot:
        c = self.counters
        return RankSnapshot(self.slices, self.fields.sizes, self.progress.folded,
                            self.progress.abandoned_groups, c.duplicates, c.bad_messages,
                            c.bytes_received, self._completion())

    def restore(self) -> Restored | None:
        """Load this rank's part of the newest checkpoint set (collective); None if none."""
        restored = self.checkpoints.restore()
        if restored is None:
            return None
        snap = restored.snapshot
        for name, n_cells in snap.field_sizes.items():
            self.fields.declare(name, n_cells)
        self.slices.update(snap.fields)
        self.progress.restore(snap.folded, snap.abandoned_groups)
        self.counters.duplicates = snap.duplicates
        self.counters.bad_messages = snap.bad_messages
        self.counters.bytes_received = snap.bytes_received
        self._choose_threads()
        return restored

    def report_restored(self) -> None:
        """After a restart: re-announce what this rank holds completely folded."""
        complete = self.progress.completely_folded()
        if complete:
            self.ranks.report(ranks.RunsReport(self.rank, folded=complete))

    def release_spare_buffers(self) -> None:
        """Free the group buffers kept for reuse, and those the Sobol' folds
        give back from now on: after the study no group comes to reuse them
        (up to ``2 + fold_batch`` of ``group_size x slice`` floats)."""
        self._assembler.pool.close()
        self._spares_released = True

    def close(self) -> None:
        try:
            self.ranks.flush()
        except TimeoutError as exc:
            log.error("%s", exc)
        self.checkpoints.close()
