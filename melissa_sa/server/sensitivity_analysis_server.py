"""The sensitivity-analysis server: folds every field slice into statistics.

Each rank owns a contiguous slice of every field (see
:func:`~melissa_sa.server.base_server.partition`) and keeps, per time step,
the statistics the config asks for over that slice. Data arrive as
(simulation, field, time step, cell range) messages, straight from the
client ranks that hold those cells.

Group assembly: with Sobol' indices on, a group's time step is folded only
when all ``p + 2`` members have sent it (over this rank's slice); then rows
A and B feed the moments, extrema, thresholds and quantiles (independent
runs only) and the whole group feeds the Martinez accumulators. Without
Sobol', a message that covers the rank's whole slice is folded straight from
the received frame, without a copy.

Every (simulation, field, time step, slice) is folded at most once: a
restarted client may resend from the start, and what was already folded or
buffered is dropped and counted as a duplicate.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from melissa_sa.server.base_server import BaseServer, ServerStatus, SimulationData
from melissa_sa.server.protocol import ProtocolError
from melissa_sa.stats import (Extrema, Moments, Quantiles, SobolMartinez,
                              ThresholdExceedance)

log = logging.getLogger("melissa_sa.server")

# A job that exited 0 but whose data is incomplete after this long is failed.
COMPLETION_GRACE_S = 10.0


class StepStatistics:
    """The statistics of one field slice at one time step."""

    def __init__(self, n_cells: int, config):
        sa = config.sa_config
        self.moments = None
        order = 4 if (sa.skewness or sa.kurtosis) else 2
        if sa.mean or sa.variance or sa.skewness or sa.kurtosis:
            self.moments = Moments(n_cells, order=order)
        self.extrema = Extrema(n_cells) if (sa.min or sa.max) else None
        self.threshold = (ThresholdExceedance(n_cells, sa.threshold_exceedance)
                          if sa.threshold_exceedance else None)
        self.quantiles = Quantiles(n_cells, sa.quantiles) if sa.quantiles else None
        self.sobol = (SobolMartinez(n_cells, config.study_options.nb_parameters,
                                    ci=sa.confidence_method)
                      if sa.sobol_indices else None)
        self.n_samples = 0

    def fold_sample(self, x: np.ndarray) -> None:
        """One independent run's values over the slice."""
        for stat in (self.moments, self.extrema, self.threshold, self.quantiles):
            if stat is not None:
                stat.update(x)
        self.n_samples += 1

    def fold_group(self, rows: np.ndarray) -> None:
        """A complete pick-freeze group: rows A, B, C_1..C_p."""
        self.fold_sample(rows[0])
        self.fold_sample(rows[1])
        self.sobol.update(rows)


@dataclass
class FieldSlice:
    """This rank's part of one field: cells ``[lo, hi)`` and their statistics."""

    name: str
    field_id: int
    lo: int
    hi: int
    steps: list[StepStatistics]

    @property
    def n_cells(self) -> int:
        return self.hi - self.lo


@dataclass
class Assembly:
    """Buffers of one (group, field, time step) until every member is there."""

    rows: np.ndarray                        # (group_size, n_cells)
    filled: np.ndarray                      # cells received per member
    pieces: list[list[tuple[int, int]]] = field(default_factory=list)  # per member


class SensitivityAnalysisServer(BaseServer):
    """The melissa-sa server flavour for sensitivity analysis.

    Run it with ``mpiexec -n P python -m melissa_sa.server.main study.json``
    (the launcher does). A user may subclass it in their own file and name it
    in the config (``server_filename``, ``server_class``) to override hooks
    such as :meth:`setup_environment` or :meth:`on_group_finished`.
    """

    def __init__(self, config, comm=None, checkpoint_file: str = "checkpoint"):
        super().__init__(config, comm, checkpoint_file)
        self.slices: dict[str, FieldSlice] = {}
        self._folded: dict[int, np.ndarray] = {}       # sim -> (fields, steps) bool
        self._assemblies: dict[tuple[int, int, int], Assembly] = {}
        self.duplicates = 0
        self.ci_method = config.sa_config.confidence_method
        self._ranks_done: Counter = Counter()          # rank 0: sim -> ranks reporting
        self._job_finished_at: dict[int, float] = {}   # rank 0: sim -> exit time
        self._sims_done: set[int] = set()              # rank 0: complete on every rank
        self._exit_status = 0
        self._exit_message = ""

    # -- fields -----------------------------------------------------------------
    def on_field_declared(self, name: str, n_cells: int) -> None:
        lo, hi = self.field_partitions[name][self.rank]
        steps = [StepStatistics(hi - lo, self.config) for _ in range(self.nb_time_steps)]
        self.slices[name] = FieldSlice(name, self.fields.index(name), lo, hi, steps)
        log.info("field %r: %d cells, this rank holds [%d, %d)", name, n_cells, lo, hi)

    # -- data path ----------------------------------------------------------------
    def process_simulation_data(self, data: SimulationData) -> None:
        """Fold or buffer one validated message (drops duplicates)."""
        h = data.header
        folded = self._folded.get(h.sim_id)
        if folded is None:
            folded = self._folded[h.sim_id] = np.zeros(
                (len(self.fields), self.nb_time_steps), dtype=bool)
        if folded[h.field_id, h.time_step]:
            self._duplicate(h, "already folded")
            return
        fs = self.slices[self.fields[h.field_id]]
        member = h.member
        if self.group_size == 1 and h.count == fs.n_cells:
            # the whole slice in one message: fold the frame itself, no copy
            fs.steps[h.time_step].fold_sample(data.values)
            self._mark_folded([h.sim_id], h.field_id, h.time_step)
            return
        key = (data.group_id, h.field_id, h.time_step)
        asm = self._assemblies.get(key)
        if asm is None:
            asm = Assembly(np.empty((self.group_size, fs.n_cells)),
                           np.zeros(self.group_size, dtype=np.int64),
                           [[] for _ in range(self.group_size)])
            self._assemblies[key] = asm
        start, stop = h.offset - fs.lo, h.offset - fs.lo + h.count
        for a, b in asm.pieces[member]:
            if start < b and a < stop:
                self._duplicate(h, "overlaps cells already received")
                return
        asm.rows[member, start:stop] = data.values
        asm.pieces[member].append((start, stop))
        asm.filled[member] += h.count
        if np.all(asm.filled == fs.n_cells):
            del self._assemblies[key]
            step = fs.steps[h.time_step]
            if self._sobol_op:
                step.fold_group(asm.rows)
            else:
                step.fold_sample(asm.rows[0])
            group_sims = self._sim_ids_of(data.group_id)
            self._mark_folded(group_sims, h.field_id, h.time_step)

    def _duplicate(self, h, why: str) -> None:
        self.duplicates += 1
        self.bad_messages["duplicate"] += 1
        log.debug("duplicate from simulation %d, field %d, step %d: %s",
                  h.sim_id, h.field_id, h.time_step, why)

    def _mark_folded(self, sim_ids, field_id: int, step: int) -> None:
        complete = []
        for sim_id in sim_ids:
            folded = self._folded.get(sim_id)
            if folded is None:
                folded = self._folded[sim_id] = np.zeros(
                    (len(self.fields), self.nb_time_steps), dtype=bool)
            folded[field_id, step] = True
            if folded.all():
                complete.append(sim_id)
        if complete:
            self._report_to_root(("done", self.rank, complete))

    # -- rank 0 bookkeeping ---------------------------------------------------------
    def _on_report(self, message) -> None:
        if message[0] != "done":
            return
        for sim_id in message[2]:
            self._ranks_done[sim_id] += 1
            if self._ranks_done[sim_id] == self.comm_size:
                self._on_simulation_complete(sim_id)

    def _on_simulation_complete(self, sim_id: int) -> None:
        self._sims_done.add(sim_id)
        self._active_sim_ids.discard(sim_id)
        self._n_sims_completed += 1
        group_id = sim_id // self.group_size
        group = self._groups.get(group_id)
        if group is None:  # standalone mode (no launcher): groups are implicit
            return self._standalone_progress()
        elapsed = time.monotonic() - group.submitted_at
        n = self._n_sims_completed
        self.mtt_simulation_completion += (elapsed - self.mtt_simulation_completion) / n
        group.members_done.add(sim_id % self.group_size)
        if group.finished and group_id not in self.finished_groups:
            self.finished_groups.add(group_id)
            self.on_group_finished(group_id)
            self._send_to_launcher({"type": "progress",
                                    "groups_done": len(self.finished_groups),
                                    "groups_total": self.nb_groups,
                                    "group_id": group_id})
            self._submit_groups()

    def _standalone_progress(self) -> None:
        groups = {s // self.group_size for s in self._sims_done}
        for g in groups:
            if g not in self.finished_groups and all(
                    s in self._sims_done for s in self._sim_ids_of(g)):
                self.finished_groups.add(g)
                self.on_group_finished(g)

    def on_group_finished(self, group_id: int) -> None:
        """Hook: every member of ``group_id`` is folded in on every rank."""
        log.info("group %d done (%d/%d)", group_id, len(self.finished_groups),
                 self.nb_groups)

    def on_job_state(self, sim_id: int, state: str, returncode) -> None:
        if state == "running":
            return
        if state == "finished" and returncode in (0, None):
            self._job_finished_at[sim_id] = time.monotonic()
            return
        self._on_client_failure(sim_id, f"exited with code {returncode}")

    def _on_client_failure(self, sim_id: int, why: str) -> None:
        group = self._groups.get(sim_id // self.group_size)
        if group is None or sim_id in self._sims_done:
            return
        self._job_finished_at.pop(sim_id, None)
        member = sim_id % self.group_size
        group.crashes[member] += 1
        if self.no_fault_tolerance:
            self._fail(f"simulation {sim_id} {why} and fault tolerance is off")
            return
        if group.crashes[member] >= self.crashes_before_redraw:
            self._fail(f"simulation {sim_id} failed {group.crashes[member]} times "
                       f"(crashes_before_redraw); last: {why}")
            return
        log.warning("simulation %d %s; restarting it (%d/%d)", sim_id, why,
                    group.crashes[member], self.crashes_before_redraw)
        self._submit(group, [sim_id])

    def _check_finished_jobs(self) -> None:
        now = time.monotonic()
        for sim_id, at in list(self._job_finished_at.items()):
            if sim_id in self._sims_done:
                del self._job_finished_at[sim_id]
            elif now - at > COMPLETION_GRACE_S:
                self._on_client_failure(
                    sim_id, "exited before sending all its time steps")

    def _fail(self, message: str) -> None:
        log.error("%s", message)
        self._exit_status = 1
        self._exit_message = message
        self.on_stop_request()

    # -- main loop -------------------------------------------------------------------
    def start(self) -> int:
        self.configure_logger()
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.setup_environment()
        self.initialize_connections()
        if self.rank == 0:
            if self._launcher_address:
                self._submit_groups()
            else:
                log.info("no launcher: accepting simulations 0..%d", self.nb_clients - 1)
        status = self._loop()
        self._finalize(status)
        return status

    def _all_done(self) -> bool:
        return len(self.finished_groups) >= self.nb_groups

    def _loop(self) -> int:
        while True:
            item = self.poll_sockets(timeout=0.05)
            if isinstance(item, SimulationData):
                self.process_simulation_data(item)
                continue
            if item is ServerStatus.STOP:
                if self._finishing:
                    return 0
                return self._exit_status or 130
            if self.rank == 0:
                self._check_finished_jobs()
                if self._all_done():
                    self._finishing = True
                    self._broadcast_control(("finish",))
                    self._stop_requested = True

    def _finalize(self, status: int) -> None:
        """Write the results (on success) and close everything."""
        if status == 0:
            self.write_results()
        self._wait_isends()
        if self.rank == 0:
            bad = dict(self.bad_messages)
            log.info("received %.3f GB; dropped messages: %s", self._total_bytes_recv / 1e9,
                     bad or "none")
        self.close_connection(status, self._exit_message)

    def _wait_isends(self) -> None:
        deadline = time.monotonic() + 10
        while self._pending_isends and time.monotonic() < deadline:
            self._pending_isends = [r for r in self._pending_isends if not r.Test()]
            time.sleep(0.001)

    # -- results ------------------------------------------------------------------------
    def collect_results(self, name: str) -> dict[str, np.ndarray]:
        """This rank's slice of every statistic of field ``name``.

        Arrays are shaped (time step, cell) or (k, time step, cell) with k
        thresholds, quantile levels or parameters, plus ``n_samples`` per step.
        """
        fs = self.slices[name]
        sa = self.config.sa_config
        steps = fs.steps
        out: dict[str, np.ndarray] = {
            "n_samples": np.array([s.n_samples for s in steps], dtype=np.int64)}

        def stack(get):
            return np.stack([get(s) for s in steps], axis=-2)

        if steps[0].moments is not None:
            if sa.mean:
                out["mean"] = stack(lambda s: s.moments.mean)
            if sa.variance:
                out["variance"] = stack(lambda s: s.moments.variance)
            if sa.skewness:
                out["skewness"] = stack(lambda s: s.moments.skewness)
            if sa.kurtosis:
                out["kurtosis"] = stack(lambda s: s.moments.kurtosis)
        if sa.min:
            out["min"] = stack(lambda s: s.extrema.min)
        if sa.max:
            out["max"] = stack(lambda s: s.extrema.max)
        if steps[0].threshold is not None:
            out["threshold_exceedance"] = stack(lambda s: s.threshold.probability)
        if steps[0].quantiles is not None:
            out["quantiles"] = stack(lambda s: s.quantiles.values)
        if steps[0].sobol is not None:
            out["n_groups"] = np.array([s.sobol.count for s in steps], dtype=np.int64)
            out["sobol_first"] = stack(lambda s: s.sobol.first_order)
            out["sobol_total"] = stack(lambda s: s.sobol.total_order)
            cis = [s.sobol.confidence_interval(sa.confidence_level) for s in steps]
            out["sobol_first_low"] = np.stack([c[0][0] for c in cis], axis=-2)
            out["sobol_first_high"] = np.stack([c[0][1] for c in cis], axis=-2)
            out["sobol_total_low"] = np.stack([c[1][0] for c in cis], axis=-2)
            out["sobol_total_high"] = np.stack([c[1][1] for c in cis], axis=-2)
        return out

    def write_results(self) -> None:
        """Write ``OUT/results.h5``; each rank writes only its own slices."""
        from melissa_sa.server.results_io import write_study_results
        write_study_results(self)
